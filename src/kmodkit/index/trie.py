"""kmod's index trie: the ``.bin`` files depmod writes and modprobe reads first.

Layout (libkmod/libkmod-index.c, format 2.1), all integers big-endian u32::

    magic 0xB007F457, version 0x00020001, root node offset
    node:  [prefix NUL]            when offset & 0x80000000
           [first last u32*N]      when offset & 0x20000000 (N = last-first+1)
           [count (prio value NUL)*count]  when offset & 0x40000000

Nodes are written children first (post-order), so a file is fully determined
by its set of keys and the ordered values of each key.  :class:`IndexBuilder`
collects keys and values with depmod's rules (values ordered by priority, a
new value going before older ones of equal priority); :func:`build_index`
writes the bytes.  :class:`IndexReader` answers libkmod's two questions:
the first value of an exact key, and every value whose key (a glob
pattern) matches a string.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import NamedTuple

from kmodkit.errors import UserError
from kmodkit.index.glob import fnmatch

INDEX_MAGIC = 0xB007F457
INDEX_VERSION = 0x00020001
_PREFIX = 0x80000000
_VALUES = 0x40000000
_CHILDS = 0x20000000
_MASK = 0x0FFFFFFF
_WILD = (ord("*"), ord("?"), ord("["))


class IndexBuilder:
    """Keys and their values, collected the way depmod's ``index_insert`` does."""

    def __init__(self) -> None:
        self._values: dict[bytes, list[tuple[int, bytes]]] = {}

    def insert(self, key: bytes, value: bytes, priority: int) -> bool:
        """Add ``value`` under ``key``; True when the key already held that value (a duplicate)."""
        values = self._values.get(key)
        if values is None:
            self._values[key] = [(priority, value)]
            return False
        duplicate = any(v == value for _, v in values)
        pos = 0
        while pos < len(values) and values[pos][0] < priority:
            pos += 1
        values.insert(pos, (priority, value))
        return duplicate

    def insert_many(self, entries: Iterable[tuple[bytes, bytes, int]]) -> None:
        """:meth:`insert` each ``(key, value, priority)`` in turn, without the duplicate report (faster)."""
        groups = self._values
        touched: dict[bytes, list[tuple[int, bytes]]] = {}
        for key, value, priority in entries:
            values = groups.get(key)
            if values is None:
                groups[key] = [(priority, value)]
                continue
            if key not in touched:
                values.reverse()  # within one priority: oldest first, the order of insertion
                touched[key] = values
            values.append((priority, value))
        # insert() puts a value before those of equal priority: newest first, then a stable sort
        for values in touched.values():
            values.reverse()
            values.sort(key=itemgetter(0))

    def __len__(self) -> int:
        return len(self._values)

    def to_bytes(self, preorder: bool = False) -> bytes:
        """The index file's bytes (see :func:`build_index` for ``preorder``)."""
        return build_index(self._values, preorder)


def _values_bytes(node_values: list[tuple[int, bytes]]) -> bytes:
    """A node's value block: count, then (priority, value NUL) each."""
    if len(node_values) == 1:
        prio, value = node_values[0]
        return _PACK2(1, prio) + value + b"\0"
    return _PACK1(len(node_values)) + b"".join(_PACK1(p) + v + b"\0" for p, v in node_values)


_PACK1 = struct.Struct(">I").pack
_PACK2 = struct.Struct(">II").pack


def build_index(values: dict[bytes, list[tuple[int, bytes]]], preorder: bool = False) -> bytes:
    """Serialise ``key -> [(priority, value), ...]`` (values in file order) as kmod's trie.

    Nodes go children first, as kmod 30's depmod writes them, or with
    ``preorder`` each node before its children, as kmod 34's does (kmod commit
    dada048cbf57, "depmod: Write index in pre-order"); both read the same.
    """
    if preorder:
        return _build_preorder(values)
    keys = sorted(values)
    out = bytearray(12)
    extend = out.extend
    pack = struct.pack

    # One call per node, each node's bytes appended in as few extends as possible:
    # the trie of modules.alias.bin alone has ~40,000 nodes.
    def node(lo: int, hi: int, depth: int, is_root: bool) -> int:
        # keys[lo:hi] share keys[lo][:depth]; this node's prefix is their
        # longest common continuation (the root never has one)
        first_key = keys[lo]
        if hi - lo == 1 and not is_root:  # a leaf: the rest of its key is its prefix
            offset = len(out)
            if len(first_key) > depth:
                extend(first_key[depth:] + b"\0" + _values_bytes(values[first_key]))
                return offset | _VALUES | _PREFIX
            extend(_values_bytes(values[first_key]))
            return offset | _VALUES
        pos, own, ranges = _split(keys, lo, hi, depth, is_root)
        node_values = values[first_key] if own else None
        children = [(ch, node(i, j, pos + 1, False)) for ch, i, j in ranges]
        offset = len(out)
        if not is_root and pos > depth:
            extend(first_key[depth:pos] + b"\0")
            offset |= _PREFIX
        if children:
            first, last = children[0][0], children[-1][0]
            if last - first + 1 == len(children):
                table = [off for _ch, off in children]
            else:
                table = [0] * (last - first + 1)
                for ch, off in children:
                    table[ch - first] = off
            extend(bytes((first, last)) + pack(f">{len(table)}I", *table))
            offset |= _CHILDS
        if node_values:
            extend(_values_bytes(node_values))
            offset |= _VALUES
        return offset

    if keys:
        root = node(0, len(keys), 0, True)
    else:
        root = len(out)  # an empty root node: no prefix, children or values
    out[0:12] = pack(">III", INDEX_MAGIC, INDEX_VERSION, root)
    return bytes(out)


