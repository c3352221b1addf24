"""The kinds of report the kernel prints, read from the table in ``kinds.toml``."""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources


class Kind(enum.Enum):
    """What a kernel report says happened."""

    NULL_DEREF = "null-deref"  #: an oops on a NULL pointer
    PAGING = "paging"  #: an oops on another bad address
    GPF = "gpf"  #: general protection fault
    DIVIDE_ERROR = "divide-error"  #: integer division by zero
    BUG = "bug"  #: BUG()/BUG_ON() ("kernel BUG at") or another "BUG:" line
    INVALID_OPCODE = "invalid-opcode"  #: ud2 outside BUG()
    WARNING = "warning"  #: WARN()/WARN_ON()
    SOFT_LOCKUP = "soft-lockup"  #: a CPU stuck in the kernel without scheduling
    HARD_LOCKUP = "hard-lockup"  #: a CPU stuck with interrupts off
    RCU_STALL = "rcu-stall"  #: an RCU grace period that does not end
    HUNG_TASK = "hung-task"  #: a task in D state for too long
    KASAN = "kasan"  #: KASAN found a bad memory access
    KFENCE = "kfence"  #: KFENCE found a bad memory access
    UBSAN = "ubsan"  #: undefined behaviour caught at run time
    REFCOUNT = "refcount"  #: refcount_t overflow, underflow or use after free
    LIST_CORRUPTION = "list-corruption"  #: CONFIG_DEBUG_LIST caught a broken list
    ATOMIC_SLEEP = "atomic-sleep"  #: sleeping in atomic context
    STACK_PROTECTOR = "stack-protector"  #: a smashed stack canary
    DOUBLE_FAULT = "double-fault"  #: a fault while handling a fault (often a stack overflow)
    LOCKDEP = "lockdep"  #: lockdep or RCU-lockdep found a locking bug
    OOPS = "oops"  #: an oops that says no more than "Oops"
    PANIC = "panic"  #: "Kernel panic - not syncing" on its own


@dataclass(frozen=True)
class Starter:
    """One row of the table: a line that starts (or names) a report."""

    kind: Kind  #: the kind it names
    pattern: re.Pattern[str]  #: searched in a line without its prefixes
    literals: tuple[str, ...]  #: one of them is in every line the pattern matches
    rank: int  #: the highest rank among a report's start lines names it
    title: str  #: a format with {func} and the pattern's named groups
    example: str  #: a real line it matches


@dataclass(frozen=True)
class Table:
    """The whole table."""

    starters: tuple[Starter, ...]  #: in the order they are tried
    anchors: tuple[str, ...]  #: the scanner's pre-filter: every report's first line holds one
    generic: frozenset[str]  #: functions that report a problem and are never guilty


@cache
def table() -> Table:
    """The table of report starters (parsed once)."""
    doc = tomllib.loads(resources.files("kmodkit.klog").joinpath("kinds.toml").read_text())
    starters = []
    for row in doc["report"]:
        lit = row["literal"]
        starters.append(Starter(Kind(row["kind"]), re.compile(row["pattern"]),
                                tuple(lit) if isinstance(lit, list) else (lit,), int(row["rank"]), row["title"],
                                row["example"]))
    return Table(tuple(starters), tuple(doc["anchors"]), frozenset(doc["generic"]["functions"]))


def match_starter(text: str) -> tuple[Starter, re.Match[str]] | None:
    """The first starter whose literal and pattern are in ``text``, or None."""
    for s in table().starters:
        if any(lit in text for lit in s.literals):
            m = s.pattern.search(text)
            if m is not None:
                return s, m
    return None
