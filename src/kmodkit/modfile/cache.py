"""A cache of rendered module descriptions, keyed by the file's identity.

Describing a module in full (symbols, CRCs, sections, signature) costs far
more than reading its ``.modinfo``; module trees rarely change, so the JSON
of each file is kept in one SQLite file under ``$XDG_CACHE_HOME/kmodkit``.
A file is the same file while its device, inode, size, mtime and ctime are
unchanged (any write or rename changes ctime); the cache file's name carries
kmodkit's version, so a new version never reads an old rendering.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable

from kmodkit import __version__

log = logging.getLogger(__name__)

Key = tuple[int, int, int, int, int]


def default_path() -> str:
    """``$XDG_CACHE_HOME/kmodkit/info-VERSION.sqlite`` (see :func:`kmodkit._util.cachedir.cache_dir`)."""
    from kmodkit._util.cachedir import cache_dir

    return cache_dir(f"info-{__version__}.sqlite")


def file_key(st: os.stat_result) -> Key:
    """The identity of a file's contents: device, inode, size, mtime and ctime (ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class InfoCache:
    """Rendered JSON bodies by file identity; every failure degrades to 'not cached', never to an error."""

    def __init__(self, path: str | None = None) -> None:
        #: the SQLite file
        self.path = path or default_path()
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[int, int, int, int, int, bytes]] = []

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS info (dev INTEGER, ino INTEGER, size INTEGER, mtime INTEGER, "
                    "ctime INTEGER, body BLOB, PRIMARY KEY (dev, ino, size, mtime, ctime))"
                )
                self._db = db
            except (OSError, sqlite3.Error) as exc:
                log.info("info cache %s unusable: %s", self.path, exc)
                return None
        return self._db

    def get_many(self, keys: Iterable[Key]) -> dict[Key, bytes]:
        """The cached bodies for ``keys`` that are present (``{}`` when the cache is unusable)."""
        db = self._connect()
        wanted = list(keys)
        if db is None or not wanted:
            return {}
        found: dict[Key, bytes] = {}
        try:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS want (dev, ino, size, mtime, ctime)")
            db.execute("DELETE FROM want")
            db.executemany("INSERT INTO want VALUES (?, ?, ?, ?, ?)", wanted)
            for row in db.execute(
                "SELECT i.dev, i.ino, i.size, i.mtime, i.ctime, i.body FROM want w JOIN info i USING "
                "(dev, ino, size, mtime, ctime)"
            ):
                found[(row[0], row[1], row[2], row[3], row[4])] = row[5]
        except sqlite3.Error as exc:
            log.info("info cache %s unreadable: %s", self.path, exc)
        return found

    def put(self, key: Key, body: bytes) -> None:
        """Remember ``body`` for ``key`` (written by :meth:`flush`)."""
        self._pending.append((*key, body))

    def flush(self) -> None:
        """Write what :meth:`put` collected, in one transaction."""
        db = self._connect()
        if db is None or not self._pending:
            self._pending.clear()
            return
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO info VALUES (?, ?, ?, ?, ?, ?)", self._pending)
        except sqlite3.Error as exc:
            log.info("info cache %s not written: %s", self.path, exc)
        self._pending.clear()

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None
