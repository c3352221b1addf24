"""Reading kernel module files: ELF sections, ``.modinfo``, symbols, the signature trailer.

The entry point is :class:`ModuleFile`::

    with ModuleFile.open("/lib/modules/6.1.0-56-amd64/kernel/net/key/af_key.ko") as mod:
        mod.get("vermagic"), mod.depends, mod.pkcs7, mod.undefined_symbols()
"""

from kmodkit.modfile.compress import Compression
from kmodkit.modfile.module import (
    MODULE_SUFFIXES,
    ExportedSymbol,
    ModuleFile,
    Parameter,
    SymbolVersion,
    module_name,
    normalize_name,
)

__all__ = [
    "MODULE_SUFFIXES",
    "Compression",
    "ExportedSymbol",
    "ModuleFile",
    "Parameter",
    "SymbolVersion",
    "module_name",
    "normalize_name",
]
