"""Seeded inputs for the fuzz harness: real modules, mutated where corruption hurts.

Seeds are real Debian modules (tests/data/modules, or any directory given):
as shipped (signed by Debian), stripped of their signature, and signed again
with a key of the run (so `verify` has valid signatures to break).  Every input
is a seed plus one to four mutations, then maybe a compression wrapper; input
``index`` of a run with ``seed`` depends on nothing else.
"""

from __future__ import annotations

import gzip
import lzma
import random
import struct
import subprocess
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

MAGIC = b"~Module signature appended~\n"
#: struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], __be32 sig_len
SIG_INFO = struct.Struct(">BBBBB3sI")
TRAILER = SIG_INFO.size + len(MAGIC)
#: the fields of struct module_signature the kernel insists on (id_type 2 is PKEY_ID_PKCS7)
KERNEL_SIG_INFO = (0, 0, 2, 0, 0, b"\0\0\0")

DATA = Path(__file__).resolve().parent.parent / "data" / "modules"


@dataclass(frozen=True)
class Seed:
    """One starting point: a real module's bytes (decompressed) and where they came from."""

    name: str  #: e.g. ``s390x/stp.ko`` or ``s390x/stp.ko+ours``
    data: bytes  #: the ELF (with whatever signature it carries)


@dataclass
class Input:
    """One fuzz input: bytes to write under ``suffix``, or a special file."""

    index: int  #: position in the run: with the seed, all it takes to make it again
    data: bytes  #: file contents (unused for special files)
    suffix: str = ".ko"  #: .ko, .ko.xz, .ko.zst or .ko.gz
    special: str | None = None  #: fifo, dev_zero, dev_null, directory, dangling, loop
    recipe: list[str] = field(default_factory=list)  #: what was done to the seed, in order
    control: bool = False  #: an unmutated seed: must be processed like any good file

    @property
    def filename(self) -> str:
        """The file's name in a batch directory (unique in a run)."""
        return f"f{self.index:06d}{self.suffix}"

    def describe(self) -> str:
        """One line: the input's index and recipe."""
        return f"#{self.index} {self.filename}: " + " | ".join(self.recipe)


def split_signature(data: bytes) -> tuple[bytes, bytes]:
    """(body, signature trailer) of a module; the trailer is empty when there is no well-formed one."""
    if len(data) < TRAILER or not data.endswith(MAGIC):
        return data, b""
    sig_len = SIG_INFO.unpack_from(data, len(data) - TRAILER)[-1]
    if sig_len > len(data) - TRAILER:
        return data, b""
    cut = len(data) - TRAILER - sig_len
    return data[:cut], data[cut:]


def sign_with_openssl(body: bytes, key: Path, cert: Path, workdir: Path) -> bytes:
    """``body`` signed as the kernel's sign-file signs it, by the openssl command (an independent signer)."""
    src, sig = workdir / "body", workdir / "body.p7"
    src.write_bytes(body)
    subprocess.run(["openssl", "cms", "-sign", "-binary", "-noattr", "-nocerts", "-nosmimecap", "-md", "sha256",
                    "-signer", str(cert), "-inkey", str(key), "-outform", "DER", "-in", str(src), "-out", str(sig)],
                   check=True, capture_output=True)
    p7 = sig.read_bytes()
    return body + p7 + SIG_INFO.pack(0, 0, 2, 0, 0, b"\0\0\0", len(p7)) + MAGIC


def make_key(workdir: Path) -> tuple[Path, Path]:
    """A fresh RSA-2048 key and its DER certificate, made by openssl (key file 0600)."""
    key, cert, pem = workdir / "fuzz_key.pem", workdir / "fuzz_cert.der", workdir / "fuzz_cert.pem"
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch", "-x509",
                    "-subj", "/CN=kmodkit fuzz/", "-newkey", "rsa:2048", "-keyout", str(key), "-outform", "DER",
                    "-out", str(cert), "-addext", "subjectKeyIdentifier=hash"], check=True, capture_output=True)
    key.chmod(0o600)
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(cert), "-out", str(pem)], check=True,
                   capture_output=True)
    return key, cert


