"""What ``check`` predicts for one (module, kernel) pair: the records, and nothing that computes them."""

from __future__ import annotations

import enum
import errno as _errno
import os
from dataclasses import dataclass


class Outcome(enum.Enum):
    """What ``finit_module`` does with the module."""

    LOADS = "loads"  #: loaded, nothing tainted
    TAINTS = "loads, taints"  #: loaded, and the kernel is tainted (see :attr:`Prediction.taints`)
    REFUSED = "refused"  #: not loaded: finit_module fails with :attr:`Refusal.errno`


@dataclass(frozen=True)
class LogLine:
    """One line the kernel logs while loading, as /dev/kmsg gives it."""

    level: int  #: printk level (3 err, 4 warning, 5 notice)
    text: str  #: the text, without the newline

    def __str__(self) -> str:
        return f"<{self.level}>{self.text}"


@dataclass(frozen=True)
class Refusal:
    """Why the kernel refuses the module."""

    check: str  #: which of load_module()'s checks failed ("signature", "elf", "module_layout", "vermagic", ...)
    errno: int  #: what finit_module returns (positive errno)
    problem: str  #: the reason in words
    fix: str | None  #: what to do about it, None when nothing can be said

    @property
    def errno_name(self) -> str:
        """``ENOEXEC`` and the like."""
        return _errno.errorcode.get(self.errno, str(self.errno))

    @property
    def strerror(self) -> str:
        """The C library's text for the errno (what insmod prints)."""
        return os.strerror(self.errno)


@dataclass(frozen=True)
class Prediction:
    """The kernel's verdict on one module, predicted from files."""

    path: str  #: the module file, as named
    name: str  #: the module's name as the kernel knows it (struct module's name)
    kernel: str  #: the target kernel's release
    outcome: Outcome  #: loads / loads, taints / refused
    taints: str  #: taint letters this load adds ("OE"), in the kernel's letter order; "" when none
    lines: tuple[LogLine, ...]  #: every line the kernel logs for this load, in order
    refusal: Refusal | None  #: why it is refused, None when it loads
    needs: tuple[str, ...]  #: modules that must be loaded first for its symbols (what modprobe loads before it)
    assumptions: tuple[str, ...]  #: what the prediction took for granted (a fresh boot, no Secure Boot, ...)

    @property
    def loads(self) -> bool:
        """Whether finit_module succeeds."""
        return self.outcome is not Outcome.REFUSED

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        r = self.refusal
        return {
            "path": self.path, "name": self.name, "kernel": self.kernel, "outcome": self.outcome.value,
            "loads": self.loads, "taints": self.taints, "lines": [str(line) for line in self.lines],
            "refusal": None if r is None else {"check": r.check, "errno": r.errno, "errno_name": r.errno_name,
                                               "problem": r.problem, "fix": r.fix},
            "needs": list(self.needs), "assumptions": list(self.assumptions),
        }
