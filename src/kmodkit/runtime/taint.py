"""Decoding taint: the kernel-wide mask of /proc/sys/kernel/tainted and a module's letters."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class TaintFlag:
    """One taint flag of the kernel (kernel/panic.c: taint_flags)."""

    bit: int  #: position in /proc/sys/kernel/tainted
    name: str  #: the kernel's TAINT_ name without the prefix
    letter: str  #: the letter shown when set
    unset: str  #: the letter shown when clear ("" for none; G for a GPL-only kernel)
    module: bool  #: whether a module can carry the flag
    meaning: str  #: what it means, in one sentence

    def to_json(self) -> dict[str, object]:
        """The flag as a JSON object."""
        return {"bit": self.bit, "name": self.name, "letter": self.letter, "meaning": self.meaning}


@cache
def flags() -> tuple[TaintFlag, ...]:
    """Every taint flag kmodkit knows, by bit."""
    raw = resources.files("kmodkit.runtime").joinpath("taint.toml").read_text()
    doc = tomllib.loads(raw)
    return tuple(TaintFlag(int(f["bit"]), f["name"], f["letter"], f.get("unset", ""), bool(f["module"]),
                           f["meaning"]) for f in doc["flag"])


def by_letter(letter: str) -> TaintFlag | None:
    """The module taint flag shown as ``letter``, or None when unknown."""
    for f in flags():
        if f.letter == letter and f.module:
            return f
    return None


def decode_mask(mask: int) -> list[TaintFlag]:
    """The flags set in a /proc/sys/kernel/tainted mask (unknown bits are reported as UNKNOWN_<bit>)."""
    known = {f.bit: f for f in flags()}
    out = []
    for bit in range(64):
        if mask >> bit & 1:
            out.append(known.get(bit) or TaintFlag(bit, f"UNKNOWN_{bit}", "?", "", False, "a flag kmodkit does not know"))
    return out


def mask_letters(mask: int) -> str:
    """The taint string as the kernel prints it in oopses ("G           OE"), "" when not tainted."""
    if not mask:
        return ""
    return "".join(f.letter if mask >> f.bit & 1 else (f.unset or " ") for f in flags()).rstrip()


def decode_letters(letters: str) -> list[TaintFlag]:
    """The flags of a module's taint letters (as /proc/modules shows them), unknown letters skipped."""
    return [f for f in (by_letter(c) for c in letters) if f is not None]


def read_kernel_taint(procfs: str = "/proc") -> int | None:
    """The kernel-wide taint mask, None when /proc/sys/kernel/tainted cannot be read."""
    try:
        with open(f"{procfs}/sys/kernel/tainted") as f:
            return int(f.read().strip() or "0")
    except (OSError, ValueError):
        return None
