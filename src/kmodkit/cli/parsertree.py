"""The CLI's argument parser as plain data: one walk of argparse's structure, read by the shell completion
scripts (:mod:`kmodkit.cli.completion`) and the man page (:mod:`kmodkit.cli.manpage`).

argparse keeps its options and subparsers in private attributes (``_actions``); this is the one place
that reads them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    """One option of a command."""

    flags: tuple[str, ...]  #: its spellings, short ones first ("-k", "--kernel")
    help: str  #: its help text, "" when it has none
    metavar: str | None  #: the value's name (KVER), None for a flag that takes no value
    choices: tuple[str, ...]  #: the values it accepts, () when any


@dataclass(frozen=True)
class Positional:
    """One positional argument of a command."""

    name: str  #: its metavar (MODULE), or its name
    help: str  #: its help text
    choices: tuple[str, ...]  #: the words it accepts, () when any
    remainder: bool  #: it takes the rest of the line (vm run's CMD, trace's WORKLOAD)


@dataclass(frozen=True)
class Command:
    """A command or subcommand, with what it takes."""

    path: tuple[str, ...]  #: the words that name it after "kmodkit" (() for kmodkit itself, ("vm", "run"))
    help: str  #: one line: what it does
    usage: str  #: argparse's usage line without "usage: ", on one line
    options: tuple[Option, ...]  #: its options, --help included
    positionals: tuple[Positional, ...]  #: its positional arguments
    children: tuple[Command, ...]  #: its subcommands, () when it has none

    def walk(self) -> list[Command]:
        """This command and every command below it, depth first."""
        return [self, *(c for child in self.children for c in child.walk())]


def command_tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = (), help_text: str = "") -> Command:
    """The tree of ``parser`` (give it :func:`kmodkit.cli.main.full_parser`)."""
    options: list[Option] = []
    positionals: list[Positional] = []
    children: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, child in action.choices.items():
                children.append(command_tree(child, (*path, name), helps.get(name, "")))
        elif action.help == argparse.SUPPRESS:
            continue
        elif action.option_strings:
            takes = action.nargs != 0
            metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
            options.append(Option(tuple(action.option_strings), action.help or "", metavar if takes else None,
                                  tuple(str(c) for c in action.choices or ())))
        else:
            name = action.metavar if isinstance(action.metavar, str) else action.dest
            positionals.append(Positional(name, action.help or "", tuple(str(c) for c in action.choices or ()),
                                          action.nargs == argparse.REMAINDER))
    usage = " ".join(parser.format_usage().split())
    usage = usage[len("usage: "):] if usage.startswith("usage: ") else usage
    return Command(path, help_text or parser.description or "", usage, tuple(options), tuple(positionals),
                   tuple(children))
