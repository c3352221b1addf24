"""What changed in a kernel's exported ABI between two kernels, and which of a module's imports it breaks.

The ABI a module is built against is what ``load_module()`` compares: the exports (name, CRC, licence,
namespace) of vmlinux and the in-tree modules (Module.symvers), ``sizeof(struct module)`` and the version
magic.  :func:`abi_diff` compares two :class:`~kmodkit.check.target.TargetKernel` s; :func:`breaks` says for
one module built against the first which of its imports the second would refuse, and why.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kmodkit.check.symvers import Export
from kmodkit.check.target import TargetKernel


class Change(enum.Enum):
    """How one exported symbol changed."""

    REMOVED = "removed"  #: no longer exported
    ADDED = "added"  #: newly exported
    CRC = "crc"  #: its modversions CRC changed (its type or a type it uses changed)
    NOW_GPL = "now-gpl"  #: became EXPORT_SYMBOL_GPL
    NO_LONGER_GPL = "no-longer-gpl"  #: became plain EXPORT_SYMBOL
    NAMESPACE = "namespace"  #: moved to another symbol namespace
    OWNER = "owner"  #: exported by another module (or moved in or out of vmlinux)


@dataclass(frozen=True)
class SymbolChange:
    """One change of one exported symbol."""

    name: str  #: the symbol
    change: Change  #: what changed
    old: Export | None  #: as the first kernel exports it, None when added
    new: Export | None  #: as the second kernel exports it, None when removed

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        def side(e: Export | None) -> dict[str, object] | None:
            return None if e is None else {"crc": None if e.crc is None else f"0x{e.crc:08x}", "owner": e.owner,
                                           "gpl_only": e.gpl_only, "namespace": e.namespace}
        return {"name": self.name, "change": self.change.value, "old": side(self.old), "new": side(self.new)}


@dataclass(frozen=True)
class AbiDiff:
    """The differences between two kernels' module ABI."""

    old: str  #: the first kernel's release
    new: str  #: the second kernel's release
    vermagic: tuple[str, str] | None  #: (old, new) version magic past the release, None when equal
    struct_module: tuple[int | None, int | None] | None  #: (old, new) sizeof(struct module), None when equal
    module_layout: bool  #: whether module_layout's CRC differs (every module must be rebuilt)
    symbols: tuple[SymbolChange, ...]  #: every changed export, by name

    def count(self, change: Change) -> int:
        """How many symbols changed this way."""
        return sum(1 for s in self.symbols if s.change is change)

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        return {"old": self.old, "new": self.new,
                "vermagic": None if self.vermagic is None else list(self.vermagic),
                "struct_module": None if self.struct_module is None else list(self.struct_module),
                "module_layout_changed": self.module_layout,
                "counts": {c.value: self.count(c) for c in Change},
                "symbols": [s.to_json() for s in self.symbols]}


def _changes(name: str, a: Export | None, b: Export | None) -> list[SymbolChange]:
    if a is None:
        return [SymbolChange(name, Change.ADDED, None, b)]
    if b is None:
        return [SymbolChange(name, Change.REMOVED, a, None)]
    out = []
    if a.crc != b.crc:
        out.append(SymbolChange(name, Change.CRC, a, b))
    if a.gpl_only != b.gpl_only:
        out.append(SymbolChange(name, Change.NOW_GPL if b.gpl_only else Change.NO_LONGER_GPL, a, b))
    if a.namespace != b.namespace:
        out.append(SymbolChange(name, Change.NAMESPACE, a, b))
    if a.owner != b.owner:
        out.append(SymbolChange(name, Change.OWNER, a, b))
    return out


def _past_release(vermagic: str) -> str:
    i = vermagic.find(" ")
    return vermagic[i:] if i >= 0 else ""


def abi_diff(old: TargetKernel, new: TargetKernel) -> AbiDiff:
    """What differs between ``old``'s and ``new``'s module ABI."""
    a, b = old.exports, new.exports
    changes: list[SymbolChange] = []
    for name in sorted(a.keys() | b.keys()):
        changes.extend(_changes(name, a.get(name), b.get(name)))
    va, vb = _past_release(old.vermagic), _past_release(new.vermagic)
    sa, sb = old.struct_module_size, new.struct_module_size
    return AbiDiff(old.release, new.release, None if va == vb else (va, vb), None if sa == sb else (sa, sb),
                   old.module_layout_crc != new.module_layout_crc, tuple(changes))


@dataclass(frozen=True)
class BrokenImport:
    """An import of a module that the new kernel refuses."""

    symbol: str  #: the imported symbol
    change: Change  #: why
    detail: str  #: the kernel's view of it, in words

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        return {"symbol": self.symbol, "change": self.change.value, "detail": self.detail}


def breaks(diff: AbiDiff, imports: dict[str, int | None], gpl: bool, namespaces: frozenset[str]) -> list[BrokenImport]:
    """Which of a module's ``imports`` (symbol -> the CRC its __versions expects, None when it has none)
    ``diff``'s new kernel refuses; ``gpl``: whether the module's licence is GPL-compatible; ``namespaces``:
    what it imports with MODULE_IMPORT_NS."""
    by_name: dict[str, list[SymbolChange]] = {}
    for s in diff.symbols:
        by_name.setdefault(s.name, []).append(s)
    out = []
    for symbol in sorted(imports):
        for s in by_name.get(symbol, ()):
            if s.change is Change.REMOVED:
                out.append(BrokenImport(symbol, s.change, f"{diff.new} no longer exports it (Unknown symbol)"))
            elif s.change is Change.CRC and imports[symbol] is not None:
                out.append(BrokenImport(symbol, s.change, "its CRC changed (disagrees about version of symbol)"))
            elif s.change is Change.NOW_GPL and not gpl:
                out.append(BrokenImport(symbol, s.change, "now GPL-only, and the module's licence is not GPL"))
            elif s.change is Change.NAMESPACE and s.new is not None and s.new.namespace \
                    and s.new.namespace not in namespaces:
                out.append(BrokenImport(symbol, s.change, f"moved to namespace {s.new.namespace}, which the module "
                                                          "does not import"))
    return out


@dataclass(frozen=True)
class Imports:
    """What :func:`breaks` needs to know of one module file."""

    symbols: dict[str, int | None]  #: imported symbol -> the CRC its __versions expects, None when it has none
    gpl: bool  #: whether its licence is GPL-compatible
    namespaces: frozenset[str]  #: what it imports with MODULE_IMPORT_NS


def module_imports(path: str) -> Imports:
    """The imports of the module file ``path`` (raises the reader's errors for a file that is no module)."""
    from kmodkit.check.checker import GPL_COMPATIBLE
    from kmodkit.modfile.module import ModuleFile

    with ModuleFile.open(path) as mod:
        symbols: dict[str, int | None] = {n: None for n in mod.undefined_symbols()}
        symbols.update({v.name: v.crc for v in mod.versions() if v.name in symbols})
        gpl = (mod.get("license") or "unspecified") in GPL_COMPATIBLE
        return Imports(symbols, gpl, frozenset(mod.get_all("import_ns")))
