"""The cache ``kmodkit index`` keeps beside the index, and the quick "nothing changed" check.

Two files, written to temporary names and renamed like the index:

* ``modules.kmodkit-cache`` (small, read by every run): the identity of the
  tree's other inputs (:meth:`TreeInputs.identity`), the module files in walk
  order with their stat keys and where each record lies in the records file,
  the directory listings of the last walk, and the stat of each index file;
* ``modules.kmodkit-records``: each module's record, marshalled on its own and
  concatenated; read only when the index must be rebuilt, or one record at a
  time to check a module whose stat changed.

Both carry the same random generation number, so records from another run are
never trusted.  Records are compared as marshalled bytes: equal bytes are equal
records (marshal may write equal records differently, which only costs a
rebuild), so the quick path needs neither hashlib nor the records file as a whole.
"""

from __future__ import annotations

import marshal
import os
import struct
from array import array
from collections.abc import Iterable
from itertools import chain

from kmodkit.errors import KmodkitError
from kmodkit.fileio import write_atomic
from kmodkit.index.inputs import ALL_INDEX_FILES, DirListing, StatKey, TreeWalk

#: the cache files kmodkit keeps beside the index it writes
CACHE_NAME = "modules.kmodkit-cache"
RECORDS_NAME = "modules.kmodkit-records"
_VERSION = 6
_RECORDS_MAGIC = b"kmodkit-records\0"

# Stat keys are kept flat, (size, mtime_ns, inode) per file in the order of the
# walk, as one array of 64-bit words: loading it is one bytes object, and "no
# file changed" is one comparison of two such arrays.  A key that is too recent
# to trust (None) is written as -2s when stored and as -1s when fresh, so it
# never matches.
_STORED_RACY = (-2, -2, -2)
_FRESH_RACY = (-1, -1, -1)


def _flat_keys(keys: Iterable[StatKey], racy: tuple[int, int, int]) -> bytes:
    listed = list(keys)
    if None in listed:
        listed = [k or racy for k in listed]
    return array("q", chain.from_iterable(listed)).tobytes()  # type: ignore[arg-type]


