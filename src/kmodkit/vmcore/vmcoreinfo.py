"""VMCOREINFO: the kernel's description of itself that a vmcore carries, read without a vmlinux.

The note is text, one ``KEY=VALUE`` a line, written by the crashed kernel (kernel/vmcore_info.c,
crash_core.c before 6.9; arch/x86/kernel/machine_kexec_64.c): ``OSRELEASE``, ``SYMBOL(name)`` (an
address, hex), ``SIZE(struct)`` / ``OFFSET(struct.member)`` / ``LENGTH(array)`` / ``NUMBER(name)``
(decimal), ``KERNELOFFSET`` (hex).  QEMU's ``-device vmcoreinfo`` puts the guest's copy in the dump.
"""

from __future__ import annotations

from dataclasses import dataclass

from kmodkit.errors import UserError

#: the note's owner name
NOTE_NAME = "VMCOREINFO"


@dataclass(frozen=True)
class VmcoreInfo:
    """The parsed note; the getters raise :class:`UserError` naming the missing key."""

    source: str  #: the vmcore it came from, for messages
    entries: dict[str, str]  #: KEY -> VALUE as written

    @classmethod
    def parse(cls, source: str, text: bytes) -> VmcoreInfo:
        """Parse the note's text (lines that are not KEY=VALUE are skipped)."""
        entries: dict[str, str] = {}
        for line in text.decode("ascii", "replace").split("\n"):
            key, sep, value = line.partition("=")
            if sep and key:
                entries[key.strip("\0 ")] = value.strip("\0 ")
        return cls(source, entries)

    @property
    def release(self) -> str | None:
        """The crashed kernel's release (OSRELEASE), None when absent."""
        return self.entries.get("OSRELEASE")

    def _get(self, key: str, base: int) -> int:
        value = self.entries.get(key)
        if value is None:
            raise UserError(self.source, f"its VMCOREINFO has no {key}",
                            "the kernel did not describe it: is this a kernel with the 5.10+ printk ring buffer?")
        try:
            return int(value, base)
        except ValueError:
            raise UserError(self.source, f"its VMCOREINFO says {key}={value!r}, not a number") from None

    def has(self, key: str) -> bool:
        """True when the note holds ``key`` (``SYMBOL(prb)``...)."""
        return key in self.entries

    def symbol(self, name: str) -> int:
        """SYMBOL(name): the address of a kernel variable."""
        return self._get(f"SYMBOL({name})", 16)

    def size(self, name: str) -> int:
        """SIZE(name): the size of a structure."""
        return self._get(f"SIZE({name})", 10)

    def offset(self, name: str) -> int:
        """OFFSET(struct.member): a member's offset."""
        return self._get(f"OFFSET({name})", 10)

    def number(self, name: str, default: int | None = None) -> int:
        """NUMBER(name), or ``default`` when given and the note lacks it."""
        if default is not None and f"NUMBER({name})" not in self.entries:
            return default
        return self._get(f"NUMBER({name})", 10)
