"""The certificates compiled into a kernel image: the system certificate list of a bzImage.

An x86 bzImage (Documentation/arch/x86/boot.rst) starts with real-mode setup
code; its setup header gives ``setup_sects`` (0x1f1) and, from boot protocol
2.08, ``payload_offset`` / ``payload_length`` (0x248 / 0x24c) of the
compressed vmlinux, relative to the protected-mode code that starts at
``(setup_sects + 1) * 512``.  The payload's format is told by its magic
bytes (arch/x86/boot/compressed/Makefile: gzip, bzip2, lzma, xz, lzo, lz4,
zstd, each followed by the 4-byte decompressed size).

Inside the decompressed vmlinux, certs/system_certificates.S lays out
``system_certificate_list`` (the module-signing key, then
CONFIG_SYSTEM_TRUSTED_KEYS) as DER certificates back to back, followed,
8-byte aligned, by ``system_certificate_list_size`` (a quad on 64-bit;
some kernels, 6.1 among them, put a ``module_cert_size`` quad before it).  Debian's images are
stripped and ship no System.map, so the list is found by its shape: a run of
certificates whose length is written right after it.
"""

from __future__ import annotations

import bz2
import logging
import lzma
import os
import re
import struct
import zlib
from dataclasses import dataclass

from kmodkit.errors import EnvironmentNotReady, ModuleFormatError, NotFoundError, UserError, from_oserror
from kmodkit.modfile import compress as _compress
from kmodkit.modfile.compress import Compression

log = logging.getLogger(__name__)

#: decompressed kernels are ~30-100 MiB; refuse more as a bomb
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

# a DER certificate: SEQUENCE { SEQUENCE (tbs) { [0] { INTEGER 2 } ... } }, both with 2-byte lengths
_CERT_START = re.compile(rb"\x30\x82(..)\x30\x82..\xa0\x03\x02\x01\x02", re.DOTALL)


@dataclass(frozen=True)
class KernelImage:
    """A kernel image and what its header says."""

    path: str  #: the image file
    payload_format: str  #: gzip, xz, lz4, zstd, ... ("none" for an uncompressed vmlinux)
    vmlinux_size: int  #: bytes of the decompressed vmlinux


@dataclass(frozen=True)
class EmbeddedCert:
    """One certificate found in a kernel image."""

    der: bytes  #: the certificate
    offset: int  #: where it starts in the decompressed vmlinux
    in_system_list: bool  #: True when it lies in the list the kernel loads into .builtin_trusted_keys


def image_for_release(release: str, boot_dir: str = "/boot") -> str:
    """``/boot/vmlinuz-RELEASE``; NotFoundError naming it when absent."""
    path = os.path.join(boot_dir, f"vmlinuz-{release}")
    if not os.path.exists(path):
        raise NotFoundError(path, f"no kernel image for {release}",
                            "install the linux-image package of that release or pass --vmlinuz PATH")
    return path


def read_vmlinux(path: str) -> tuple[KernelImage, bytes]:
    """The image header facts and the decompressed vmlinux of the bzImage (or plain vmlinux) at ``path``.

    Raises :class:`ModuleFormatError` when the file is neither, or its
    payload is corrupt; :class:`EnvironmentNotReady` for a payload format
    that needs a missing decompressor.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise from_oserror(exc, path) from None
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
    vmlinux = _decompress(payload, fmt, path, declared)
    if vmlinux[:4] != b"\x7fELF":
        raise ModuleFormatError(path, f"{fmt} payload does not decompress to an ELF vmlinux")
    return KernelImage(path, fmt, len(vmlinux)), vmlinux


def _decompress(payload: memoryview, fmt: str, path: str, declared: int) -> bytes:
    limit = min(MAX_VMLINUX, max(declared, 1))
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
            return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload, limit + 1)[:limit]
        if fmt == "bzip2":
            return bz2.BZ2Decompressor().decompress(payload, limit + 1)[:limit]
        if fmt == "lz4":
            return _lz4_legacy(payload[:-4], path, limit)
    except (lzma.LZMAError, OSError, zlib.error, EOFError) as exc:
        raise ModuleFormatError(path, f"corrupt {fmt} payload ({exc})") from None
    raise EnvironmentNotReady(path, f"payload is {fmt}-compressed, which kmodkit cannot decompress",
                              "extract vmlinux with the kernel's scripts/extract-vmlinux and pass it with --vmlinuz")


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
            raise ModuleFormatError(path, "lz4 payload decompresses past its declared size")
        pos += size
    return b"".join(out)


def find_certificates(vmlinux: bytes) -> list[EmbeddedCert]:
    """Every DER X.509 v3 certificate in ``vmlinux``, marked when it lies in the system certificate list.

    Returns ``[]`` when there is none (a kernel built without
    CONFIG_SYSTEM_TRUSTED_KEYRING).
    """
    from cryptography import x509

    found: list[tuple[int, bytes]] = []
    for m in _CERT_START.finditer(vmlinux):
        length = struct.unpack(">H", m.group(1))[0] + 4
        der = vmlinux[m.start():m.start() + length]
        try:
            x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        found.append((m.start(), der))
    runs = _runs(found)
    in_list: set[int] = set()
    for run in runs:
        start, end = run[0][0], run[-1][0] + len(run[-1][1])
        if _size_follows(vmlinux, end, end - start):
            in_list.update(off for off, _ in run)
    return [EmbeddedCert(der, off, off in in_list) for off, der in found]


def _runs(found: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
    runs: list[list[tuple[int, bytes]]] = []
    for off, der in found:
        if runs and runs[-1][-1][0] + len(runs[-1][-1][1]) == off:
            runs[-1].append((off, der))
        else:
            runs.append([(off, der)])
    return runs


def _size_follows(vmlinux: bytes, end: int, length: int) -> bool:
    aligned = (end + 7) & ~7
    for pos in (aligned, aligned + 8):  # module_cert_size may come first
        if pos + 8 <= len(vmlinux) and struct.unpack_from("<Q", vmlinux, pos)[0] == length:
            return True
    return False


def system_certificates(path: str) -> tuple[KernelImage, list[bytes]]:
    """The image facts and the DER certificates of the system certificate list of the kernel at ``path``.

    When the list cannot be told apart (an unusual layout), every
    certificate found in the image is returned, with a warning logged.
    Raises :class:`UserError` when the image holds no certificate at all.
    """
    image, vmlinux = read_vmlinux(path)
    certs = find_certificates(vmlinux)
    chosen = [c.der for c in certs if c.in_system_list]
    if not chosen and certs:
        log.warning("%s: system certificate list not located by its size field; using all %d certificates found",
                    path, len(certs))
        chosen = [c.der for c in certs]
    if not chosen:
        raise UserError(path, "holds no X.509 certificates: the kernel was built without trusted keys",
                        "verify against certificate files with --cert instead")
    return image, chosen
