"""Entry point of the ``kmodkit`` command: global flags, dispatch, the error boundary.

Exit status (documented in the README):

====  ==========================================================
0     success
1     the command ran but something it checked failed (a batch
      item, an invalid signature, an unhealthy module)
2     you asked for something wrong (bad argument or input file)
3     the environment is not ready (missing tool, kernel, headers,
      permission, refused syscall)
4     internal error (a bug: rerun with --debug and report it)
5     vm run: the guest's kernel panicked (result.json and
      kernel.log in the run directory hold the decoded report)
124   vm run: the command ran out of time
130   interrupted (Ctrl-C)
141   output pipe closed
====  ==========================================================
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
    "hook": ("kmodkit.cli.hook", "rebuild and install registered projects when a kernel is installed"),
    "build": ("kmodkit.cli.build", "build a module project for one or many kernels in parallel"),
    "lint": ("kmodkit.cli.lint", "check module source for outdated or unsafe conventions"),
    "vm": ("kmodkit.cli.vm", "boot an installed kernel under QEMU and run a command inside"),
    "load": ("kmodkit.cli.load", "load a module and its dependencies, rolling back on failure"),
    "unload": ("kmodkit.cli.unload", "unload a module (and, with --with-deps, what only it needed)"),
    "status": ("kmodkit.cli.status", "show loaded modules, their state, parameters and taint"),
    "health": ("kmodkit.cli.health", "check that a manifest's modules are loaded and healthy"),
    "exporter": ("kmodkit.cli.exporter", "serve module metrics for Prometheus"),
    "oops": ("kmodkit.cli.oops", "find kernel crash reports in logs and decode them to source lines"),
    "trace": ("kmodkit.cli.trace", "trace a loaded module's functions: calls, durations, call tree (ftrace)"),
    "profile": ("kmodkit.cli.profile", "sample where a loaded module spends CPU time; a flame graph (perf)"),
    "kernels": ("kmodkit.cli.kernels", "list, fetch and prune kernels from the distro's archive (not installed)"),
}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERNAL = 4
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141


def _build_parser(command: str | None) -> argparse.ArgumentParser:
    import argparse
    import importlib

    from kmodkit import __version__

    parser = argparse.ArgumentParser(
        prog="kmodkit",
        description="The whole life of an out-of-tree Linux kernel module.",
        epilog="Run 'kmodkit COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"kmodkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show debug logs and tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="show progress logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if command is not None and name != command:
            continue  # a known command needs only its own parser (all 16 cost ~5 ms)
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        if name == command:
            importlib.import_module(module).configure(p)
    return parser


def _find_command(argv: list[str]) -> str | None:
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _configure_logging(debug: bool, verbose: bool) -> None:
    import logging

    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
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
    debug = "--debug" in argv
    try:
        command = _find_command(argv)
        parser = _build_parser(command)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_OK
        _configure_logging(args.debug, args.verbose)
        import importlib

        module = importlib.import_module(COMMANDS[args.command][0])
        status: int = module.run(args)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`kmodkit info ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except Exception as exc:  # the single error boundary
        return _report(exc, debug)


def _report(exc: Exception, debug: bool) -> int:
    from kmodkit.errors import KmodkitError, from_oserror

    if debug:
        import traceback

        traceback.print_exc()
    if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
        exc = from_oserror(exc)
    if isinstance(exc, KmodkitError):
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_status
    sys.stderr.write(
        f"error: internal error: {type(exc).__name__}: {exc}; rerun with --debug and report the traceback\n"
    )
    return EXIT_INTERNAL
