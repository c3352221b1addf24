"""The hardened TOML reader under kmodkit.toml: typed access, and every error at FILE:LINE.

:func:`read_toml` refuses, with one error line and at once, what would hang or exhaust the parser: a file
that is not a regular file (a FIFO, /dev/zero), one larger than :data:`MAX_BYTES`, bytes that are not UTF-8,
keys of more than :data:`MAX_DEPTH` dotted parts (tomllib's time grows with the square of their count) and
nesting deeper than :data:`MAX_DEPTH`.  What the document means is :mod:`kmodkit.kbuild.manifest`'s business.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from kmodkit.errors import ConfigError, NotFoundError, from_oserror

#: the largest manifest read: a project's is about 1 KB, and tomllib needs ~0.1 s per 64 KB of many keys
MAX_BYTES = 128 * 1024
#: the most parts a dotted key may have, and the deepest nesting of tables and arrays
MAX_DEPTH = 32


def read_toml(p: Path, absent: str, fix: str) -> Document:
    """The TOML document at ``p``; NotFoundError(``absent``, ``fix``) when there is none, ConfigError when bad."""
    data = _read_bytes(p, absent, fix)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{p}:{line}", f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                          "save the manifest as UTF-8") from None
    return parse_toml(text, p)


def parse_toml(text: str, path: Path) -> Document:
    """The document of ``text`` read from ``path``; ConfigError (FILE:LINE) when it is not TOML or too deep."""
    return Document(text.splitlines(), path, _parse_toml(text, path))


def _read_bytes(p: Path, absent: str, fix: str) -> bytes:
    try:
        st = os.stat(p)
        _check_file(p, st)
        # O_NONBLOCK: were a FIFO put in its place since the stat, open must not wait for a writer
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(str(p), absent, fix) from None
    except OSError as exc:  # EACCES: not ready (exit 3), as every reader says it
        raise from_oserror(exc, str(p)) from None
    try:
        _check_file(p, os.fstat(fd))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise from_oserror(exc, str(p)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise _too_large(p)
    return data


def _check_file(p: Path, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(str(p), "is a directory", "pass the kmodkit.toml file or its project directory")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a special file")
        raise ConfigError(str(p), f"is {kind}, not a regular file", "pass the kmodkit.toml file itself")
    if st.st_size > MAX_BYTES:
        raise _too_large(p)


def _too_large(p: Path) -> ConfigError:
    return ConfigError(str(p), f"is larger than a manifest may be ({MAX_BYTES // 1024} KiB)",
                       "pass the project's kmodkit.toml")


#: strings and comments, which may hold anything; what remains is keys, values' syntax and brackets
_STRINGS_AND_COMMENTS = re.compile(
    r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*', re.S)
#: a key of more than MAX_DEPTH dotted parts (strings already replaced by one letter)
_DEEP_KEY = re.compile(r"(?<![\w.-])[\w-]*+(?:[ \t]*+\.[ \t]*+[\w-]*+){%d}" % MAX_DEPTH)  # possessive: linear
_BRACKETS = re.compile(r"[\[\]{}]")
#: an integer too long for int() (sys.get_int_max_str_digits(): 4300)
_LONG_NUMBER = re.compile(r"[0-9_]{4000,}")


def _parse_toml(text: str, path: Path) -> dict[str, Any]:
    _check_shape(text, path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        where = f"{path}:{m.group(1)}" if m else str(path)
        raise ConfigError(where, f"not valid TOML: {re.sub(r' [(]at line.*', '', str(exc))}",
                          "fix the syntax (see https://toml.io)") from None
    except RecursionError:
        raise ConfigError(str(path), "is nested too deeply", f"nest tables and arrays at most {MAX_DEPTH} deep") \
            from None
    except ValueError:  # int() refuses more than 4300 digits
        m = _LONG_NUMBER.search(text)
        where = f"{path}:{text.count(chr(10), 0, m.start()) + 1}" if m else str(path)
        raise ConfigError(where, "holds a number too long to read", "write numbers of at most 20 digits") from None


def _check_shape(text: str, path: Path) -> None:
    """Refuse, before tomllib sees them, keys and nesting that would take it minutes or the whole stack."""
    bare = _STRINGS_AND_COMMENTS.sub(lambda m: "" if m.group().startswith("#") else "s" + "\n" * m.group().count("\n"),
                                     text)
    m = _DEEP_KEY.search(bare)
    if m:
        raise ConfigError(f"{path}:{bare.count(chr(10), 0, m.start()) + 1}",
                          f"a dotted key has more than {MAX_DEPTH} parts", "write shorter keys")
    depth = 0
    for b in _BRACKETS.finditer(bare):
        depth = depth + 1 if b.group() in "[{" else max(0, depth - 1)
        if depth > MAX_DEPTH:
            raise ConfigError(f"{path}:{bare.count(chr(10), 0, b.start()) + 1}", "is nested too deeply",
                              f"nest tables and arrays at most {MAX_DEPTH} deep")


class Document:
    """A parsed kmodkit.toml with typed access; every error it raises points at FILE:LINE."""

    def __init__(self, lines: list[str], path: Path, doc: dict[str, Any]) -> None:
        #: the manifest's lines, to find where a key is written
        self.lines = lines
        #: the manifest file
        self.path = path
        #: the parsed document
        self.doc = doc

    def table(self, table: str) -> dict[str, Any]:
        """The table ``table`` (dotted), ``{}`` when absent; ConfigError when it is not a table."""
        node: Any = self.doc
        for part in table.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise self.error(table, "", "must be a table", f"write it as [{table}]")
        return dict(node)

    def string(self, table: str, key: str, default: str | None = None) -> str:
        """``[table] key``, a string; ``default`` when absent (ConfigError when absent and no default)."""
        value = self.table(table).get(key, default)
        if value is None:
            raise self.error(table, key, "is missing", f'add {key} = "..." under [{table}]')
        if not isinstance(value, str):
            raise self.error(table, key, f"must be a string, not {type(value).__name__}", f'quote it: {key} = "..."')
        return value

    def strings(self, table: str, key: str, default: list[str]) -> list[str]:
        """``[table] key``, a list of strings; ``default`` when absent."""
        value = self.table(table).get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(table, key, "must be a list of strings", f'write {key} = ["..."]')
        return value

    def error(self, table: str, key: str, problem: str, fix: str | None = None,
              entry: int | None = None) -> ConfigError:
        """A ConfigError about ``[table] key`` (of the ``entry``-th ``[[...]]`` table), its subject FILE:LINE."""
        dotted = f"{table}.{key}" if key else table
        return ConfigError(f"{self.path}:{self.line_of(table, key, entry)}", f"{dotted}: {problem}", fix)

    def line_of(self, table: str, key: str, entry: int | None = None) -> int:
        """Line of ``key`` in ``[table]`` (or of the table's header, or 1 when neither is written).

        ``entry``: look only in the ``entry``-th (from 0) ``[[T]]`` table of the array T that ``table`` starts with.
        """
        current = ""
        header_line = 0
        array = table.split(".")[0]
        count, inside = -1, entry is None
        for i, raw in enumerate(self.lines, 1):
            line = raw.strip()
            m = re.match(r"^\[(\[?)\s*([^\]]+?)\s*\]", line)
            if m:
                current = m.group(2).replace('"', "").replace(" ", "")
                if entry is not None and m.group(1) and current == array:
                    count += 1
                    inside = count == entry
                if inside and (current == table or not key and current.startswith(f"{table}.")) and not header_line:
                    header_line = i  # a table's own header, else (for the table itself) its first sub-table's
                continue
            if inside and current == table and key and re.match(rf'^"?{re.escape(key)}"?\s*=', line):
                return i
        # dotted keys under a parent table: [parameters] repeat = {...}
        parent, _, child = table.rpartition(".")
        if parent and not header_line:
            return self.line_of(parent, child, entry)
        return header_line or 1