def _read_module(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    if path.name.endswith(".gz"):
        return gzip.decompress(raw)
    return raw


def load_seeds(paths: Iterable[Path], key: Path, cert: Path, workdir: Path, max_size: int = 200_000) -> list[Seed]:
    """Seeds from module files: as they are, stripped, and signed with ``key`` (modules over ``max_size``
    bytes are left out: small seeds make fast batches)."""
    seeds = []
    for path in sorted(paths):
        data = _read_module(path)
        if len(data) > max_size or not data.startswith(b"\x7fELF"):
            continue
        name = f"{path.parent.name}/{path.name}"
        body, trailer = split_signature(data)
        seeds.append(Seed(name, data))
        if trailer:
            seeds.append(Seed(name + "+stripped", body))
        seeds.append(Seed(name + "+ours", sign_with_openssl(body, key, cert, workdir)))
    if not seeds:
        raise ValueError("no seed modules found")
    return seeds


def default_seed_paths() -> list[Path]:
    """The real modules checked in under tests/data/modules (every class, byte order, and .ko.xz)."""
    return sorted(p for p in DATA.glob("*/*.ko*") if not p.name.endswith(".txt"))


# -- mutations ------------------------------------------------------------------------------------------

def _elf_layout(data: bytes) -> tuple[int, int, int] | None:
    """(e_shoff, e_shentsize, e_shnum) as the header says, or None when it cannot say."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    order = "<" if data[5] == 1 else ">"
    if data[4] == 1:
        shoff = struct.unpack_from(order + "I", data, 32)[0]
        entsize, num = struct.unpack_from(order + "HH", data, 46)
    else:
        shoff = struct.unpack_from(order + "Q", data, 40)[0]
        entsize, num = struct.unpack_from(order + "HH", data, 58)
    return shoff, entsize, num


def _set(data: bytearray, pos: int, value: int) -> str:
    pos %= max(1, len(data))
    if data:
        data[pos] = value
    return f"byte {pos} = {value:#04x}"


def flip_header(rng: random.Random, data: bytearray) -> str:
    """A byte of the ELF header (ident, type, machine, section-table fields)."""
    pos = rng.choice([4, 5, 6, 16, 17, 18, 19, 40, 41, 46, 48, 58, 60, 62, rng.randrange(64)])
    return "header " + _set(data, pos, rng.choice([0, 1, 2, 0xFF, rng.randrange(256)]))


def flip_section_table(rng: random.Random, data: bytearray) -> str:
    """A byte of one section header (type, offset, size, link, entsize, name)."""
    layout = _elf_layout(bytes(data[:64]))
    if layout is None or layout[0] >= len(data):
        return flip_anywhere(rng, data)
    shoff, entsize, num = layout
    span = max(1, min(len(data) - shoff, max(1, entsize) * max(1, num)))
    return "section table " + _set(data, shoff + rng.randrange(span), rng.choice([0, 0xFF, rng.randrange(256)]))


def flip_trailer(rng: random.Random, data: bytearray) -> str:
    """A byte of the signature, its struct module_signature or the magic string."""
    span = min(len(data), TRAILER + 700)
    return "trailer " + _set(data, len(data) - 1 - rng.randrange(max(1, span)), rng.randrange(256))


def trailer_field(rng: random.Random, data: bytearray) -> str:
    """One field of struct module_signature set to a value the kernel refuses or a length that lies."""
    if len(data) < TRAILER or not bytes(data).endswith(MAGIC):
        return flip_trailer(rng, data)
    at = len(data) - TRAILER
    algo, hsh, id_type, signer_len, key_id_len, pad, sig_len = SIG_INFO.unpack_from(data, at)
    which = rng.choice(["algo", "hash", "id_type", "signer_len", "key_id_len", "pad", "sig_len"])
    if which == "sig_len":
        value = rng.choice([0, 1, sig_len - 1, sig_len + 1, at, at + 1, len(data), 0xFFFFFFFF, rng.randrange(at + 1)])
        struct.pack_into(">I", data, at + 8, value % (1 << 32))
        return f"trailer sig_len {sig_len} -> {value % (1 << 32)}"
    offset = ["algo", "hash", "id_type", "signer_len", "key_id_len", "pad"].index(which)
    if which == "pad":
        offset += rng.randrange(3)
    value = rng.choice([1, 2, 0xFF] if which != "id_type" else [0, 1, 3, 0xFF])
    data[at + offset] = value
    return f"trailer {which} = {value}"


def flip_modinfo(rng: random.Random, data: bytearray) -> str:
    """Inside ``.modinfo``: a key, a value, a separator or NUL, or a non-ASCII byte in an alias or name."""
    raw = bytes(data)
    anchors = [raw.find(k) for k in (b"vermagic=", b"name=", b"license=", b"alias=", b"depends=", b"parm=")]
    anchors = [a for a in anchors if a >= 0]
    if not anchors:
        return flip_anywhere(rng, data)
    at = rng.choice(anchors)
    end = raw.find(b"\0", at)
    end = end if end > at else min(len(raw), at + 40)
    pos = rng.randrange(at, max(at + 1, end + 1))
    value = rng.choice([0, ord("="), 0x80, 0xC3, 0xFF, ord("*"), ord("["), rng.randrange(256)])
    return ".modinfo " + _set(data, pos, value)


def flip_anywhere(rng: random.Random, data: bytearray) -> str:
    """Any byte."""
    return "anywhere " + _set(data, rng.randrange(max(1, len(data))), rng.randrange(256))


def truncate(rng: random.Random, data: bytearray) -> str:
    """Cut the file: inside the header, the section table, the trailer, or anywhere."""
    layout = _elf_layout(bytes(data[:64]))
    points = [rng.randrange(64), len(data) - 1, len(data) - TRAILER, len(data) - TRAILER + 12,
              rng.randrange(max(1, len(data)))]
    if layout is not None and 0 < layout[0] < len(data):
        points.append(layout[0] + rng.randrange(max(1, min(len(data) - layout[0], 64 * 4))))
    cut = max(0, min(len(data), rng.choice(points)))
    del data[cut:]
    return f"truncate at {cut}"


def append_garbage(rng: random.Random, data: bytearray) -> str:
    """Bytes after the end (after a signature: it is no longer at the end)."""
    extra = rng.choice([b"\0", b"\n", MAGIC, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))])
    data += extra
    return f"append {len(extra)} bytes"


MUTATIONS = {f.__name__: f for f in (flip_header, flip_section_table, flip_trailer, trailer_field, flip_modinfo,
                                      flip_anywhere, truncate, append_garbage)}
_WEIGHTS = {"flip_header": 3, "flip_section_table": 4, "flip_trailer": 3, "trailer_field": 3, "flip_modinfo": 3,
            "flip_anywhere": 2, "truncate": 2, "append_garbage": 1}


def _xz(data: bytes) -> bytes:
    return lzma.compress(data, check=lzma.CHECK_CRC32, preset=0)


def _zst(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(data)


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


_COMPRESSORS = {".ko.xz": _xz, ".ko.zst": _zst, ".ko.gz": _gz}


def compress(rng: random.Random, data: bytes) -> tuple[bytes, str, str]:
    """(bytes, suffix, recipe): one stream, several streams (kmod reads them all), garbage after the
    stream, a cut or flipped stream, or a compressed file named .ko and back."""
    suffix = rng.choice(list(_COMPRESSORS))
    pack = _COMPRESSORS[suffix]
    how = rng.choice(["one", "multi", "multi", "garbage_after", "cut", "flip", "misnamed", "plain_named"])
    if how == "one":
        return pack(data), suffix, f"compress {suffix}"
    if how == "multi":
        k = rng.randrange(1, max(2, len(data)))
        return pack(data[:k]) + pack(data[k:]), suffix, f"compress {suffix} as two streams split at {k}"
    if how == "garbage_after":
        return pack(data) + b"\0" * rng.randrange(1, 9) + b"junk", suffix, f"compress {suffix} + junk after"
    packed = bytearray(pack(data))
    if how == "cut":
        cut = rng.randrange(len(packed))
        return bytes(packed[:cut]), suffix, f"compress {suffix} cut at {cut}"
    if how == "flip":
        note = _set(packed, rng.randrange(len(packed)), rng.randrange(256))
        return bytes(packed), suffix, f"compress {suffix}, {note}"
    if how == "misnamed":
        return bytes(packed), ".ko", f"compress {suffix} but name it .ko"
    return data, suffix, f"uncompressed but named {suffix}"


SPECIALS = ("fifo", "dev_zero", "dev_null", "directory", "dangling", "loop", "empty")


def generate(seeds: list[Seed], seed: int, index: int, special_rate: float = 0.0,
             compress_rate: float = 0.15) -> Input:
    """Input ``index`` of the run with ``seed`` (the same bytes on every machine and every run)."""
    rng = random.Random(f"{seed}:{index}")
    if special_rate and rng.random() < special_rate:
        kind = rng.choice(SPECIALS)
        return Input(index, b"", special=kind, recipe=[f"special file: {kind}"])
    base = rng.choice(seeds)
    data = bytearray(base.data)
    recipe = [f"seed {base.name}"]
    names, weights = zip(*_WEIGHTS.items())
    for name in rng.choices(names, weights, k=rng.choice([1, 1, 1, 2, 2, 3, 4])):
        recipe.append(MUTATIONS[name](rng, data))
    suffix = ".ko"
    out = bytes(data)
    if rng.random() < compress_rate:
        out, suffix, note = compress(rng, out)
        recipe.append(note)
    return Input(index, out, suffix=suffix, recipe=recipe)


def control(seeds: list[Seed], index: int, which: int) -> Input:
    """An unmutated seed (one signed with the run's key where there is one), to be processed like any good file."""
    ours = [s for s in seeds if s.name.endswith("+ours")] or seeds
    base = ours[which % len(ours)]
    return Input(index, base.data, recipe=[f"control: seed {base.name} unchanged"], control=True)


def apply(seeds: list[Seed], index: int, seed_pick: int, ops: list[tuple[str, int]],
          packing: int | None) -> Input:
    """An input from explicit choices (what hypothesis draws): a seed, mutations each with its own random
    seed, and an optional compression choice."""
    base = seeds[seed_pick % len(seeds)]
    data = bytearray(base.data)
    recipe = [f"seed {base.name}"]
    for name, r in ops:
        recipe.append(MUTATIONS[name](random.Random(r), data))
    out, suffix = bytes(data), ".ko"
    if packing is not None:
        out, suffix, note = compress(random.Random(packing), out)
        recipe.append(note)
    return Input(index, out, suffix=suffix, recipe=recipe)


def decompress_all(data: bytes) -> bytes | None:
    """Every stream of a compressed module, concatenated as kmod reads them (the format found by its magic
    number, as kmod finds it, whatever the name says); the bytes themselves when not compressed; None when
    the stream cannot be read."""
    try:
        if data.startswith(b"\xfd7zXZ\0"):
            return lzma.decompress(data)  # reads concatenated streams
        if data.startswith(b"\x1f\x8b"):
            return gzip.decompress(data)  # reads every member
        if data.startswith(b"\x28\xb5\x2f\xfd"):
            out, rest = b"", data
            while rest:
                d = zstandard.ZstdDecompressor().decompressobj()
                out += d.decompress(rest)
                rest = d.unused_data
            return out
    except (lzma.LZMAError, OSError, EOFError, zlib.error, zstandard.ZstdError):
        return None
    return data
