"""The image QEMU boots: the kernel's ELF (vmlinux) through its PVH entry when possible.

A bzImage spends its first seconds under TCG decompressing itself (xz: about
four seconds here).  Kernels built with CONFIG_PVH carry a Xen PVH entry note,
which lets QEMU boot the uncompressed ELF directly; kmodkit extracts it once
from the bzImage payload (boot protocol 2.08+: payload_offset/payload_length)
and caches it.  When the payload's compression cannot be undone here, the
bzImage is booted as it is.
"""

from __future__ import annotations

import logging
import lzma
import os
import shutil
import struct
import subprocess
import zlib

from kmodkit.fileio import write_atomic

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


def _payload(bz: bytes) -> bytes | None:
    if len(bz) < 0x250 or bz[0x202:0x206] != b"HdrS":
        return None
    setup_sects = bz[0x1F1] or 4
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", bz, 0x248)
    return bz[start + offset:start + offset + length] or None


def _decompress(payload: bytes) -> bytes | None:
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor().decompress(payload)
    if payload.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard

        try:  # one frame; the kernel appends the decompressed size after it
            data: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        except zstandard.ZstdError:
            return None
        return data
    if payload.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    if payload.startswith(b"\x02\x21\x4c\x18") and shutil.which("lz4"):  # lz4 legacy frames
        done = subprocess.run(["lz4", "-dc"], input=payload, capture_output=True, timeout=60)
        return done.stdout if done.returncode == 0 else None
    return None


def boot_image(vmlinuz: str, config: str) -> str:
    """The path QEMU should boot for ``vmlinuz``: a cached PVH vmlinux, or ``vmlinuz`` itself."""
    if not _has_pvh(config):
        return vmlinuz
    st = os.stat(vmlinuz)
    cached = os.path.join(_cache_dir(), f"{os.path.basename(vmlinuz)}-{st.st_size}-{int(st.st_mtime)}.elf")
    if os.path.exists(cached):
        return cached
    with open(vmlinuz, "rb") as f:
        payload = _payload(f.read())
    try:
        elf = _decompress(payload) if payload else None
    except (lzma.LZMAError, zlib.error, ValueError, OSError) as exc:
        log.info("cannot extract vmlinux from %s: %s", vmlinuz, exc)
        elf = None
    if not elf or not elf.startswith(b"\x7fELF"):
        return vmlinuz
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    write_atomic(cached, elf, durable=False)
    return cached
