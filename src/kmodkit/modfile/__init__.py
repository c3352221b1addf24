"""Reading kernel module files: ELF sections, ``.modinfo``, symbols, the signature trailer.

The entry point is :class:`ModuleFile`::

    with ModuleFile.open("/lib/modules/6.1.0-56-amd64/kernel/net/key/af_key.ko") as mod:
        mod.get("vermagic"), mod.depends, mod.pkcs7, mod.undefined_symbols()

The package imports nothing until a name is used, so a caller that needs only
one part (the index's scan reads through :mod:`~kmodkit.modfile.elf` and
:mod:`~kmodkit.modfile.opener`) does not pay for the rest.  The layers:
:mod:`~kmodkit.modfile.opener` (which files are opened, and how),
:mod:`~kmodkit.modfile.elf` (the one ELF reader, kmod's verdict),
:mod:`~kmodkit.modfile.signature` (the one trailer reader),
:mod:`~kmodkit.modfile.module` (:class:`ModuleFile`, built on those).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # "X as X": re-exported for the type checker; at run time __getattr__ imports them
    from kmodkit.modfile.compress import Compression as Compression
    from kmodkit.modfile.module import MODULE_SUFFIXES as MODULE_SUFFIXES
    from kmodkit.modfile.module import ExportedSymbol as ExportedSymbol
    from kmodkit.modfile.module import ModuleFile as ModuleFile
    from kmodkit.modfile.module import Parameter as Parameter
    from kmodkit.modfile.module import SymbolVersion as SymbolVersion
    from kmodkit.modfile.module import module_name as module_name
    from kmodkit.modfile.module import normalize_name as normalize_name

#: public name -> the module that defines it (imported on first use)
_HOMES = {
    "Compression": "kmodkit.modfile.compress",
    "MODULE_SUFFIXES": "kmodkit.modfile.module",
    "ExportedSymbol": "kmodkit.modfile.module",
    "ModuleFile": "kmodkit.modfile.module",
    "Parameter": "kmodkit.modfile.module",
    "SymbolVersion": "kmodkit.modfile.module",
    "module_name": "kmodkit.modfile.module",
    "normalize_name": "kmodkit.modfile.module",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
