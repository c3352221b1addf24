"""Entry point of the ``kmodkit`` command: global flags, dispatch, the error boundary.

Exit statuses: :data:`EXIT_STATUSES` (the README's table and the man page say the same).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

#: command name -> (module that implements it, one-line help); only the chosen module is imported
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("kmodkit.cli.info", "show what a module file holds, as modinfo does (and more with --json)"),
    "abi": ("kmodkit.cli.abi", "compare two kernels' module ABI; say which imports of a module break"),
    "check": ("kmodkit.cli.check", "predict whether modules load on given kernels, and why not (from files)"),
    "keys": ("kmodkit.cli.keys", "make signing keys; extract the certificates a kernel trusts"),
    "sign": ("kmodkit.cli.sign", "sign modules, byte-identical to the kernel's sign-file"),
    "verify": ("kmodkit.cli.verify", "verify module signatures against certificates or a kernel"),
    "index": ("kmodkit.cli.index", "write a kernel tree's module index, as depmod does"),
    "deps": ("kmodkit.cli.deps", "resolve what a module needs, as modprobe does, without loading"),
    "doctor": ("kmodkit.cli.doctor", "check that this machine can build modules for its kernels"),
    "new": ("kmodkit.cli.new", "create a module project that builds as it is"),
    "init": ("kmodkit.cli.init", "write a kmodkit.toml for an existing Kbuild tree"),
    "install": ("kmodkit.cli.install", "install a project's built modules into kernels' trees and re-index"),
    "uninstall": ("kmodkit.cli.uninstall", "remove exactly what kmodkit install installed"),
    "package": ("kmodkit.cli.package", "package a project's built modules for a distro (package deb: .deb files)"),
    "hook": ("kmodkit.cli.hook", "rebuild and install registered projects when a kernel is installed"),
    "build": ("kmodkit.cli.build", "build a module project for one or many kernels in parallel"),
    "lint": ("kmodkit.cli.lint", "check module source for outdated or unsafe conventions"),
    "vm": ("kmodkit.cli.vm", "boot an installed kernel under QEMU and run a command inside"),
    "test": ("kmodkit.cli.test", "run a project's test script in a booted VM per kernel, with its built modules"),
    "load": ("kmodkit.cli.load", "load a module and its dependencies, rolling back on failure"),
    "unload": ("kmodkit.cli.unload", "unload a module (and, with --with-deps, what only it needed)"),
    "status": ("kmodkit.cli.status", "show loaded modules, their state, parameters and taint"),
    "health": ("kmodkit.cli.health", "check that a manifest's modules are loaded and healthy"),
    "exporter": ("kmodkit.cli.exporter", "serve module metrics for Prometheus"),
    "oops": ("kmodkit.cli.oops", "find kernel crash reports in logs and decode them to source lines"),
    "trace": ("kmodkit.cli.trace", "trace a loaded module's functions: calls, durations, call tree (ftrace)"),
    "profile": ("kmodkit.cli.profile", "sample where a loaded module spends CPU time; a flame graph (perf)"),
    "report": ("kmodkit.cli.report", "a project's fleet matrix: build, signature and load verdict per kernel"),
    "kmm": ("kmodkit.cli.kmm", "write a project's Kubernetes KMM Module, its kmod image Dockerfile and a preflight"),
    "dkms": ("kmodkit.cli.dkms", "export a project as a DKMS source tree (dkms.conf); build reads DKMS trees"),
    "completion": ("kmodkit.cli.completion", "print a bash or zsh completion script, generated from the options"),
    "man": ("kmodkit.cli.manpage", "print kmodkit's man page (roff), generated from the options"),
    "kernels": ("kmodkit.cli.kernels", "list, fetch and prune kernels from the distro's archive (not installed)"),
}

#: exit status -> meaning, as the README's table and the man page (kmodkit man) say them
EXIT_STATUSES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (1, "the command ran, but something it checked failed (an invalid signature, an unhealthy module)"),
    (2, "you asked for something wrong: a bad argument, a missing or corrupt input file"),
    (3, "the environment is not ready: a tool, kernel, headers or permission is missing"),
    (4, "internal error (a bug: rerun with --debug and report the traceback)"),
    (5, "vm run: the guest kernel panicked (its log and decoded reports are kept)"),
    (124, "vm run: the command did not finish before --timeout"),
    (130, "interrupted (Ctrl-C)"),
    (141, "the output pipe was closed"),
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141

#: the global options: accepted before the command and after it, at every level (``kmodkit info X --debug``)
GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("--debug",), "show debug logs and tracebacks"),
    (("-v", "--verbose"), "show progress logs"),
)


def add_global_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """Add the global options to ``parser``; below the top their default is SUPPRESS, so that a command's
    parser never resets what was given before the command."""
    import argparse

    for flags, help_text in GLOBAL_OPTIONS:
        if any(f in parser._option_string_actions for f in flags):
            continue  # a command that uses the flag itself keeps it
        parser.add_argument(*flags, action="store_true", help=help_text,
                            default=False if top else argparse.SUPPRESS)


def _parser_class() -> type[argparse.ArgumentParser]:
    import argparse
    from typing import NoReturn

    class Parser(argparse.ArgumentParser):
        """argparse's parser whose usage errors go through the one error boundary (text or --json)."""

        def error(self, message: str) -> NoReturn:
            from kmodkit.errors import UserError

            raise UserError(self.prog, message, f"see '{self.prog} --help'")

    return Parser


