"""Module.symvers of a kernel's headers: which exported symbols are GPL-only."""

from __future__ import annotations

from pathlib import Path

from kmodkit.errors import from_oserror


def gpl_only_symbols(path: Path) -> frozenset[str]:
    """Symbols exported with EXPORT_SYMBOL_GPL in a Module.symvers file.

    Lines are ``CRC<TAB>SYMBOL<TAB>MODULE<TAB>EXPORT_TYPE[<TAB>NAMESPACE]``.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise from_oserror(exc, str(path)) from None
    out = set()
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 4 and parts[3] == "EXPORT_SYMBOL_GPL":
            out.add(parts[1])
    return frozenset(out)
