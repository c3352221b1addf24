"""The files depmod writes, rendered from a :class:`~kmodkit.index.depmod.DepmodResult`.

Each renderer returns the file's bytes exactly as kmod 30's depmod writes
them; :func:`write_index` writes them all to temporary names in the output
directory and renames them only once every one is complete, so a failed run
leaves the previous index intact.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from kmodkit.errors import UserError
from kmodkit.index.depmod import DepmodResult, Module
from kmodkit.index.inputs import INDEX_FILES
from kmodkit.index.khash import SYMBOL_BUCKETS, superfast
from kmodkit.index.trie import IndexBuilder

log = logging.getLogger(__name__)

__all__ = ["INDEX_FILES", "WrittenIndex", "alias_normalize", "render_all", "write_index"]


def alias_normalize(alias: bytes) -> bytes | None:
    """kmod's ``alias_normalize``: ``-`` as ``_`` outside brackets; None on an unmatched bracket."""
    if b"[" not in alias and b"]" not in alias:
        return alias.replace(b"-", b"_")
    out = bytearray()
    i, n = 0, len(alias)
    while i < n:
        c = alias[i]
        if c == 0x5D:  # ']'
            return None
        if c == 0x5B:  # '['
            end = alias.find(b"]", i)
            if end < 0:
                return None
            out += alias[i:end + 1]
            i = end + 1
            continue
        out.append(0x5F if c == 0x2D else c)
        i += 1
    return bytes(out)


def _all_deps(result: DepmodResult) -> dict[int, list[Module]]:
    """Every module's transitive dependencies, sorted as depmod sorts them."""
    memo: dict[int, set[int]] = {}
    by_id = {id(m): m for m in result.modules}

    def closure(m: Module) -> set[int]:
        got = memo.get(id(m))
        if got is not None:
            return got
        acc: set[int] = set()
        memo[id(m)] = acc  # cycles were rejected before; this only guards recursion
        for d in m.deps:
            acc.add(id(d))
            acc |= closure(d)
        return acc

    out: dict[int, list[Module]] = {}
    for m in result.modules:
        deps = [by_id[i] for i in closure(m)]
        deps.sort(key=lambda d: d.dep_sort_idx)
        out[id(m)] = deps
    return out


def _dep_lines(result: DepmodResult) -> list[bytes]:
    alldeps = _all_deps(result)
    lines = []
    for m in result.modules:
        parts = [m.dep_path.encode() + b":"]
        parts += [b" " + d.dep_path.encode() for d in alldeps[id(m)]]
        lines.append(b"".join(parts))
    return lines


def render_dep(result: DepmodResult, lines: list[bytes]) -> bytes:
    """modules.dep."""
    return b"".join(line + b"\n" for line in lines)


def render_dep_bin(result: DepmodResult, lines: list[bytes]) -> bytes:
    """modules.dep.bin: module name -> its modules.dep line."""
    idx = IndexBuilder()
    for m, line in zip(result.modules, lines):
        _insert(idx, m.name.encode(), line, m.idx)
    return idx.to_bytes()


def render_alias(result: DepmodResult) -> bytes:
    """modules.alias."""
    out = [b"# Aliases extracted from modules themselves.\n"]
    for m in result.modules:
        name = m.name.encode()
        out += [b"alias " + a + b" " + name + b"\n" for a in m.record.aliases]
    return b"".join(out)


def render_alias_bin(result: DepmodResult) -> bytes:
    """modules.alias.bin: normalised alias pattern -> module names."""
    idx = IndexBuilder()
    for m in result.modules:
        name = m.name.encode()
        for a in m.record.aliases:
            key = alias_normalize(a)
            if key is None:
                log.warning("Unmatched bracket in %s", a.decode("latin-1"))
                continue
            _insert(idx, key, name, m.idx)
    return idx.to_bytes()


def render_softdep(result: DepmodResult) -> bytes:
    """modules.softdep."""
    out = [b"# Soft dependencies extracted from modules themselves.\n"]
    for m in result.modules:
        name = m.name.encode()
        out += [b"softdep " + name + b" " + s + b"\n" for s in m.record.softdeps]
    return b"".join(out)


def _symbol_order(result: DepmodResult) -> list[tuple[bytes, Module]]:
    hashes = result.symbol_hashes
    mask = SYMBOL_BUCKETS - 1
    owned = [(name, owner) for name, owner in result.symbols.items() if owner is not None]
    owned.sort(key=lambda item: ((hashes.get(item[0]) or superfast(item[0])) & mask, item[0]))
    return owned


def render_symbols(result: DepmodResult, order: list[tuple[bytes, Module]]) -> bytes:
    """modules.symbols, in the order of depmod's symbol hash table."""
    out = [b"# Aliases for symbols, used by symbol_request().\n"]
    out += [b"alias symbol:" + name + b" " + owner.name.encode() + b"\n" for name, owner in order]
    return b"".join(out)


def render_symbols_bin(result: DepmodResult, order: list[tuple[bytes, Module]]) -> bytes:
    """modules.symbols.bin: ``symbol:NAME`` -> module."""
    idx = IndexBuilder()
    for name, owner in order:
        _insert(idx, b"symbol:" + name, owner.name.encode(), owner.idx)
    return idx.to_bytes()


