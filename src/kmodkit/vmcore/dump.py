"""One vmcore opened for reading its kernel log: the ELF core, its VMCOREINFO, the kernel's memory."""

from __future__ import annotations

from collections.abc import Iterator

from kmodkit.errors import UserError
from kmodkit.vmcore.elfcore import CoreFile
from kmodkit.vmcore.memory import KernelMemory
from kmodkit.vmcore.printk import PrintkRecord, dmesg_line, printk_records
from kmodkit.vmcore.vmcoreinfo import NOTE_NAME, VmcoreInfo


class Vmcore:
    """A vmcore with its VMCOREINFO note; a context manager.

    Raises :class:`UserError` when the file is no ELF core or carries no VMCOREINFO."""

    def __init__(self, path: str) -> None:
        self.core = CoreFile(path)
        try:
            text = next((n.desc for n in self.core.notes() if n.name == NOTE_NAME), None)
            if text is None:
                raise UserError(path, "the vmcore carries no VMCOREINFO note",
                                "dump with QEMU's -device vmcoreinfo (kmodkit vm run --dump-on-panic does)")
            #: the kernel's description of itself
            self.info = VmcoreInfo.parse(path, text)
            #: the kernel's memory
            self.memory = KernelMemory(self.core, self.info)
        except BaseException:
            self.core.close()
            raise

    def __enter__(self) -> Vmcore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.core.close()

    def records(self) -> Iterator[PrintkRecord]:
        """The kernel log's records, oldest first."""
        return printk_records(self.memory)

    def dmesg(self) -> bytes:
        """The kernel log as ``makedumpfile --dump-dmesg`` writes it."""
        return b"".join(dmesg_line(r) for r in self.records())
