"""The module-name rule, in one place: what kmod and the kernel call a module, from a path or a name.

Kept free of imports so that every reader (the index's walk, the resolver, the CLI) can use it
without loading the rest of :mod:`kmodkit.modfile`.
"""

from __future__ import annotations

import os

#: file-name endings kmod takes for module files (shared/util.c: kmod_exts)
MODULE_SUFFIXES = (".ko", ".ko.gz", ".ko.xz", ".ko.zst")


def module_name(path: str) -> str:
    """The module name kmod derives from a path (libkmod's path_to_modname): the basename up to its first dot,
    ``-`` as ``_``."""
    return os.path.basename(path).split(".", 1)[0].replace("-", "_")


def normalize_name(name: str) -> str:
    """A module name with ``-`` written as ``_``, as the kernel and kmod compare names."""
    return name.replace("-", "_")