def _split(keys: list[bytes], lo: int, hi: int, depth: int, is_root: bool
           ) -> tuple[int, bool, list[tuple[int, int, int]]]:
    """How a node holding ``keys[lo:hi]`` (which share ``keys[lo][:depth]``) splits, for both writers: the end of
    its prefix (their longest common continuation; the root has none), whether the first key ends there (the
    node has values), and ``(character, lo, hi)`` of each child in character order."""
    first_key = keys[lo]
    pos = depth
    if not is_root:
        last_key = keys[hi - 1]
        limit = min(len(first_key), len(last_key))
        while pos < limit and first_key[pos] == last_key[pos]:
            pos += 1
    own = len(first_key) == pos
    i = lo + 1 if own else lo
    ranges = []
    stem = first_key[:pos]
    while i < hi:
        ch = keys[i][pos]
        j = bisect_left(keys, stem + bytes((ch + 1,)), i + 1, hi) if ch < 255 else hi
        ranges.append((ch, i, j))
        i = j
    return pos, own, ranges


class _Tree(NamedTuple):
    """A node of the trie being written in pre-order, with the size of its subtree."""

    head: bytes  #: prefix (with its NUL), when it has one
    children: tuple[tuple[int, _Tree], ...]  #: (character, child) in character order
    tail: bytes  #: the value block, when it has values
    flags: int  #: _PREFIX / _CHILDS / _VALUES of this node
    size: int  #: bytes of this node alone (head, child table, tail)
    total: int  #: bytes of this node and every node below it


def _build_preorder(values: dict[bytes, list[tuple[int, bytes]]]) -> bytes:
    keys = sorted(values)

    # pass 1: the same nodes as the post-order writer, with their sizes
    def tree(lo: int, hi: int, depth: int, is_root: bool) -> _Tree:
        first_key = keys[lo]
        if hi - lo == 1 and not is_root:
            tail = _values_bytes(values[first_key])
            if len(first_key) > depth:
                head = first_key[depth:] + b"\0"
                return _Tree(head, (), tail, _VALUES | _PREFIX, len(head) + len(tail), len(head) + len(tail))
            return _Tree(b"", (), tail, _VALUES, len(tail), len(tail))
        pos, own, ranges = _split(keys, lo, hi, depth, is_root)
        tail = _values_bytes(values[first_key]) if own else b""
        flags = _VALUES if own else 0
        children = [(ch, tree(i, j, pos + 1, False)) for ch, i, j in ranges]
        head = b""
        if not is_root and pos > depth:
            head = first_key[depth:pos] + b"\0"
            flags |= _PREFIX
        size = len(head) + len(tail)
        if children:
            flags |= _CHILDS
            size += 2 + 4 * (children[-1][0] - children[0][0] + 1)
        return _Tree(head, tuple(children), tail, flags, size, size + sum(c.total for _ch, c in children))

    out = bytearray()

    # pass 2: each node, then its children in character order
    def emit(node: _Tree, offset: int) -> None:
        out.extend(node.head)
        if node.children:
            first, last = node.children[0][0], node.children[-1][0]
            table = [0] * (last - first + 1)
            at = offset + node.size
            for ch, child in node.children:
                table[ch - first] = at | child.flags
                at += child.total
            out.extend(bytes((first, last)) + struct.pack(f">{len(table)}I", *table))
        out.extend(node.tail)
        at = offset + node.size
        for _ch, child in node.children:
            emit(child, at)
            at += child.total

    header = struct.pack(">II", INDEX_MAGIC, INDEX_VERSION)
    if not keys:
        return header + struct.pack(">I", 12)
    root = tree(0, len(keys), 0, True)
    out.extend(header + struct.pack(">I", 12 | root.flags))
    emit(root, 12)
    return bytes(out)


class _Node:
    __slots__ = ("prefix", "first", "last", "children", "values")

    def __init__(self, prefix: bytes, first: int, last: int, children: tuple[int, ...],
                 values: list[tuple[int, bytes]]) -> None:
        self.prefix = prefix
        self.first = first
        self.last = last
        self.children = children
        self.values = values

    def child(self, ch: int) -> int:
        if self.first <= ch <= self.last:
            return self.children[ch - self.first]
        return 0


