"""The command-line leaf: parses arguments, calls library objects, prints results.

Each subcommand lives in its own module here with two functions,
``configure(parser)`` and ``run(args) -> int``; :mod:`kmodkit.cli.main` imports
only the one that was asked for, so start-up stays fast.
"""
