"""Glob matching as glibc's ``fnmatch(pattern, string, 0)`` does it, which kmod uses for aliases.

Python's :mod:`fnmatch` differs on three points kmod relies on: ``\\``
escapes the next character, ``[^...]`` negates like ``[!...]``, and POSIX
classes such as ``[[:digit:]]`` are understood.  Patterns are compiled once
and cached.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: POSIX character classes glibc accepts inside brackets
_CLASSES = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9", "graph": "\\x21-\\x7e", "lower": "a-z", "print": "\\x20-\\x7e",
    "punct": "!-/:-@\\[-`{-~", "space": " \\t\\n\\r\\f\\v", "upper": "A-Z", "xdigit": "0-9A-Fa-f",
}


@lru_cache(maxsize=65536)
def _compile(pattern: bytes) -> re.Pattern[bytes] | None:
    out = []
    i, n = 0, len(pattern)
    text = pattern.decode("latin-1")
    while i < n:
        c = text[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\":
            if i < n:
                out.append(re.escape(text[i]))
                i += 1
            else:
                out.append(re.escape("\\"))
        elif c == "[":
            j = i
            negate = j < n and text[j] in "!^"
            if negate:
                j += 1
            items = []
            first = True
            closed = False
            while j < n:
                ch = text[j]
                if ch == "]" and not first:
                    closed = True
                    j += 1
                    break
                first = False
                if ch == "[" and text.startswith("[:", j):
                    end = text.find(":]", j + 2)
                    name = text[j + 2:end] if end >= 0 else ""
                    if name in _CLASSES:
                        items.append(_CLASSES[name])
                        j = end + 2
                        continue
                if ch == "\\" and j + 1 < n:
                    j += 1
                    ch = text[j]
                if j + 2 < n and text[j + 1] == "-" and text[j + 2] != "]":
                    hi = text[j + 2]
                    items.append(f"{re.escape(ch)}-{re.escape(hi)}")
                    j += 3
                    continue
                items.append(re.escape(ch))
                j += 1
            if not closed:
                out.append(re.escape("["))  # an unclosed bracket matches itself
                continue
            out.append(f"[{'^' if negate else ''}{''.join(items)}]")
            i = j
        else:
            out.append(re.escape(c))
    try:
        return re.compile(("(?s:" + "".join(out) + r")\Z").encode("latin-1"))
    except re.error:
        return None


def fnmatch(pattern: bytes, string: bytes) -> bool:
    """Whether ``string`` matches the glob ``pattern`` (glibc rules, no flags)."""
    rx = _compile(pattern)
    return rx is not None and rx.match(string) is not None


def is_pattern(text: bytes) -> bool:
    """Whether ``text`` holds a glob character (``*``, ``?`` or ``[``)."""
    return b"*" in text or b"?" in text or b"[" in text


def alias_normalize(alias: str) -> str | None:
    """kmod's ``alias_normalize``: ``-`` as ``_`` outside brackets; None on an unmatched bracket.

    The one implementation: lookups, modprobe.d and the index's files (their
    bytes as latin-1) all use it.
    """
    if "[" not in alias and "]" not in alias:
        return alias.replace("-", "_")
    out = []
    i, n = 0, len(alias)
    while i < n:
        c = alias[i]
        if c == "]":
            return None
        if c == "[":
            end = alias.find("]", i)
            if end < 0:
                return None
            out.append(alias[i:end + 1])
            i = end + 1
            continue
        out.append("_" if c == "-" else c)
        i += 1
    return "".join(out)
