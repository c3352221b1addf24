"""A summary of many modules at once: how many, which licences, signers, hashes, compression."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kmodkit.errors import ItemError, KmodkitError
from kmodkit.modfile.module import ModuleFile


@dataclass
class TreeSummary:
    """Counts over a set of module files."""

    modules: int = 0  #: files read successfully
    bytes_on_disk: int = 0  #: their total size as stored
    bytes_decompressed: int = 0  #: their total size decompressed
    compression: Counter[str] = field(default_factory=Counter)  #: compression -> count
    licenses: Counter[str] = field(default_factory=Counter)  #: MODULE_LICENSE -> count
    signers: Counter[str] = field(default_factory=Counter)  #: signer (or "unsigned") -> count
    hashes: Counter[str] = field(default_factory=Counter)  #: signature hash -> count
    vermagics: Counter[str] = field(default_factory=Counter)  #: vermagic -> count
    with_parameters: int = 0  #: modules that declare parameters
    exporting: int = 0  #: modules that export symbols
    errors: list[ItemError] = field(default_factory=list)  #: the unreadable files, one record each

    def add(self, mod: ModuleFile) -> None:
        """Count one module; a module that fails to parse raises before anything is counted."""
        size = len(mod.data)
        licence = mod.get("license") or "(none)"
        vermagic = (mod.vermagic or "(none)").strip()
        signer = mod.pkcs7 if mod.is_signed else None
        params = bool(mod.parameters)
        exports = mod.elf.has_section("__ksymtab") or mod.elf.has_section("__ksymtab_gpl")
        self.modules += 1
        self.bytes_on_disk += mod.file_size
        self.bytes_decompressed += size
        self.compression[mod.compression.value] += 1
        self.licenses[licence] += 1
        self.vermagics[vermagic] += 1
        if signer is None:
            self.signers["unsigned" if not mod.is_signed else "(not PKCS#7)"] += 1
        else:
            self.signers[signer.issuer_cn or signer.key_identifier.hex()] += 1
            self.hashes[signer.hash_name or signer.digest_oid] += 1
        self.with_parameters += params
        self.exporting += exports

    def merge(self, other: TreeSummary) -> None:
        """Add another summary's counts to this one."""
        for name in ("modules", "bytes_on_disk", "bytes_decompressed", "with_parameters", "exporting"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("compression", "licenses", "signers", "hashes", "vermagics"):
            getattr(self, name).update(getattr(other, name))
        self.errors.extend(other.errors)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON data."""
        return {
            "modules": self.modules,
            "bytes_on_disk": self.bytes_on_disk,
            "bytes_decompressed": self.bytes_decompressed,
            "compression": dict(self.compression.most_common()),
            "licenses": dict(self.licenses.most_common()),
            "signers": dict(self.signers.most_common()),
            "hashes": dict(self.hashes.most_common()),
            "vermagics": dict(self.vermagics.most_common()),
            "with_parameters": self.with_parameters,
            "exporting": self.exporting,
            "errors": [e.to_json() for e in self.errors],
        }


def tree_modules(dirname: str) -> list[str]:
    """Every module file under ``dirname`` (a /lib/modules/KVER tree), sorted; ``[]`` when none."""
    from kmodkit.modfile.module import MODULE_SUFFIXES

    found = []
    for root, _dirs, files in os.walk(dirname):
        for f in files:
            if f.endswith(MODULE_SUFFIXES):
                found.append(os.path.join(root, f))
    found.sort()
    return found


def summarize(paths: list[str], jobs: int | None = None) -> TreeSummary:
    """Summarize the modules at ``paths``; unreadable files are listed in ``errors``, not raised."""
    from kmodkit._util.pool import Cost, chunks, fan_out, jobs_for

    jobs = jobs_for(len(paths), Cost.READ, jobs)
    if not jobs:
        return _summarize_chunk(paths)
    total = TreeSummary()
    for part in fan_out(_summarize_chunk, chunks(paths, jobs), jobs):
        total.merge(part)
    return total


def _summarize_chunk(paths: list[str]) -> TreeSummary:
    summary = TreeSummary()
    for p in paths:
        try:
            with ModuleFile.open(p) as mod:
                summary.add(mod)
        except KmodkitError as exc:
            summary.errors.append(ItemError.from_error(p, exc))
    return summary


def format_summary(s: TreeSummary, title: str) -> str:
    """The summary as a few aligned lines of text."""
    def top(c: Counter[str], n: int = 4) -> str:
        items = [f"{k} ({v})" for k, v in c.most_common(n)]
        rest = len(c) - n
        return ", ".join(items) + (f", +{rest} more" if rest > 0 else "")

    mib = 1024 * 1024
    lines = [
        title,
        f"  modules:      {s.modules} ({s.bytes_on_disk / mib:.1f} MiB on disk, "
        f"{s.bytes_decompressed / mib:.1f} MiB decompressed)",
        f"  compression:  {top(s.compression)}",
        f"  licences:     {top(s.licenses)}",
        f"  signers:      {top(s.signers)}",
        f"  hashes:       {top(s.hashes) or '-'}",
        f"  vermagic:     {top(s.vermagics, 2)}",
        f"  parameters:   {s.with_parameters} modules declare some; {s.exporting} export symbols",
    ]
    if s.errors:
        lines.append(f"  unreadable:   {len(s.errors)} (first: {s.errors[0].path}: {s.errors[0].message})")
    return "\n".join(lines) + "\n"
