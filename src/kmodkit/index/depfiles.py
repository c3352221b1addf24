"""The files depmod writes, rendered from a :class:`~kmodkit.index.depmod.DepmodResult`.

Each renderer returns the file's bytes exactly as kmod 30's depmod writes
them, or kmod 34's when the result's ``compat`` says so (modules.weakdep
besides, every trie in pre-order); :func:`write_index` writes them all to temporary names in the output
directory and renames them only once every one is complete, so a failed run
leaves the previous index intact.
"""

from __future__ import annotations

import logging
import os
import re
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kmodkit.index.depmod import DepmodResult, Module
from kmodkit.index.glob import alias_normalize
from kmodkit.index.inputs import INDEX_FILES, KmodCompat
from kmodkit.index.khash import SYMBOL_BUCKETS, superfast
from kmodkit.index.trie import IndexBuilder
from kmodkit.modfile.modname import module_name

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

log = logging.getLogger(__name__)

__all__ = ["INDEX_FILES", "WrittenIndex", "render_all", "write_index"]


def _normalized(alias: bytes) -> bytes | None:
    # the one alias_normalize (index.glob), on the bytes of the files: latin-1 maps each byte to one character
    norm = alias_normalize(alias.decode("latin-1"))
    return None if norm is None else norm.encode("latin-1")


def _all_deps(result: DepmodResult) -> dict[int, list[Module]]:
    """Every module's transitive dependencies, sorted as depmod sorts them."""
    by_sort_idx = {m.dep_sort_idx: m for m in result.modules}
    closures: dict[int, set[int]] = {}
    # a dependency always numbers after its users: going from the highest number
    # down, every dependency's closure is complete when a user needs it
    for m in sorted(result.modules, key=lambda m: m.dep_sort_idx, reverse=True):
        acc: set[int] = set()
        for d in m.deps:
            acc.add(d.dep_sort_idx)
            acc |= closures[d.dep_sort_idx]
        closures[m.dep_sort_idx] = acc
    return {id(m): [by_sort_idx[i] for i in sorted(closures[m.dep_sort_idx])] for m in result.modules}


def _dep_lines(result: DepmodResult) -> list[bytes]:
    alldeps = _all_deps(result)
    path_of = {id(m): m.dep_path.encode() for m in result.modules}
    return [b" ".join([path_of[id(m)] + b":"] + [path_of[id(d)] for d in alldeps[id(m)]])
            for m in result.modules]


def render_dep(result: DepmodResult, lines: list[bytes]) -> bytes:
    """modules.dep."""
    return b"".join(line + b"\n" for line in lines)


def render_dep_bin(result: DepmodResult, lines: list[bytes]) -> bytes:
    """modules.dep.bin: module name -> its modules.dep line."""
    return build_trie(_dep_entries(result, lines), _preorder(result))


def _dep_entries(result: DepmodResult, lines: list[bytes]) -> list[tuple[bytes, bytes, int]]:
    return [(m.name.encode(), line, m.idx) for m, line in zip(result.modules, lines)]


def render_alias(result: DepmodResult) -> bytes:
    """modules.alias."""
    out = [b"# Aliases extracted from modules themselves.\n"]
    for m in result.modules:
        if m.record.aliases:
            tail = b" " + m.name.encode() + b"\n"
            out += [b"alias " + a + tail for a in m.record.aliases]
    return b"".join(out)


def render_alias_bin(result: DepmodResult) -> bytes:
    """modules.alias.bin: normalised alias pattern -> module names."""
    return build_trie(_alias_entries(result), _preorder(result))


def _preorder(result: DepmodResult) -> bool:
    return result.compat is KmodCompat.KMOD34


def build_trie(entries: list[tuple[bytes, bytes, int]], preorder: bool = False) -> bytes:
    """A kmod index of ``(key, value, priority)`` entries, inserted in order; ``preorder`` as kmod 34 writes it."""
    idx = IndexBuilder()
    idx.insert_many(entries)
    return idx.to_bytes(preorder)