def render_builtin_bin(result: DepmodResult) -> bytes | None:
    """modules.builtin.bin from the tree's modules.builtin; None when that file is missing."""
    try:
        with open(os.path.join(result.dirname, "modules.builtin"), "rb") as f:
            lines = f.read().splitlines(keepends=True)
    except FileNotFoundError:
        return None
    idx = IndexBuilder()
    for line in lines:
        if not line[:1].isalpha():
            log.error("Invalid modules.builtin line: %s", line.decode("latin-1").rstrip("\n"))
            continue
        base = line.rsplit(b"/", 1)[-1]
        modname = base.split(b".", 1)[0].replace(b"-", b"_")
        _insert(idx, modname, b"", 0)
    return idx.to_bytes()


def render_builtin_alias_bin(result: DepmodResult) -> bytes | None:
    """modules.builtin.alias.bin from modules.builtin.modinfo; None when that file is missing."""
    try:
        with open(os.path.join(result.dirname, "modules.builtin.modinfo"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    idx = IndexBuilder()
    n = len(data)
    pos = 0

    def upto(end: int) -> tuple[bytes, bool]:
        # flush_stream_to: read to `end` or a NUL (or the end); True only when `end` was hit
        nonlocal pos
        stop = data.find(bytes([end]), pos)
        nul = data.find(b"\0", pos)
        candidates = [c for c in (stop, nul) if c >= 0]
        if not candidates:
            text, pos = data[pos:], n + 1
            return text, False
        at = min(candidates)
        text = data[pos:at]
        pos = at + 1
        return text, at == stop

    while pos < n:
        modname, ok = upto(0x2E)  # '.'
        if not ok or not modname:
            continue
        key, ok = upto(0x3D)  # '='
        if not ok or key != b"alias":
            upto(0)
            continue
        value, ok = upto(0)
        if not ok or not value:
            continue
        alias = alias_normalize(value)
        if alias is None:
            log.warning("Unmatched bracket in %s", value.decode("latin-1"))
            continue
        _insert(idx, alias, modname, 0)
    return idx.to_bytes()


_MAJOR = re.compile(rb"(char|block)-major-(\d+)-(\d+)")


def render_devname(result: DepmodResult) -> bytes:
    """modules.devname: modules that name a device node and its major:minor."""
    out: list[bytes] = []
    for m in result.modules:
        devname: bytes | None = None
        kind = b""
        major = minor = 0
        for a in m.record.aliases:
            if a.startswith(b"devname:"):
                devname = a[8:]
            else:
                hit = _MAJOR.match(a)
                if hit:
                    kind = b"c" if hit.group(1) == b"char" else b"b"
                    major, minor = int(hit.group(2)) & 0xFFFFFFFF, int(hit.group(3)) & 0xFFFFFFFF
            if kind and devname is not None:
                break
        if devname is None:
            continue
        if not kind:
            log.error("Module '%s' has devname (%s) but lacks major and minor information. Ignoring.",
                      m.name, devname.decode("latin-1"))
            continue
        if not out:
            out.append(b"# Device nodes to trigger on-demand module loading.\n")
        out.append(b"%s %s %s%d:%d\n" % (m.name.encode(), devname, kind, major, minor))
    return b"".join(out)


def _insert(idx: IndexBuilder, key: bytes, value: bytes, priority: int) -> None:
    if max(key, default=0) >= 128 or max(value, default=0) >= 128:
        raise UserError(key.decode("latin-1"), "index keys and values must be 7-bit ASCII (kmod's index format)")
    idx.insert(key, value, priority)


def render_all(result: DepmodResult) -> dict[str, bytes]:
    """Every index file's bytes (an empty file where depmod leaves one empty)."""
    lines = _dep_lines(result)
    order = _symbol_order(result)
    makers: dict[str, Callable[[], bytes | None]] = {
        "modules.dep": lambda: render_dep(result, lines),
        "modules.dep.bin": lambda: render_dep_bin(result, lines),
        "modules.alias": lambda: render_alias(result),
        "modules.alias.bin": lambda: render_alias_bin(result),
        "modules.softdep": lambda: render_softdep(result),
        "modules.symbols": lambda: render_symbols(result, order),
        "modules.symbols.bin": lambda: render_symbols_bin(result, order),
        "modules.builtin.bin": lambda: render_builtin_bin(result),
        "modules.builtin.alias.bin": lambda: render_builtin_alias_bin(result),
        "modules.devname": lambda: render_devname(result),
    }
    return {name: makers[name]() or b"" for name in INDEX_FILES}


@dataclass(frozen=True)
class WrittenIndex:
    """What :func:`write_index` did."""

    outdir: str  #: where the files are
    files: tuple[str, ...]  #: file names written, in depmod's order
    unchanged: tuple[str, ...]  #: files whose bytes were already identical (left untouched)


def write_index(files: dict[str, bytes], outdir: str) -> WrittenIndex:
    """Write ``files`` into ``outdir`` atomically: all to temporary names first, then renamed.

    A file whose current bytes are identical is left untouched.  On any
    error the temporary files are removed and the previous index stays.
    """
    os.makedirs(outdir, exist_ok=True)
    temps: list[tuple[str, str]] = []
    unchanged: list[str] = []
    for name in files:
        if os.path.isdir(os.path.join(outdir, name)):
            raise IsADirectoryError(21, "is a directory, cannot be replaced by an index file",
                                    os.path.join(outdir, name))
    try:
        for name, data in files.items():
            final = os.path.join(outdir, name)
            if _same(final, data):
                unchanged.append(name)
                continue
            tmp = os.path.join(outdir, f".{name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            temps.append((tmp, final))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for tmp, final in temps:
            os.rename(tmp, final)
    except BaseException:
        for tmp, _final in temps:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        raise
    return WrittenIndex(outdir, tuple(files), tuple(unchanged))


def _same(path: str, data: bytes) -> bool:
    try:
        if os.path.getsize(path) != len(data):
            return False
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False
