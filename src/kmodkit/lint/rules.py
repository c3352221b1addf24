"""The lint rules, read from ``rules.toml``: id, summary, why, and a bad and a good example each."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Rule:
    """One lint rule."""

    id: str  #: what the output prints, e.g. "missing-license"
    summary: str  #: what the rule finds, one line
    why: str  #: why it matters
    bad: str  #: a module source that breaks the rule
    good: str  #: the same source, fixed


@functools.cache
def rules() -> dict[str, Rule]:
    """Every rule by id, in table order."""
    table = tomllib.loads(resources.files("kmodkit.lint").joinpath("rules.toml").read_text())
    return {r["id"]: Rule(r["id"], r["summary"], r["why"], r["bad"].lstrip("\n"), r["good"].lstrip("\n"))
            for r in table["rule"]}


def rule(rule_id: str) -> Rule:
    """The rule ``rule_id``; KeyError for an unknown id (a bug in a check)."""
    return rules()[rule_id]