def _build_trie_packed(keys: bytes, values: bytes, priorities: bytes, preorder: bool) -> bytes:
    # build_trie in a worker: the entries travel as two NUL-joined blobs and an
    # array, ~20 times cheaper to pickle than 26,000 tuples
    prios = array("q")
    prios.frombytes(priorities)
    return build_trie(list(zip(keys.split(b"\0"), values.split(b"\0"), prios)), preorder)


def _pack(entries: list[tuple[bytes, bytes, int]]) -> tuple[bytes, bytes, bytes]:
    # keys and values never hold a NUL (they all come from NUL-terminated strings), so NUL can join them
    return (b"\0".join(e[0] for e in entries), b"\0".join(e[1] for e in entries),
            array("q", [e[2] for e in entries]).tobytes())


def _alias_entries(result: DepmodResult) -> list[tuple[bytes, bytes, int]]:
    entries = []
    for m in result.modules:
        aliases = m.record.aliases
        if not aliases:
            continue
        name = m.name.encode()
        joined = b"\0".join(aliases)
        if b"[" not in joined and b"]" not in joined:
            # no brackets: normalising is "-" -> "_" throughout, done once for all of them
            keys = joined.replace(b"-", b"_").split(b"\0")
            entries += [(key, name, m.idx) for key in keys]
            continue
        for a in aliases:
            key = _normalized(a)
            if key is None:
                log.warning("Unmatched bracket in %s", a.decode("latin-1"))
                continue
            entries.append((key, name, m.idx))
    return entries


def render_softdep(result: DepmodResult) -> bytes:
    """modules.softdep."""
    out = [b"# Soft dependencies extracted from modules themselves.\n"]
    for m in result.modules:
        name = m.name.encode()
        out += [b"softdep " + name + b" " + s + b"\n" for s in m.record.softdeps]
    return b"".join(out)


def render_weakdep(result: DepmodResult) -> bytes:
    """modules.weakdep (kmod 33 and later), laid out as modules.softdep."""
    out = [b"# Weak dependencies extracted from modules themselves.\n"]
    for m in result.modules:
        name = m.name.encode()
        out += [b"weakdep " + name + b" " + s + b"\n" for s in m.weakdeps]
    return b"".join(out)


def _symbol_order(result: DepmodResult) -> list[tuple[bytes, Module]]:
    hashes = result.symbol_hashes
    mask = SYMBOL_BUCKETS - 1
    get = hashes.get
    # (bucket, name, owner): names are unique, so the owners are never compared
    keyed = [((get(name) or superfast(name)) & mask, name, owner)
             for name, owner in result.symbols.items() if owner is not None]
    keyed.sort()
    return [(name, owner) for _bucket, name, owner in keyed]


def render_symbols(result: DepmodResult, order: list[tuple[bytes, Module]]) -> bytes:
    """modules.symbols, in the order of depmod's symbol hash table."""
    out = [b"# Aliases for symbols, used by symbol_request().\n"]
    out += [b"alias symbol:" + name + b" " + owner.name.encode() + b"\n" for name, owner in order]
    return b"".join(out)


def render_symbols_bin(result: DepmodResult, order: list[tuple[bytes, Module]]) -> bytes:
    """modules.symbols.bin: ``symbol:NAME`` -> module."""
    return build_trie(_symbol_entries(order), _preorder(result))


