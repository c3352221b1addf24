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
from collections.abc import Callable

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
    """Decompress ``data`` of format ``kind``, every stream, frame or member of it, as kmod reads them.

    Refuses output over ``limit`` bytes (a decompression bomb) with
    :class:`ModuleFormatError`, as it does a corrupt or truncated stream.
    """
    try:
        if kind is Compression.XZ:
            out = _members(lzma.LZMADecompressor, data, limit, name, _xz_next)
        elif kind is Compression.GZIP:
            out = _members(lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), data, limit, name, _gzip_next)
        elif kind is Compression.ZSTD:
            out = _zstd(data, limit, name)
        else:
            return bytes(data)
    except (lzma.LZMAError, zlib.error, EOFError) as exc:
        raise ModuleFormatError(name, f"corrupt {kind.value} stream ({exc})") from None
    return out


def _bomb(name: str, limit: int) -> ModuleFormatError:
    return ModuleFormatError(name, f"decompresses to more than {limit >> 20} MiB: refused as a decompression bomb")


def _xz_next(rest: bytes) -> bytes | None:
    # liblzma's concatenated mode (kmod): streams follow one another, with stream padding (NUL bytes,
    # a multiple of 4) allowed between and after them; anything else is an error of the next stream
    stripped = rest.lstrip(b"\0")
    if (len(rest) - len(stripped)) % 4:
        raise lzma.LZMAError("stream padding is not a multiple of 4 bytes")
    return stripped or None


def _gzip_next(rest: bytes) -> bytes | None:
    # zlib's gzread (kmod): another member follows when the gzip magic does; other trailing bytes are ignored
    return rest if rest.startswith(b"\x1f\x8b") else None


def _members(new: Callable[[], "lzma.LZMADecompressor | zlib._Decompress"], data: bytes | memoryview, limit: int,
             name: str, following: Callable[[bytes], bytes | None]) -> bytes:
    parts: list[bytes] = []
    total = 0
    rest: bytes | memoryview | None = data
    while rest is not None:
        dec = new()
        # at most one byte over what the cap leaves: output stays bounded whatever the input claims
        out = dec.decompress(rest, limit - total + 1)
        total += len(out)
        if total > limit:
            raise _bomb(name, limit)
        parts.append(out)
        if not dec.eof:
            raise ModuleFormatError(name, "compressed stream is truncated")
        rest = following(bytes(dec.unused_data)) if dec.unused_data else None
    return b"".join(parts)


def _zstd(data: bytes | memoryview, limit: int, name: str) -> bytes:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a dependency of the package
        raise EnvironmentNotReady(name, "reading .zst needs the zstandard package", "pip install zstandard") from None
    parts: list[bytes] = []
    total = 0
    pos = 0
    try:
        while pos < len(data):  # ZSTD_decompressStream over the whole file (kmod): frame after frame
            declared = zstandard.frame_content_size(bytes(data[pos:pos + 18]))
            if declared > limit - total:
                raise ModuleFormatError(name, f"declares {total + declared} decompressed bytes, over the "
                                        f"{limit >> 20} MiB cap: refused as a decompression bomb")
            dec = zstandard.ZstdDecompressor().decompressobj()
            while not dec.eof:
                if pos >= len(data):
                    raise ModuleFormatError(name, "compressed stream is truncated")
                # small input steps bound what one step can expand to
                step = bytes(data[pos:pos + 16384])
                pos += len(step)
                part = dec.decompress(step)
                total += len(part)
                if total > limit:
                    raise _bomb(name, limit)
                parts.append(part)
            pos -= len(dec.unused_data)
    except zstandard.ZstdError as exc:
        raise ModuleFormatError(name, f"corrupt zstd stream ({exc})") from None
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
