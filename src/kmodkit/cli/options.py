"""Options several commands share, declared once: the project directory and the kernels it is for."""

from __future__ import annotations

import argparse

PROJECT_HELP = "the project directory, holding kmodkit.toml (default: .)"


def project_and_kernels(parser: argparse.ArgumentParser, verb: str, *, project_help: str = PROJECT_HELP,
                        default: str = "the manifest's targets, else all installed", note: str = "") -> None:
    """``[DIR]``, then ``-k KVER`` (repeatable) or ``--all-installed``: what build, test, report, package and kmm
    act on.  ``verb`` reads before "this kernel" / "every installed kernel" ("build for", "test in")."""
    parser.add_argument("project", nargs="?", default=".", metavar="DIR", help=project_help)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("-k", "--kernel", dest="kernels", action="append", default=[], metavar="KVER",
                       help=f"{verb} this kernel (repeatable; {note}default: {default})")
    which.add_argument("--all-installed", action="store_true", help=f"{verb} every installed kernel")
