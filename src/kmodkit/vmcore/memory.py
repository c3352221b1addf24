"""Kernel virtual addresses of an x86_64 vmcore, turned into bytes of the file.

Two translations, both from VMCOREINFO alone:

* the kernel image's mapping (``__START_KERNEL_map``, 0xffffffff80000000, for
  ``NUMBER(KERNEL_IMAGE_SIZE)`` bytes, where the kernel's variables are): physical = virtual -
  __START_KERNEL_map + ``NUMBER(phys_base)``.  The SYMBOL() addresses are the running kernel's,
  KASLR's offset included, so KERNELOFFSET is not needed;
* every other address (the direct map, whose base KASLR moves, vmalloc, modules): a walk of the
  kernel's page tables from ``SYMBOL(init_top_pgt)`` (itself in the image), four levels or five when
  ``NUMBER(pgtable_l5_enabled)`` is 1, with 1 GiB and 2 MiB pages; ``NUMBER(sme_mask)`` (memory
  encryption's bit) is cleared from each entry.

Physical addresses are found in the PT_LOAD segments (:class:`~kmodkit.vmcore.elfcore.CoreFile`).
"""

from __future__ import annotations

import struct

from kmodkit.errors import UserError
from kmodkit.vmcore.elfcore import CoreFile
from kmodkit.vmcore.vmcoreinfo import VmcoreInfo

#: where x86_64 maps the kernel image (arch/x86/include/asm/page_64_types.h)
START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000
#: KERNEL_IMAGE_SIZE when VMCOREINFO does not say (512 MiB without KASLR)
DEFAULT_IMAGE_SIZE = 512 << 20
PAGE_SIZE = 4096
_PRESENT, _HUGE = 1 << 0, 1 << 7
#: the physical address bits of a page-table entry (bits 12..51)
_ADDR_MASK = 0x000F_FFFF_FFFF_F000
_U64 = struct.Struct("<Q")


class KernelMemory:
    """Reads a crashed x86_64 kernel's memory by virtual address."""

    def __init__(self, core: CoreFile, info: VmcoreInfo) -> None:
        self.core = core
        self.info = info
        self._phys_base = info.number("phys_base")
        self._levels = 5 if info.number("pgtable_l5_enabled", 0) else 4
        self._sme = info.number("sme_mask", 0)
        self._image_end = START_KERNEL_MAP + info.number("KERNEL_IMAGE_SIZE", DEFAULT_IMAGE_SIZE)
        self._top: int | None = None
        self._cache: dict[int, int] = {}  # virtual page -> physical page

    def _image_phys(self, vaddr: int) -> int:
        return vaddr - START_KERNEL_MAP + self._phys_base

    def _walk(self, vaddr: int) -> int:
        if self._top is None:
            self._top = self._image_phys(self.info.symbol("init_top_pgt"))
        table = self._top
        shifts = (48, 39, 30, 21, 12)[5 - self._levels:]
        for shift in shifts:
            entry = int(_U64.unpack(self.core.read_phys(table + ((vaddr >> shift) & 511) * 8, 8))[0]) & ~self._sme
            if not entry & _PRESENT:
                raise UserError(self.core.path, f"kernel address {vaddr:#x} is not mapped in the dump's page tables")
            base = entry & _ADDR_MASK
            if shift in (30, 21) and entry & _HUGE:
                return (base & ~((1 << shift) - 1)) | (vaddr & ((1 << shift) - 1))
            table = base
        return table | (vaddr & (PAGE_SIZE - 1))

    def to_phys(self, vaddr: int) -> int:
        """The physical address of a kernel virtual address; UserError when it is not mapped."""
        if START_KERNEL_MAP <= vaddr < self._image_end:
            return self._image_phys(vaddr)
        page = vaddr & ~(PAGE_SIZE - 1)
        if page not in self._cache:
            self._cache[page] = self._walk(page)
        return self._cache[page] | (vaddr & (PAGE_SIZE - 1))

    def read(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at kernel virtual address ``vaddr`` (page by page outside the image)."""
        if START_KERNEL_MAP <= vaddr and vaddr + size <= self._image_end:
            return self.core.read_phys(self._image_phys(vaddr), size)
        out = bytearray()
        while size > 0:
            n = min(size, PAGE_SIZE - (vaddr & (PAGE_SIZE - 1)))
            out += self.core.read_phys(self.to_phys(vaddr), n)
            vaddr += n
            size -= n
        return bytes(out)

    def u64(self, vaddr: int) -> int:
        """The 64-bit value at ``vaddr``."""
        return int(_U64.unpack(self.read(vaddr, 8))[0])
