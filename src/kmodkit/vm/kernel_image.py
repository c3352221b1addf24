"""The image QEMU boots: the kernel's ELF (vmlinux) through its PVH entry when possible.

A bzImage spends its first seconds under TCG decompressing itself (xz: about
four seconds here).  Kernels built with CONFIG_PVH carry a Xen PVH entry note,
which lets QEMU boot the uncompressed ELF directly; kmodkit extracts it once
with the one kernel-image reader, :mod:`kmodkit.kimage` (bounded: a payload
that decompresses past its declared size is refused), and caches it.  When the
payload's compression cannot be undone here, the bzImage is booted as it is.
"""

from __future__ import annotations

import logging
import os

from kmodkit.errors import EnvironmentNotReady
from kmodkit.fileio import write_atomic
from kmodkit.kimage import read_vmlinux

log = logging.getLogger(__name__)


def _cache_dir() -> str:
    from kmodkit._util.cachedir import cache_dir

    return cache_dir("vmlinux")


def _has_pvh(config: str) -> bool:
    try:
        with open(config) as f:
            return any(line.strip() == "CONFIG_PVH=y" for line in f)
    except OSError:
        return False


def boot_image(vmlinuz: str, config: str) -> str:
    """The path QEMU should boot for ``vmlinuz``: a cached PVH vmlinux, or ``vmlinuz`` itself.

    Raises :class:`~kmodkit.errors.ModuleFormatError` when the image is
    corrupt or its payload decompresses past its bound (a decompression bomb).
    """
    if not _has_pvh(config):
        return vmlinuz
    st = os.stat(vmlinuz)
    cached = os.path.join(_cache_dir(), f"{os.path.basename(vmlinuz)}-{st.st_size}-{int(st.st_mtime)}.elf")
    if os.path.exists(cached):
        return cached
    try:
        image, elf = read_vmlinux(vmlinuz)
    except EnvironmentNotReady as exc:  # a payload format not undone here: the kernel decompresses itself
        log.info("booting %s as it is: %s", vmlinuz, exc)
        return vmlinuz
    if image.payload_format == "none":  # already the ELF
        return vmlinuz
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    write_atomic(cached, elf, durable=False)
    return cached