def sub_parser(prog: str) -> argparse.ArgumentParser:
    """A parser for options a command reads itself (trace's options after MODULE): the global options and the
    error boundary included."""
    parser = _parser_class()(prog=prog)
    add_global_options(parser)
    return parser


def _build_parser(command: str | None, full: bool = False) -> argparse.ArgumentParser:
    import importlib

    from kmodkit import __version__

    parser = _parser_class()(
        prog="kmodkit",
        description="The whole life of an out-of-tree Linux kernel module.",
        epilog="Run 'kmodkit COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"kmodkit {__version__}")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if command is not None and name != command:
            continue  # a known command needs only its own parser (all 16 cost ~5 ms)
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        if name == command or full:
            importlib.import_module(module).configure(p)
            _add_globals_below(p)
    return parser


def full_parser() -> argparse.ArgumentParser:
    """The parser of every command, configured (for completion scripts and the man page)."""
    return _build_parser(None, full=True)


def _add_globals_below(parser: argparse.ArgumentParser) -> None:
    import argparse

    add_global_options(parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_globals_below(child)


def _find_command(argv: list[str]) -> str | None:
    """The command word (the first word that is no option; the global options take no value), None when none.

    Raises UserError for a word that names no command, with the closest ones."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            if arg not in COMMANDS:
                import difflib

                from kmodkit.errors import UserError

                close = difflib.get_close_matches(arg, COMMANDS, n=3)
                hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
                raise UserError(arg, "is not a kmodkit command", f"{hint}see 'kmodkit --help'")
            return arg
    return None


def _before_separator(argv: list[str]) -> list[str]:
    return argv[:argv.index("--")] if "--" in argv else argv


def configure_logging(debug: bool, verbose: bool) -> None:
    """Set the root logger's level and format from the global options (again when a command reads them late)."""
    import logging

    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)
    for name, label in ((logging.CRITICAL, "error"), (logging.ERROR, "error"), (logging.WARNING, "warning"),
                        (logging.INFO, "info"), (logging.DEBUG, "debug")):
        logging.addLevelName(name, label)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:
        # fast path: no argparse, no library import
        from kmodkit import __version__

        sys.stdout.write(f"kmodkit {__version__}\n")
        return EXIT_OK
    # until the parser has read them: the words before a "--" (after it they belong to a guest or workload command)
    debug = "--debug" in _before_separator(argv)
    json_mode = "--json" in _before_separator(argv)
    args: argparse.Namespace | None = None
    try:
        if json_mode:
            from kmodkit.cli import output

            output.collect_errors()
        command = _find_command(argv)
        parser = _build_parser(command)
        args, extra = parser.parse_known_args(argv)
        if extra:  # named after the command they were given to, not after kmodkit
            from kmodkit.errors import UserError

            prog = f"kmodkit {args.command}" if args.command else "kmodkit"
            raise UserError(prog, f"unrecognized arguments: {' '.join(extra)}", f"see '{prog} --help'")
        if json_mode and not hasattr(args, "json"):  # a command without --json: argparse refused it already
            json_mode = False
            output.collect_errors(False)
        # (a "--json" that argparse left in a command's remainder, trace MODULE --json -- CMD, counts too)
        if args.command is None:
            parser.print_help()
            return EXIT_OK
        configure_logging(args.debug, args.verbose)
        import importlib

        module = importlib.import_module(COMMANDS[args.command][0])
        status: int = module.run(args)
        if json_mode:
            status = output.finish_errors(status)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        return _report_interrupt(json_mode)
    except BrokenPipeError:
        # the reader went away (`kmodkit info ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except Exception as exc:  # the single error boundary
        # the parsed flag when there is one: a command may read options late (trace MODULE --debug -- CMD)
        return _report(exc, bool(getattr(args, "debug", debug)), json_mode)
    finally:
        if json_mode:  # main() may run again in this process (tests, the hook): the next run starts plain
            output.collect_errors(False)


def _report_interrupt(json_mode: bool) -> int:
    if json_mode:
        from kmodkit.cli.output import print_error
        from kmodkit.errors import error_object

        print_error(error_object("kmodkit", "interrupted", None, EXIT_INTERRUPTED))
    else:
        sys.stderr.write("error: interrupted\n")
    return EXIT_INTERRUPTED


def _report(exc: Exception, debug: bool, json_mode: bool = False) -> int:
    """Say ``exc`` once: ``error: WHAT: WHY; FIX`` on stderr, or with --json ``{"error": {...}}`` on stdout."""
    from kmodkit.errors import KmodkitError, error_object, from_oserror

    if debug:
        import traceback

        traceback.print_exc()
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
        exc = from_oserror(exc)
    if isinstance(exc, KmodkitError):
        status, text, doc = exc.exit_status, str(exc), exc.to_json()
    else:
        status = EXIT_INTERNAL
        why = f"{type(exc).__name__}: {exc}"
        fix = "rerun with --debug and report the traceback"
        text, doc = f"internal error: {why}; {fix}", error_object("internal error", why, fix, status)
    if json_mode:
        from kmodkit.cli.output import print_error

        if print_error(doc):
            return status
    sys.stderr.write(f"error: {text}\n")
    return status