class IndexCache:
    """What the last ``kmodkit index`` left beside the index; empty when there is none."""

    def __init__(self, outdir: str) -> None:
        #: the directory holding the index and the cache
        self.outdir = outdir
        self.generation = b""
        #: TreeInputs.identity() of the run that wrote the index (None: unknown)
        self.identity: object = None
        #: the module files the index was built from, in walk order
        self.paths: list[str] = []
        #: their stat keys, flat (see _flat_keys)
        self.keys = b""
        #: (offset, length) of each one's record in the records file, flat 64-bit words
        self.spans = b""
        #: directory listings of the last walk
        self.listings: dict[str, DirListing] = {}
        #: index file name -> (size, mtime_ns) as written
        self.outputs: dict[str, tuple[int, int]] = {}
        self._records: bytes | None = None
        self._index: dict[str, int] | None = None

    @classmethod
    def load(cls, outdir: str) -> IndexCache:
        """The cache in ``outdir``; an empty one when it is missing, unreadable or of another version."""
        cache = cls(outdir)
        try:
            with open(os.path.join(outdir, CACHE_NAME), "rb") as f:
                head = marshal.loads(f.read())
            version, generation, identity, paths, keys, spans, listings, outputs = head
            if version != _VERSION or len(keys) != 3 * 8 * len(paths) or len(spans) != 2 * 8 * len(paths):
                return cache
        except (OSError, EOFError, ValueError, TypeError):
            return cache
        cache.generation, cache.identity, cache.paths, cache.keys = generation, identity, paths, keys
        cache.spans, cache.listings, cache.outputs = spans, listings, outputs
        return cache

    # --- records -----------------------------------------------------------------

    def _span(self, path: str) -> tuple[int, tuple[int, int]] | None:
        if self._index is None:
            self._index = {p: i for i, p in enumerate(self.paths)}
        i = self._index.get(path)
        if i is None:
            return None
        offset, length = struct.unpack_from("=qq", self.spans, 16 * i)
        return i, (offset, length)

    def record_bytes(self, path: str, key: StatKey) -> bytes | None:
        """The marshalled record of ``path`` when its stat key is still ``key``; None otherwise."""
        hit = self._span(path)
        if key is None or hit is None:
            return None
        i, (offset, length) = hit
        if struct.unpack_from("=qqq", self.keys, 24 * i) != key:
            return None
        data = self._load_records()
        return None if data is None else data[offset:offset + length]

    def stored_bytes(self, path: str) -> bytes | None:
        """The marshalled record stored for ``path`` whatever its stat; None when absent."""
        hit = self._span(path)
        if hit is None or not self.generation:
            return None
        _i, (offset, length) = hit
        if self._records is not None:
            return self._records[offset:offset + length]
        try:  # one record: read just its bytes
            with open(os.path.join(self.outdir, RECORDS_NAME), "rb") as f:
                if f.read(len(_RECORDS_MAGIC) + 8) != _RECORDS_MAGIC + self.generation:
                    return None
                f.seek(offset)
                return f.read(length)
        except OSError:
            return None

    def _load_records(self) -> bytes | None:
        if self._records is None and self.generation:
            try:
                with open(os.path.join(self.outdir, RECORDS_NAME), "rb") as f:
                    data = f.read()
            except OSError:
                data = b""
            self._records = data if data.startswith(_RECORDS_MAGIC + self.generation) else b""
        return self._records or None

    # --- the quick check ----------------------------------------------------------

    def is_current(self, identity: object, walk: TreeWalk) -> tuple[bool, int]:
        """Whether the index in :attr:`outdir` is what these inputs give, and how many modules were read.

        Modules whose stat changed are read again and compared with their stored
        record; when they all still match, their stat keys are updated here
        (write them with :meth:`save_head`).
        """
        if (identity is None or identity != self.identity or walk.errors or walk.vanished
                or list(walk.stats) != self.paths or output_stats(self.outdir) != self.outputs):
            return False, 0
        fresh_keys = _flat_keys(walk.stats.values(), _FRESH_RACY)
        if fresh_keys == self.keys:
            return True, 0
        stored = struct.iter_unpack("=qqq", self.keys)
        fresh = struct.iter_unpack("=qqq", fresh_keys)
        changed = [path for path, old, new in zip(self.paths, stored, fresh) if old != new]
        from kmodkit.index.scan import read_module_bytes

        for path in changed:
            old = self.stored_bytes(path)
            try:
                new = read_module_bytes(path)
            except (KmodkitError, OSError):  # the rebuild reports it
                return False, 0
            if old is None or new != old:
                return False, 0
        self.keys = _flat_keys(walk.stats.values(), _STORED_RACY)
        return True, len(changed)

    # --- writing -----------------------------------------------------------------

    def save(self, identity: object, walk: TreeWalk, records: dict[str, bytes]) -> None:
        """Store ``records`` (path -> marshalled record) and the head for the index just written.

        Files without a record (unreadable) are left out: the next run reads them again.
        """
        self.generation = os.urandom(8)
        parts = [_RECORDS_MAGIC + self.generation]
        offset = len(parts[0])
        paths: list[str] = []
        keys: list[StatKey] = []
        spans = array("q")
        for path, key in walk.stats.items():
            blob = records.get(path)
            if blob is None:
                continue
            paths.append(path)
            keys.append(key)
            spans.extend((offset, len(blob)))
            parts.append(blob)
            offset += len(blob)
        self.paths, self.keys, self.spans = paths, _flat_keys(keys, _STORED_RACY), spans.tobytes()
        self._records, self._index = b"".join(parts), None
        write_atomic(os.path.join(self.outdir, RECORDS_NAME), self._records, durable=False)
        self.save_head(identity, walk)

    def save_head(self, identity: object, walk: TreeWalk) -> None:
        """Write the small file: identity, module files and stat keys, listings, index file stats."""
        self.identity, self.listings = identity, walk.listings
        self.outputs = output_stats(self.outdir)
        head = (_VERSION, self.generation, identity, self.paths, self.keys, self.spans, self.listings,
                self.outputs)
        write_atomic(os.path.join(self.outdir, CACHE_NAME), marshal.dumps(head), durable=False)  # type: ignore[arg-type]


def output_stats(outdir: str) -> dict[str, tuple[int, int]]:
    """``name -> (size, mtime_ns)`` of the index files in ``outdir`` (missing ones left out)."""
    out: dict[str, tuple[int, int]] = {}
    for name in ALL_INDEX_FILES:
        try:
            st = os.stat(os.path.join(outdir, name))
        except OSError:
            continue
        out[name] = (st.st_size, st.st_mtime_ns)
    return out
