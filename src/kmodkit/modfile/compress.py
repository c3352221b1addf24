"""Module compression: detect by magic bytes, decompress in memory with a size cap, re-compress.

The kernel and kmod check the *decompressed* module (its signature is inside),
so every reader works on decompressed bytes.  Formats are told apart by
their magic bytes, as kmod does, not by the file name.
"""

from __future__ import annotations

import enum
import gzip
import lzma
import zlib

from kmodkit.errors import EnvironmentNotReady, ModuleFormatError

#: the largest decompressed module accepted; the biggest real modules (amdgpu, xe) are ~40 MiB
MAX_DECOMPRESSED = 512 * 1024 * 1024


class Compression(enum.Enum):
    """How a module file is compressed."""

    NONE = "none"
    XZ = "xz"
    ZSTD = "zstd"
    GZIP = "gzip"

    @property
    def suffix(self) -> str:
        """The file-name suffix kmod and Kbuild use: ``""``, ``".xz"``, ``".zst"``, ``".gz"``."""
        return _SUFFIX[self]


_SUFFIX = {Compression.NONE: "", Compression.XZ: ".xz", Compression.ZSTD: ".zst", Compression.GZIP: ".gz"}
_MAGIC = (
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (b"\x1f\x8b", Compression.GZIP),
)


def detect(head: bytes) -> Compression:
    """The compression whose magic starts ``head``; :attr:`Compression.NONE` when none does."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return Compression.NONE


def decompress(data: bytes | memoryview, kind: Compression, name: str, limit: int = MAX_DECOMPRESSED) -> bytes:
    """Decompress ``data`` of format ``kind``; refuse output over ``limit`` bytes (a decompression bomb)."""
    try:
        if kind is Compression.XZ:
            out = _stream(lzma.LZMADecompressor(), data, limit, name)
        elif kind is Compression.GZIP:
            out = _stream(zlib.decompressobj(16 + zlib.MAX_WBITS), data, limit, name)
        elif kind is Compression.ZSTD:
            out = _zstd(data, limit, name)
        else:
            return bytes(data)
    except (lzma.LZMAError, zlib.error, EOFError) as exc:
        raise ModuleFormatError(name, f"corrupt {kind.value} stream ({exc})") from None
    return out


def _stream(dec: "lzma.LZMADecompressor | zlib._Decompress", data: bytes | memoryview, limit: int, name: str) -> bytes:
    out = dec.decompress(data, limit + 1)
    if len(out) > limit:
        raise ModuleFormatError(name, f"decompresses to more than {limit >> 20} MiB: refused as a decompression bomb")
    eof = dec.eof
    if not eof:
        raise ModuleFormatError(name, "compressed stream is truncated")
    return out


def _zstd(data: bytes | memoryview, limit: int, name: str) -> bytes:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a dependency of the package
        raise EnvironmentNotReady(name, "reading .zst needs the zstandard package", "pip install zstandard") from None
    try:
        declared = zstandard.frame_content_size(bytes(data[:18]))
        if declared > limit:
            raise ModuleFormatError(name, f"declares {declared} decompressed bytes, over the {limit >> 20} MiB cap: "
                                    "refused as a decompression bomb")
        dec = zstandard.ZstdDecompressor().decompressobj()
        parts: list[bytes] = []
        total = 0
        # small input steps bound what one step can expand to
        for start in range(0, len(data), 16384):
            part = dec.decompress(bytes(data[start:start + 16384]))
            total += len(part)
            if total > limit:
                raise ModuleFormatError(name, f"decompresses to more than {limit >> 20} MiB: "
                                        "refused as a decompression bomb")
            parts.append(part)
            if dec.eof:
                break
    except zstandard.ZstdError as exc:
        raise ModuleFormatError(name, f"corrupt zstd stream ({exc})") from None
    if not dec.eof:
        raise ModuleFormatError(name, "compressed stream is truncated")
    return b"".join(parts)


def compress(data: bytes | memoryview, kind: Compression) -> bytes:
    """Compress ``data`` as Kbuild's ``modules_install`` does for ``kind``."""
    if kind is Compression.XZ:
        # scripts/Makefile.modinst: xz --check=crc32 --lzma2=dict=1MiB
        filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    if kind is Compression.GZIP:
        # gzip -n: no name, no timestamp
        return gzip.compress(bytes(data), compresslevel=9, mtime=0)
    if kind is Compression.ZSTD:
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(bytes(data))
    return bytes(data)
