"""The kernel image: an x86 bzImage's setup header and the vmlinux its payload decompresses to.

The one reader of kernel images: ``keys extract`` and ``verify -k`` find the
kernel's certificates in the vmlinux (:mod:`kmodkit.signing.kimage`), ``vm run``
boots it through its PVH entry (:mod:`kmodkit.vm.kernel_image`).

An x86 bzImage (Documentation/arch/x86/boot.rst) starts with real-mode setup
code; its setup header gives ``setup_sects`` (0x1f1) and, from boot protocol
2.08, ``payload_offset`` / ``payload_length`` (0x248 / 0x24c) of the
compressed vmlinux, relative to the protected-mode code that starts at
``(setup_sects + 1) * 512``.  The payload's format is told by its magic
bytes (arch/x86/boot/compressed/Makefile: gzip, bzip2, lzma, xz, lzo, lz4,
zstd, each followed by the 4-byte decompressed size).

Every size is bounded: the image file and the vmlinux by :data:`MAX_VMLINUX`,
and the decompressed payload also by the size the build wrote after it, so a
payload that decompresses past either (a decompression bomb) is refused.
"""

from __future__ import annotations

import bz2
import lzma
import os
import struct
import zlib
from dataclasses import dataclass

from kmodkit.errors import EnvironmentNotReady, ModuleFormatError, NotFoundError, from_oserror
from kmodkit.modfile import compress as _compress
from kmodkit.modfile.compress import Compression

#: decompressed kernels are ~30-100 MiB; refuse more as a bomb (and an image file larger than this)
MAX_VMLINUX = 1 << 30

_HDR_MAGIC = b"HdrS"
_LZ4_LEGACY_MAGIC = 0x184C2102
_LZ4_LEGACY_BLOCK = 8 << 20

#: payload formats by magic bytes (arch/x86/boot/compressed/Makefile suffix-y)
_PAYLOAD_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x89LZO", "lzo"),
    (struct.pack("<I", _LZ4_LEGACY_MAGIC), "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x7fELF", "none"),
)


@dataclass(frozen=True)
class KernelImage:
    """A kernel image and what its header says."""

    path: str  #: the image file
    payload_format: str  #: gzip, xz, lz4, zstd, ... ("none" for an uncompressed vmlinux)
    vmlinux_size: int  #: bytes of the decompressed vmlinux


def image_for_release(release: str, boot_dir: str = "/boot") -> str:
    """``/boot/vmlinuz-RELEASE`` (a fetched kernel's in kmodkit's cache); NotFoundError naming it when absent."""
    path = os.path.join(boot_dir, f"vmlinuz-{release}")
    if boot_dir == "/boot" and not os.path.exists(path):
        from kmodkit.kbuild.kernels import kernel_root

        path = str(kernel_root(release).join(path))
    if not os.path.exists(path):
        raise NotFoundError(path, f"no kernel image for {release}",
                            "install the linux-image package of that release or pass --vmlinuz PATH")
    return path


def read_vmlinux(path: str, limit: int = MAX_VMLINUX) -> tuple[KernelImage, bytes]:
    """The image header facts and the decompressed vmlinux of the bzImage (or plain vmlinux) at ``path``.

    Neither the file nor the vmlinux may pass ``limit`` bytes, and the
    vmlinux may not pass the size the image declares for it.  Raises
    :class:`ModuleFormatError` when the file is neither kind of image, its
    payload is corrupt or decompresses past a bound; :class:`UserError` for
    a file that is not a regular file; :class:`EnvironmentNotReady` for a
    payload format that needs a missing decompressor.
    """
    data = _read_bounded(path, limit)
    if data[:4] == b"\x7fELF":
        return KernelImage(path, "none", len(data)), data
    if len(data) < 0x250 or data[0x202:0x206] != _HDR_MAGIC:
        raise ModuleFormatError(path, "is not a bzImage (no 'HdrS' setup header) nor a vmlinux ELF",
                                "give /boot/vmlinuz-RELEASE of an x86 kernel")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        raise ModuleFormatError(path, f"boot protocol {version >> 8}.{version & 0xff} has no payload fields (2.08+)")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = memoryview(data)[start:start + payload_length]
    if len(payload) != payload_length or payload_length < 8:
        raise ModuleFormatError(path, "payload lies past the end of the image (truncated file?)")
    fmt = next((name for magic, name in _PAYLOAD_MAGIC if bytes(payload[:len(magic)]) == magic), None)
    if fmt is None:
        raise ModuleFormatError(path, f"payload format not recognised (magic {bytes(payload[:4]).hex()})")
    # the build appends the decompressed size as a little-endian u32 (scripts/Makefile.lib size_append)
    declared = struct.unpack_from("<I", payload, payload_length - 4)[0]
    vmlinux = _decompress(payload, fmt, path, min(limit, declared) if declared else limit)
    if vmlinux[:4] != b"\x7fELF":
        raise ModuleFormatError(path, f"{fmt} payload does not decompress to an ELF vmlinux")
    return KernelImage(path, fmt, len(vmlinux)), vmlinux


