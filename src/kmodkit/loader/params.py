"""Module parameters for a load: where they come from, how they are joined, and which ones a module declares.

A module gets, in this order (the kernel's parse_args applies each word in
turn, so a later value of the same parameter wins):

1. the defaults of its project's kmodkit.toml ``[parameters]`` (dropped when a
   later source names the same parameter);
2. the ``options`` lines of modprobe.d and ``MODULE.PARAM=VALUE`` words of the
   kernel command line, as modprobe passes them;
3. the ``PARAM=VALUE`` words given to ``kmodkit load`` (the asked module only).

Parameters from 1 and 3 are checked against what the module file declares
before anything loads; modprobe.d lines are passed unchecked, as modprobe does.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from kmodkit.errors import UserError
from kmodkit.kbuild.manifest import MANIFEST, Manifest
from kmodkit.modfile.module import MODULE_SUFFIXES, ModuleFile, normalize_name

#: how many directories above a module file kmodkit looks for its project's kmodkit.toml
#: (PROJECT/out/KVER/NAME.ko is two levels down)
MANIFEST_SEARCH_DEPTH = 3


def split_words(text: str) -> list[str]:
    """Parameter words of an options string, split at blanks outside double quotes (kernel/params.c next_arg).

    ``[]`` for an empty string.
    """
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for c in text:
        if c == '"':
            quoted = not quoted
        if c in " \t\n" and not quoted:
            if current:
                words.append("".join(current))
                current = []
            continue
        current.append(c)
    if current:
        words.append("".join(current))
    return words


def param_key(word: str) -> str:
    """The parameter name of a ``NAME=VALUE`` (or bare ``NAME``) word, ``-`` and ``_`` alike (kernel parameq)."""
    return normalize_name(word.partition("=")[0])


def join_params(defaults: Sequence[str], *later: Sequence[str]) -> tuple[str, ...]:
    """``defaults`` not overridden by a later source, then every later word in order."""
    named = {param_key(w) for words in later for w in words}
    out = [w for w in defaults if param_key(w) not in named]
    for words in later:
        out.extend(words)
    return tuple(out)


def manifest_defaults(manifest: Manifest, module: str | None = None) -> tuple[str, ...]:
    """``NAME=VALUE`` words for the parameters with a default of ``module`` (default: the manifest's first).

    ``()`` when none has a default or the manifest has no such module.
    """
    spec = manifest.modules[0] if module is None else manifest.module(module)
    out = []
    for p in spec.parameters if spec is not None else ():
        if p.default is None:
            continue
        if isinstance(p.default, bool):
            value = "1" if p.default else "0"
        else:
            value = str(p.default)
        if any(c in value for c in " \t\n") or not value:
            value = f'"{value}"'
        out.append(f"{p.name}={value}")
    return tuple(out)


def find_manifest(module_path: str, name: str) -> Manifest | None:
    """The kmodkit.toml of the project a module file was built in, None when there is none.

    Looks in the file's directory and up to :data:`MANIFEST_SEARCH_DEPTH`
    directories above it for a manifest whose module name is ``name``.
    Raises ConfigError when such a file is malformed.
    """
    here = Path(module_path).resolve().parent
    for d in [here, *here.parents][:MANIFEST_SEARCH_DEPTH]:
        candidate = d / MANIFEST
        if candidate.is_file():
            manifest = Manifest.load(candidate)
            if manifest.name == name:
                return manifest
    return None


def check_params(path: str, params: Iterable[str], origin: str = "") -> None:
    """Refuse parameters the module at ``path`` does not declare, listing the declared ones and close names.

    ``origin`` names where the words came from (e.g. a kmodkit.toml) for the
    message; returns quietly when every word is declared.
    """
    params = list(params)
    if not params:
        return
    with ModuleFile.open(path) as mf:
        declared = [p.name for p in mf.parameters]
        name = mf.name
    known = {normalize_name(d) for d in declared}
    where = f" (from {origin})" if origin else ""
    for item in params:
        key = item.partition("=")[0]
        if not key:
            raise UserError(item, f"is not a parameter{where}", "write NAME=VALUE")
        if normalize_name(key) in known:
            continue
        if not declared:
            raise UserError(f"{name}: {key}", f"unknown parameter{where}: the module declares no parameters",
                            "load it without parameters")
        close = difflib.get_close_matches(key, declared, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UserError(f"{name}: {key}", f"unknown parameter{where}",
                        f"{hint}the module declares: {', '.join(declared)}")


def is_module_path(target: str) -> bool:
    """Whether a load target names a file (it holds a ``/`` or ends like a module file) rather than a module."""
    return os.sep in target or target.endswith(MODULE_SUFFIXES)
