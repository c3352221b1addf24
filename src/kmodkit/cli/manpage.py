"""``kmodkit man``: kmodkit's man page in roff (man(7) macros), generated from the argument parser.

Written by hand from :mod:`kmodkit.cli.parsertree` rather than with argparse-manpage: no build-time
dependency, and the page carries what the parser does not know (the exit statuses from main's table, the
environment).  ``scripts/bootstrap setup`` installs it as /usr/local/share/man/man1/kmodkit.1.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.cli.parsertree import Command, Option

#: what the page says of the environment: variable, meaning
ENVIRONMENT = (
    ("NO_COLOR", "when set and not empty, no colour even on a terminal (https://no-color.org)"),
    ("KBUILD_SIGN_PIN", "the passphrase of a signing key, or a token's PIN, as for the kernel's sign-file"),
    ("XDG_CACHE_HOME", "the cache lives in $XDG_CACHE_HOME/kmodkit (default ~/.cache/kmodkit); deleting it only "
                       "costs time"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", default="", metavar="TEXT", help="the date in the page's footer (default: none)")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.main import full_parser
    from kmodkit.cli.parsertree import command_tree

    sys.stdout.write(man_page(command_tree(full_parser()), args.date))
    return 0


def roff(text: str) -> str:
    """``text`` escaped for roff: backslashes, hyphens as minus signs, no control character at a line's start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(f"\\&{line}" if line[:1] in (".", "'") else line for line in text.split("\n"))


def _option_head(opt: Option) -> str:
    flags = ", ".join(f"\\fB{roff(f)}\\fR" for f in opt.flags)
    if opt.metavar is None:
        return flags
    value = "|".join(opt.choices) if opt.choices else opt.metavar
    return f"{flags} \\fI{roff(value)}\\fR"


def _options(lines: list[str], cmd: Command) -> None:
    from kmodkit.cli.main import GLOBAL_OPTIONS

    globals_ = {f for flags, _ in GLOBAL_OPTIONS for f in flags}
    for opt in cmd.options:
        if cmd.path and (opt.flags == ("-h", "--help") or set(opt.flags) <= globals_):
            continue  # --help and the global options are said once, at the top
        lines += [".TP", _option_head(opt), roff(opt.help) if opt.help else "(no description)"]


def man_page(tree: Command, date: str = "") -> str:
    """The whole page: name, synopsis, global options, every command with its arguments and options,
    exit status, environment."""
    from kmodkit import __version__
    from kmodkit.cli.main import EXIT_STATUSES

    lines = [f'.TH KMODKIT 1 "{roff(date)}" "kmodkit {roff(__version__)}" "User Commands"',
             ".SH NAME", "kmodkit \\- " + roff(tree.help[:1].lower() + tree.help[1:].rstrip(".")),
             ".SH SYNOPSIS", ".B kmodkit", "[\\fB\\-\\-debug\\fR] [\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
             ".br", ".B kmodkit \\-\\-version",
             ".SH DESCRIPTION",
             roff("kmodkit builds, signs, indexes, checks, loads, watches and diagnoses out-of-tree Linux kernel "
                  "modules, exactly as the kernel and kmod do these things. Every command takes the global "
                  "options anywhere before a '--'; most take --json, and with it print errors as JSON objects "
                  "on standard output ({\"error\": {\"what\", \"why\", \"fix\", \"exit\"}})."),
             ".SH GLOBAL OPTIONS"]
    _options(lines, tree)
    lines.append(".SH COMMANDS")
    for cmd in tree.walk()[1:]:
        if cmd.children:  # a group (vm, keys, abi): its subcommands carry the options
            lines += [f'.SS "kmodkit {roff(" ".join(cmd.path))}"', roff(cmd.help)]
            continue
        lines += [f'.SS "kmodkit {roff(" ".join(cmd.path))}"', roff(cmd.help[:1].upper() + cmd.help[1:]),
                  ".PP", f"\\fBUsage:\\fR {roff(cmd.usage)}"]
        for pos in cmd.positionals:
            if pos.help:
                head = "|".join(pos.choices) if pos.choices else pos.name
                lines += [".TP", f"\\fI{roff(head)}\\fR", roff(pos.help)]
        _options(lines, cmd)
    lines.append(".SH EXIT STATUS")
    for status, meaning in EXIT_STATUSES:
        lines += [".TP", f"\\fB{status}\\fR", roff(meaning)]
    lines.append(".SH ENVIRONMENT")
    for name, meaning in ENVIRONMENT:
        lines += [".TP", f"\\fB{roff(name)}\\fR", roff(meaning)]
    lines += [".SH SEE ALSO", "\\fBmodinfo\\fR(8), \\fBdepmod\\fR(8), \\fBmodprobe\\fR(8), \\fBinsmod\\fR(8), "
              "\\fBdkms\\fR(8)", ""]
    return "\n".join(lines)
