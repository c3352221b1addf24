"""``Module.symvers``: every symbol a kernel and its in-tree modules export, with CRC, owner, licence, namespace.

Each line is ``CRC<TAB>SYMBOL<TAB>OWNER<TAB>EXPORT_TYPE[<TAB>NAMESPACE]`` (scripts/mod/modpost.c,
write_dump()).  The owner is ``vmlinux`` for the kernel's own exports, else the module's path
below the tree without ``.ko`` (``drivers/net/virtio_net``).  Read by hand: it is a tab-separated
text file of ~15,000 lines, parsed in one pass with :meth:`str.split`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kmodkit.errors import ConfigError, from_oserror
from kmodkit.modfile.modname import module_name

#: owner of the kernel's own exports in Module.symvers
VMLINUX = "vmlinux"


@dataclass(frozen=True)
class Export:
    """One exported symbol of a kernel or module."""

    name: str  #: the symbol
    crc: int | None  #: its modversions CRC, None when the kernel was built without CONFIG_MODVERSIONS
    owner: str  #: ``vmlinux``, or the exporting module's name (``virtio_net``)
    gpl_only: bool  #: exported with EXPORT_SYMBOL_GPL
    namespace: str  #: the symbol namespace (EXPORT_SYMBOL_NS*), "" when none

    @property
    def in_vmlinux(self) -> bool:
        """Whether the kernel itself exports it (no module has to be loaded first)."""
        return self.owner == VMLINUX


def parse_symvers(text: str, source: str = "Module.symvers") -> dict[str, Export]:
    """Symbol -> :class:`Export` of a Module.symvers text; a bad line raises :class:`ConfigError` naming it."""
    out: dict[str, Export] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) < 4:
            raise ConfigError(f"{source}:{number}", "not a Module.symvers line (CRC, symbol, owner, export type)")
        crc_text, name, owner, kind = parts[0], parts[1], parts[2], parts[3]
        try:
            crc = int(crc_text, 16)
        except ValueError:
            raise ConfigError(f"{source}:{number}", f"CRC {crc_text!r} is not a hexadecimal number") from None
        if owner != VMLINUX:
            owner = module_name(owner)
        out[name] = Export(name, crc, owner, kind.endswith("_GPL"), parts[4] if len(parts) > 4 else "")
    return out


def read_symvers(path: str) -> dict[str, Export]:
    """The exports listed in the Module.symvers at ``path``; raises :class:`NotFoundError` when absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        raise from_oserror(exc, path) from None
    return parse_symvers(text, path)
