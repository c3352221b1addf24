"""depmod.d configuration (kmod 30 tools/depmod.c), and the config-file rules kmod shares.

``search``, ``override``, ``external`` and ``exclude`` lines decide which
file wins when two carry the same module name.  kmod prepends every entry to
its lists, so the lists here are kept latest first, as kmod walks them.
Files are read with kmod's rules: sorted by file name, a name found in an
earlier directory hiding the same name later, backslash-newline joining lines.
"""

from __future__ import annotations

import logging
import os
import re
from typing import NamedTuple

log = logging.getLogger(__name__)

#: depmod.d directories, in kmod's order (a file name found earlier hides later ones)
DEPMOD_DIRS = ("/etc/depmod.d", "/run/depmod.d", "/usr/local/lib/depmod.d", "/lib/depmod.d")


# NamedTuples rather than dataclasses: ``kmodkit index`` loads this module on its
# quick path, where importing dataclasses (and inspect) would be a tenth of the run
class Search(NamedTuple):
    """One entry of depmod.d's ``search`` list."""

    path: str | None  #: a directory relative to the tree, None for ``built-in`` / ``external``
    builtin: bool = False  #: the ``built-in`` keyword (the tree itself)
    external: bool = False  #: the ``external`` keyword (every ``external`` directory)


class DepmodConfig(NamedTuple):
    """depmod.d settings for one kernel release."""

    searches: tuple[Search, ...] = ()  #: highest priority first
    overrides: tuple[str, ...] = ()  #: ``SUBDIR/MODNAME`` (no extension), latest first as kmod keeps them
    externals: tuple[str, ...] = ()  #: external directories, latest first
    excludes: tuple[str, ...] = ()  #: directory names never descended into
    problems: tuple[str, ...] = ()  #: ``FILE:LINE: message`` for lines that were ignored

    @classmethod
    def load(cls, kver: str, paths: list[str] | None = None) -> DepmodConfig:
        """Read depmod.d files from ``paths`` (default :data:`DEPMOD_DIRS`) for release ``kver``."""
        files = config_files(paths if paths is not None else list(DEPMOD_DIRS), (".conf",))
        searches: list[Search] = []
        overrides: list[str] = []
        externals: list[str] = []
        excludes: list[str] = []
        problems: list[str] = []
        for fname in files:
            lines = read_wrapped(fname)
            pem = pem_problem(fname, lines, "depmod.d")
            if pem is not None:
                problems.append(pem)
                continue
            for lineno, line in lines:
                words = line.split()
                if not words or line.startswith("#"):
                    continue
                cmd, args = words[0], words[1:]
                if cmd == "search":
                    for word in args:
                        searches.insert(0, Search(None, builtin=True) if word == "built-in" else
                                        Search(None, external=True) if word == "external" else Search(word))
                elif cmd == "override" and len(args) >= 3:
                    if kernel_matches(kver, args[1]):
                        overrides.insert(0, f"{args[2]}/{args[0]}")
                elif cmd == "external" and len(args) >= 2:
                    if kernel_matches(kver, args[0]):
                        externals.insert(0, args[1])
                elif cmd == "exclude":
                    excludes.extend(args)
                elif cmd in ("include", "make_map_files"):
                    continue
                else:
                    problems.append(f"{fname}:{lineno}: ignoring bad line starting with '{cmd}'")
        if not searches:
            searches.append(Search("updates"))
        # kmod prepends each entry: the list is walked latest first
        return cls(tuple(searches), tuple(overrides), tuple(externals), tuple(excludes), tuple(problems))


def kernel_matches(kver: str, pattern: str) -> bool:
    if pattern == "*":
        return True
    try:
        return re.search(pattern, kver) is not None
    except re.error:
        return False


def config_files(paths: list[str], suffixes: tuple[str, ...]) -> list[str]:
    """kmod's config file list: sorted by file name, the first directory naming a file wins."""
    chosen: dict[str, str] = {}
    for path in paths:
        try:
            if not os.path.isdir(path):
                if os.path.exists(path):
                    chosen.setdefault(os.path.basename(path), path)
                continue
            names = os.listdir(path)
        except OSError:
            continue
        for name in names:
            if name.startswith(".") or len(name) < 6 or not name.endswith(suffixes):
                continue
            full = os.path.join(path, name)
            if os.path.isdir(full):
                continue
            chosen.setdefault(name, full)
    return [chosen[name] for name in sorted(chosen, key=os.fsencode)]


def pem_problem(fname: str, lines: list[tuple[int, str]], kind: str) -> str | None:
    """The one problem to report for a config file that holds a PEM block (a key given by mistake), else None.

    Its lines are never echoed: a private key's base64 would end up on the terminal and in logs.
    """
    if any(line.startswith("-----BEGIN ") for _, line in lines):
        return f"{fname}: looks like a PEM private key/certificate, not a {kind} file; file ignored"
    return None


def read_wrapped(path: str) -> list[tuple[int, str]]:
    """Lines as kmod's ``freadline_wrapped`` returns them (backslash-newline joins), with line numbers."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError as exc:
        log.warning("%s: %s", path, exc.strerror)
        return []
    out: list[tuple[int, str]] = []
    lineno = 0
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        i += 1
        if c == "\n":
            lineno += 1
            out.append((lineno, "".join(buf)))
            buf = []
        elif c == "\\" and i < n:
            nxt = text[i]
            i += 1
            if nxt == "\n":
                lineno += 1
                continue
            buf.append(nxt)
        else:
            buf.append(c)
    if buf:
        lineno += 1
        out.append((lineno, "".join(buf)))
    return out
