"""Kernels fetched from the archive into kmodkit's cache: where they are, what each holds, removing them.

Layout below ``$XDG_CACHE_HOME/kmodkit/kernels``:

- ``packages/`` the downloaded package files, kept so that fetching again downloads nothing;
- ``roots/RELEASE/`` one directory per kernel that is a machine root (a sysroot): every package of the
  kernel unpacked into it as the package tool would install it (``usr/src/linux-headers-RELEASE``,
  ``lib/modules/RELEASE``, ``boot/vmlinuz-RELEASE``), with ``kmodkit-kernel.json`` saying what it holds.
  :class:`kmodkit.sysroot.Root` re-roots its absolute links (``lib/modules/RELEASE/build``), so the one
  seam :func:`kmodkit.kbuild.kernels.kernel` finds its headers as it finds an installed kernel's.

A kernel directory appears by one rename of a complete temp directory: a killed fetch leaves only a temp
(removed by the next fetch), never half a kernel.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kmodkit._util.cachedir import cache_dir

#: the file in a kernel's directory that says what it holds; a directory without it is no kernel
RECORD = "kmodkit-kernel.json"
RECORD_FORMAT = 1


def kernels_dir() -> Path:
    """``$XDG_CACHE_HOME/kmodkit/kernels`` (may not exist)."""
    return Path(cache_dir("kernels"))


def packages_dir() -> Path:
    """Where downloaded package files are kept (may not exist)."""
    return kernels_dir() / "packages"


def roots_dir() -> Path:
    """Where each fetched kernel's root directory is (may not exist)."""
    return kernels_dir() / "roots"


def root_of(release: str) -> Path | None:
    """The root directory of the fetched kernel ``release``; None when it was not fetched."""
    if not release or "/" in release or release.startswith("."):
        return None
    d = roots_dir() / release
    return d if (d / RECORD).is_file() else None


@dataclass(frozen=True)
class FetchedKernel:
    """One kernel in the cache, as its record says."""

    release: str  #: e.g. 6.1.0-55-cloud-amd64
    root: Path  #: the directory standing for the kernel's machine root
    headers: bool  #: whether its Kbuild tree is there (usr/src/linux-headers-RELEASE)
    image: bool  #: whether its image and modules are there (boot/vmlinuz-RELEASE, lib/modules/RELEASE/kernel)
    packages: tuple[tuple[str, str, str], ...]  #: (name, version, file name) of every package unpacked
    size: int  #: bytes its directory takes (as counted when it was fetched)
    family: str  #: the archive it came from (a key of archives.toml)

    def to_json(self) -> dict[str, object]:
        """The record as JSON-able data (what ``kmodkit-kernel.json`` and ``kernels list --json`` hold)."""
        return {"format": RECORD_FORMAT, "release": self.release, "root": str(self.root), "headers": self.headers,
                "image": self.image, "family": self.family, "size": self.size,
                "packages": [{"name": n, "version": v, "file": f} for n, v, f in self.packages]}


def read_record(root: Path) -> FetchedKernel | None:
    """The record of the kernel directory ``root``; None when it has none or it cannot be read."""
    try:
        data = json.loads((root / RECORD).read_text())
        return FetchedKernel(
            release=str(data["release"]), root=root, headers=bool(data["headers"]), image=bool(data["image"]),
            packages=tuple((str(p["name"]), str(p["version"]), str(p["file"])) for p in data["packages"]),
            size=int(data["size"]), family=str(data.get("family", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fetched_kernels() -> list[FetchedKernel]:
    """Every kernel in the cache, newest first; empty when none."""
    from kmodkit.kbuild.kernels import version_key

    try:
        names = [e.name for e in os.scandir(roots_dir()) if e.is_dir(follow_symlinks=False) and e.name[0] != "."]
    except OSError:
        return []
    found = [r for r in (read_record(roots_dir() / n) for n in names) if r is not None and r.release == r.root.name]
    return sorted(found, key=lambda k: version_key(k.release), reverse=True)


def tree_size(path: Path) -> int:
    """Bytes the files below ``path`` take (links counted as themselves); 0 when it is absent."""
    total = 0
    for dirpath, dirnames, names in os.walk(path):
        for n in names + dirnames:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


@dataclass(frozen=True)
class Pruned:
    """What ``prune`` removed."""

    releases: tuple[str, ...]  #: the kernels removed
    packages: tuple[str, ...]  #: the package files removed (those no kernel left in the cache uses)
    freed: int  #: bytes freed (leftovers of killed fetches included)


def prune(releases: list[str] | None) -> Pruned:
    """Remove the fetched kernels ``releases`` (all when None) and the package files no remaining kernel uses.

    Leftovers of killed fetches go too.  A release that is not in the cache raises NotFoundError before
    anything is removed.
    """
    from kmodkit.errors import NotFoundError

    present = {k.release: k for k in fetched_kernels()}
    chosen = list(present) if releases is None else list(dict.fromkeys(releases))
    for r in chosen:
        if r not in present:
            raise NotFoundError(r, "is not a fetched kernel", "kmodkit kernels list names the fetched ones")
    freed = 0
    temps = sweep_temps()
    for r in chosen:
        freed += tree_size(present[r].root)
        shutil.rmtree(present[r].root)
    remaining = [k for k in present.values() if k.release not in chosen]
    kept = {f for k in remaining for _, _, f in k.packages}
    # what a remaining kernel's warm fetch reads instead of asking the archive (fetch.py's plan files)
    kept |= {f"{k.release}.{what}.plan.json" for k in remaining for what in ("headers", "all")}
    removed = []
    try:
        entries = list(os.scandir(packages_dir()))
    except OSError:
        entries = []
    for e in entries:
        if e.is_file(follow_symlinks=False) and e.name not in kept and not e.name.startswith("."):
            try:
                size = e.stat(follow_symlinks=False).st_size
                os.unlink(e.path)
            except OSError:
                continue
            freed += size
            removed.append(e.name)
    return Pruned(tuple(chosen), tuple(sorted(removed)), freed + temps)


def sweep_temps() -> int:
    """Remove the temp directories and files killed fetches left in the cache; the bytes freed."""
    from kmodkit.fileio import is_stale_temp

    freed = 0
    for d in (roots_dir(), packages_dir()):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if not is_stale_temp(e.name):
                continue
            if e.is_dir(follow_symlinks=False):
                freed += tree_size(Path(e.path))
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                try:
                    freed += e.stat(follow_symlinks=False).st_size
                    os.unlink(e.path)
                except OSError:
                    pass
    return freed
