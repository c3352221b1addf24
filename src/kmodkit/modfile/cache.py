"""A cache of module descriptions (``info --json`` documents as data), keyed by format and file identity.

Describing a module in full (symbols, CRCs, sections, signature) costs far
more than reading its ``.modinfo``; module trees rarely change, so the
document of each file is kept in one SQLite file under ``$XDG_CACHE_HOME/kmodkit``.
A file is the same file while its device, inode, size, mtime and ctime are
unchanged (any write or rename changes ctime).  Each entry also carries the
format of the document (:func:`kmodkit.modfile.info.json_format`), so a
changed document shape is never served from an older run.  The entry holds
the document without its ``filename`` (the same file under another path
reuses it); the reader rebuilds the document as data.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from typing import Any

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
    """Documents by format and file identity; every failure degrades to 'not cached', never to an error."""

    def __init__(self, path: str | None = None, fmt: str = "") -> None:
        #: the SQLite file
        self.path = path or default_path()
        #: the document format entries are read and written under
        self.format = fmt
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[str, int, int, int, int, int, str]] = []

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None:
            try:
                os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=10)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS docs (format TEXT, dev INTEGER, ino INTEGER, size INTEGER, "
                    "mtime INTEGER, ctime INTEGER, doc TEXT, PRIMARY KEY (format, dev, ino, size, mtime, ctime))"
                )
                self._db = db
            except (OSError, sqlite3.Error) as exc:
                log.info("info cache %s unusable: %s", self.path, exc)
                return None
        return self._db

    def get_many(self, keys: Iterable[Key]) -> dict[Key, str]:
        """The cached documents for ``keys`` present in this format, as the compact JSON object text they were
        stored as (``{}`` when the cache is unusable): a warm run splices them, it does not parse them."""
        db = self._connect()
        wanted = list(keys)
        if db is None or not wanted:
            return {}
        found: dict[Key, str] = {}
        try:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS want (dev, ino, size, mtime, ctime)")
            db.execute("DELETE FROM want")
            db.executemany("INSERT INTO want VALUES (?, ?, ?, ?, ?)", wanted)
            for row in db.execute(
                "SELECT d.dev, d.ino, d.size, d.mtime, d.ctime, d.doc FROM want w JOIN docs d USING "
                "(dev, ino, size, mtime, ctime) WHERE d.format = ?", (self.format,)
            ):
                text = row[5]
                if isinstance(text, str) and text.startswith("{") and text.endswith("}"):  # else a miss
                    found[(row[0], row[1], row[2], row[3], row[4])] = text
        except sqlite3.Error as exc:
            log.info("info cache %s unreadable: %s", self.path, exc)
        return found

    def put(self, key: Key, doc: dict[str, Any]) -> None:
        """Remember ``doc`` for ``key`` in this format (written by :meth:`flush`)."""
        self._pending.append((self.format, *key, json.dumps(doc, ensure_ascii=False, separators=(",", ":"))))

    def flush(self) -> None:
        """Write what :meth:`put` collected, in one transaction."""
        db = self._connect()
        if db is None or not self._pending:
            self._pending.clear()
            return
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?, ?, ?, ?, ?, ?)", self._pending)
        except sqlite3.Error as exc:
            log.info("info cache %s not written: %s", self.path, exc)
        self._pending.clear()

    def close(self) -> None:
        """Flush and close."""
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None