def _read_bounded(path: str, limit: int) -> bytes:
    from kmodkit.modfile.opener import open_regular

    fd, st = open_regular(path, "a kernel image")  # a FIFO named like an image must not hang; only regular files are read
    with os.fdopen(fd, "rb") as f:
        if st.st_size > limit:
            raise ModuleFormatError(path, f"is {st.st_size} bytes, over the {limit >> 20} MiB a kernel image may be")
        try:
            # what the file holds, never the bound: read(n) allocates n bytes first (a 1 GiB guest cannot)
            return f.read(st.st_size)
        except OSError as exc:
            raise from_oserror(exc, path) from None


def _decompress(payload: memoryview, fmt: str, path: str, limit: int) -> bytes:
    try:
        if fmt == "none":
            return bytes(payload)
        if fmt == "xz":
            return _compress.decompress(payload[:-4], Compression.XZ, path, limit)
        if fmt == "zstd":
            return _compress.decompress(payload[:-4], Compression.ZSTD, path, limit)
        if fmt == "gzip":
            return _compress.decompress(payload[:-4], Compression.GZIP, path, limit)
        if fmt == "lzma":
            return _bounded(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), payload, limit, path)
        if fmt == "bzip2":
            return _bounded(bz2.BZ2Decompressor(), payload, limit, path)
        if fmt == "lz4":
            return _lz4_legacy(payload[:-4], path, limit)
    except (lzma.LZMAError, OSError, zlib.error, EOFError) as exc:
        raise ModuleFormatError(path, f"corrupt {fmt} payload ({exc})") from None
    raise EnvironmentNotReady(path, f"payload is {fmt}-compressed, which kmodkit cannot decompress",
                              "extract vmlinux with the kernel's scripts/extract-vmlinux and pass it with --vmlinuz")


def _bomb(path: str, limit: int) -> ModuleFormatError:
    return ModuleFormatError(path, f"payload decompresses past {limit} bytes (its declared size or the "
                             f"{MAX_VMLINUX >> 20} MiB cap): refused as a decompression bomb")


def _bounded(dec: lzma.LZMADecompressor | bz2.BZ2Decompressor, data: memoryview, limit: int, path: str) -> bytes:
    out = dec.decompress(data, limit + 1)
    if len(out) > limit:
        raise _bomb(path, limit)
    if not dec.eof:
        raise ModuleFormatError(path, "payload is truncated")
    return out


def _lz4_legacy(data: memoryview, path: str, limit: int) -> bytes:
    # lz4 -l (legacy frame): magic, then blocks of [u32 LE compressed size][block], each
    # decompressing to at most 8 MiB; a repeated magic starts another frame
    try:
        import lz4.block  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a dependency of the package
        raise EnvironmentNotReady(path, "reading an lz4 kernel needs the lz4 package", "pip install lz4") from None
    out: list[bytes] = []
    total = 0
    pos = 4
    while pos + 4 <= len(data):
        size = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if size == _LZ4_LEGACY_MAGIC:
            continue
        if size == 0 or pos + size > len(data):
            raise ModuleFormatError(path, f"corrupt lz4 payload (block of {size} bytes at {pos - 4})")
        try:
            block = lz4.block.decompress(bytes(data[pos:pos + size]), uncompressed_size=_LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError as exc:
            raise ModuleFormatError(path, f"corrupt lz4 payload ({exc})") from None
        out.append(block)
        total += len(block)
        if total > limit:
            raise _bomb(path, limit)
        pos += size
    return b"".join(out)