class IndexReader:
    """A kmod index file in memory; raises :class:`UserError` when it is not one."""

    def __init__(self, data: bytes, name: str = "<index>") -> None:
        self.name = name
        self._data = data
        if len(data) < 12:
            raise UserError(name, "truncated index file", "rerun depmod or kmodkit index")
        magic, version, root = struct.unpack_from(">III", data)
        if magic != INDEX_MAGIC:
            raise UserError(name, f"bad index magic {magic:#x}", "rerun depmod or kmodkit index")
        if version >> 16 != INDEX_VERSION >> 16:
            raise UserError(name, f"unsupported index version {version:#x}")
        self._root = root
        self._cache: dict[int, _Node] = {}

    @classmethod
    def open(cls, path: str) -> IndexReader | None:
        """The index at ``path``, or None when the file does not exist or is empty.

        depmod writes modules.builtin.bin and modules.builtin.alias.bin empty
        when the tree has no modules.builtin; libkmod then finds nothing there.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return cls(data, path) if data else None

    def _node(self, offset: int) -> _Node:
        node = self._cache.get(offset)
        if node is not None:
            return node
        data = self._data
        pos = offset & _MASK
        try:
            prefix = b""
            if offset & _PREFIX:
                end = data.index(b"\0", pos)
                prefix = data[pos:end]
                pos = end + 1
            first, last, children = 128, 0, ()
            if offset & _CHILDS:
                first, last = data[pos], data[pos + 1]
                n = last - first + 1
                children = struct.unpack_from(f">{n}I", data, pos + 2)
                pos += 2 + 4 * n
            values: list[tuple[int, bytes]] = []
            if offset & _VALUES:
                (count,) = struct.unpack_from(">I", data, pos)
                pos += 4
                for _ in range(count):
                    (prio,) = struct.unpack_from(">I", data, pos)
                    end = data.index(b"\0", pos + 4)
                    values.append((prio, data[pos + 4:end]))
                    pos = end + 1
        except (ValueError, struct.error, IndexError):
            raise UserError(self.name, f"corrupt index node at offset {offset & _MASK}",
                            "rerun depmod or kmodkit index") from None
        node = _Node(prefix, first, last, children, values)
        self._cache[offset] = node
        return node

    def search(self, key: bytes) -> bytes | None:
        """The first value stored under exactly ``key``, or None."""
        offset = self._root
        i = 0
        while True:
            node = self._node(offset)
            plen = len(node.prefix)
            if key[i:i + plen] != node.prefix:
                return None
            i += plen
            if i == len(key):
                return node.values[0][1] if node.values else None
            offset = node.child(key[i])
            if not offset:
                return None
            i += 1

    def search_wild(self, key: bytes) -> list[tuple[int, bytes]]:
        """``(priority, value)`` of every key that matches ``key`` as a glob pattern, in libkmod's order."""
        out: list[tuple[int, bytes]] = []
        offset = self._root
        i = 0
        while True:
            node = self._node(offset)
            for j, ch in enumerate(node.prefix):
                if ch in _WILD:
                    self._all(node, j, bytearray(), key[i + j:], out)
                    return out
                if i + j >= len(key) or ch != key[i + j]:
                    return out
            i += len(node.prefix)
            for wild in _WILD:
                child = node.child(wild)
                if child:
                    self._all(self._node(child), 0, bytearray([wild]), key[i:], out)
            if i == len(key):
                self._add_all(node, out)
                return out
            offset = node.child(key[i])
            if not offset:
                return out
            i += 1

    def _all(self, node: _Node, j: int, buf: bytearray, subkey: bytes, out: list[tuple[int, bytes]]) -> None:
        pushed = len(node.prefix) - j
        buf += node.prefix[j:]
        for ch in range(node.first, node.last + 1):
            child = node.children[ch - node.first]
            if child:
                buf.append(ch)
                self._all(self._node(child), 0, buf, subkey, out)
                del buf[-1]
        if node.values and fnmatch(bytes(buf), subkey):
            self._add_all(node, out)
        if pushed:
            del buf[-pushed:]

    @staticmethod
    def _add_all(node: _Node, out: list[tuple[int, bytes]]) -> None:
        for prio, value in node.values:
            pos = 0
            while pos < len(out) and out[pos][0] < prio:
                pos += 1
            out.insert(pos, (prio, value))

    def items(self) -> Iterator[tuple[bytes, list[tuple[int, bytes]]]]:
        """Every ``(key, [(priority, value), ...])`` in key order (for dumps and tests)."""
        stack: list[tuple[int, bytes]] = [(self._root, b"")]
        result: list[tuple[bytes, list[tuple[int, bytes]]]] = []
        while stack:
            offset, key = stack.pop()
            node = self._node(offset)
            full = key + node.prefix
            if node.values:
                result.append((full, list(node.values)))
            for ch in range(node.first, node.last + 1):
                child = node.children[ch - node.first]
                if child:
                    stack.append((child, full + bytes([ch])))
        result.sort()
        return iter(result)