def _symbol_entries(order: list[tuple[bytes, Module]]) -> list[tuple[bytes, bytes, int]]:
    return [(b"symbol:" + name, owner.name.encode(), owner.idx) for name, owner in order]


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
        modname = module_name(base.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        idx.insert(modname, b"", 0)
    return idx.to_bytes(_preorder(result))


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
        alias = _normalized(value)
        if alias is None:
            log.warning("Unmatched bracket in %s", value.decode("latin-1"))
            continue
        idx.insert(alias, modname, 0)
    return idx.to_bytes(_preorder(result))


_MAJOR = re.compile(rb"(char|block)-major-(\d+)-(\d+)")


def render_devname(result: DepmodResult) -> bytes:
    """modules.devname: modules that name a device node and its major:minor."""
    out: list[bytes] = []
    for m in result.modules:
        if not any(a.startswith(b"devname:") for a in m.record.aliases):
            continue
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


def _warn_non_ascii(result: DepmodResult) -> None:
    """Name each module whose name, path or alias is not 7-bit ASCII; the index is written all the same.

    kmod's index format is meant for 7-bit ASCII.  kmod 30's depmod writes such
    keys (and the lookups work while the byte sits inside a node's prefix);
    kmod 34's refuses the whole index (FATAL "bad character").  kmodkit writes
    the index, as kmod 30 does, and says which module carries what.
    """
    for m in result.modules:
        where = m.dep_path.encode("utf-8", "surrogateescape")
        if not (m.name.isascii() and where.isascii()):
            log.warning("%s: module file name is not 7-bit ASCII (kmod's index format); indexed as it is", m.path)
        for a in m.record.aliases:
            if not a.isascii():
                log.warning("%s: alias '%s' is not 7-bit ASCII (kmod's index format); indexed as it is",
                            m.path, a.decode("utf-8", "backslashreplace"))


def render_all(result: DepmodResult, pool: Executor | None = None) -> dict[str, bytes]:
    """Every index file's bytes (an empty file where depmod leaves one empty), in depmod's order.

    With ``pool`` (:func:`~kmodkit.index.scan.worker_pool`) the three large
    tries are built by its workers while this process writes the text files.
    """
    files: dict[str, bytes | None] = {}
    pending: dict[str, Future[bytes]] = {}
    preorder = _preorder(result)
    _warn_non_ascii(result)

    def trie(name: str, entries: list[tuple[bytes, bytes, int]]) -> None:
        if pool is None or not entries:
            files[name] = build_trie(entries, preorder)
        else:
            pending[name] = pool.submit(_build_trie_packed, *_pack(entries), preorder)

    trie("modules.alias.bin", _alias_entries(result))
    order = _symbol_order(result)
    trie("modules.symbols.bin", _symbol_entries(order))
    lines = _dep_lines(result)
    files["modules.dep.bin"] = render_dep_bin(result, lines)  # the smallest: built here meanwhile
    files["modules.dep"] = render_dep(result, lines)
    files["modules.alias"] = render_alias(result)
    files["modules.softdep"] = render_softdep(result)
    if result.compat.weakdep:
        files["modules.weakdep"] = render_weakdep(result)
    files["modules.symbols"] = render_symbols(result, order)
    files["modules.builtin.bin"] = render_builtin_bin(result)
    files["modules.builtin.alias.bin"] = render_builtin_alias_bin(result)
    files["modules.devname"] = render_devname(result)
    for name, future in pending.items():
        files[name] = future.result()
    return {name: files[name] or b"" for name in result.compat.index_files}


@dataclass(frozen=True)
class WrittenIndex:
    """What :func:`write_index` did."""

    outdir: str  #: where the files are
    files: tuple[str, ...]  #: file names written, in depmod's order
    unchanged: tuple[str, ...]  #: files whose bytes were already identical (left untouched)


def write_index(files: dict[str, bytes], outdir: str) -> WrittenIndex:
    """Write ``files`` into ``outdir`` as one set (:func:`kmodkit.fileio.commit_files`): all old or all new.

    A file whose current bytes are identical is left untouched.  On any
    error the temporary files are removed and the previous index stays.
    """
    from kmodkit.fileio import commit_files

    os.makedirs(outdir, exist_ok=True)
    for name in files:
        if os.path.isdir(os.path.join(outdir, name)):
            raise IsADirectoryError(21, "is a directory, cannot be replaced by an index file",
                                    os.path.join(outdir, name))
    changed = {name: data for name, data in files.items() if not _same(os.path.join(outdir, name), data)}
    if changed:
        commit_files(outdir, changed)
    return WrittenIndex(outdir, tuple(files), tuple(n for n in files if n not in changed))


def _same(path: str, data: bytes) -> bool:
    try:
        if os.path.getsize(path) != len(data):
            return False
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False
