"""``kmodkit install`` / ``uninstall`` / ``status --built``: a project's built modules in a kernel's tree.

Install copies out/KVER/*.ko into ROOT/lib/modules/KVER/LOCATION/ (``[install] location``, "updates" as
DKMS's), rewrites that kernel's index with kmodkit's own :class:`kmodkit.index.indexer.Indexer`, writes
ROOT/etc/modules-load.d/kmodkit-NAME.conf (modules with ``load_at_boot``) and ROOT/etc/modprobe.d/
kmodkit-NAME.conf (``options``), and records every file it wrote, with its SHA-256, in the state file
ROOT/var/lib/kmodkit/installed.json.  Uninstall removes exactly the recorded files that are still what
install wrote, re-indexes, and drops the record; the state also lists the projects the kernel hook builds
(:mod:`kmodkit.kbuild.hook`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodkit.errors import ConfigError, ItemError
from kmodkit.fileio import write_atomic
from kmodkit.kbuild.manifest import Manifest
from kmodkit.sysroot import HOST, Root

#: the state file, below the root
STATE = "/var/lib/kmodkit/installed.json"
STATE_FORMAT = 1


@dataclass(frozen=True)
class KernelInstall:
    """What installing (or uninstalling) a project did for one kernel."""

    kernel: str  #: the kernel release
    files: tuple[Path, ...]  #: the files written (or removed), below the root
    error: ItemError | None = None  #: why nothing was done for this kernel, None when it went well
    kept: tuple[Path, ...] = ()  #: uninstall: recorded files left alone because they changed since

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object."""
        return {"kernel": self.kernel, "ok": self.error is None, "files": [str(f) for f in self.files],
                "kept": [str(f) for f in self.kept], "error": self.error.error_json() if self.error else None}


def state_path(root: Root) -> Path:
    """The state file below ``root``."""
    return root.join(STATE)


def read_state(root: Root = HOST) -> dict[str, Any]:
    """The state below ``root``: ``{"projects": {PROJECT: {"name", "kernels": {KVER: {FILE: SHA256}}, "etc"}}}``.

    An absent state is empty; one that is not kmodkit's JSON is a ConfigError (it is never overwritten).
    """
    path = state_path(root)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {"format": STATE_FORMAT, "projects": {}}
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), f"is not kmodkit's install state ({exc})",
                          "move it away; kmodkit then forgets what it installed there") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("projects"), dict):
        raise ConfigError(str(path), "is not kmodkit's install state", "move it away")
    return doc


def _write_state(root: Root, doc: dict[str, Any]) -> None:
    path = state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), 0o644)


def _machine(root: Root, path: Path) -> str:
    """``path`` (below ``root``) as the machine names it: the state holds these, so a chroot reads it alike."""
    return "/" + str(path.relative_to(root.path)) if not root.is_host else str(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built_modules(manifest: Manifest, release: str) -> list[Path] | ItemError:
    """The project's modules built for ``release`` (out/KVER/NAME.ko, the manifest's order), or why there are none.

    ``install`` and ``package deb`` take their modules from here; the ItemError names the fix (the build).
    """
    out = manifest.project / "out" / release
    mods = [out / f"{m.name}.ko" for m in manifest.modules]
    missing = [m for m in mods if not m.is_file()]
    if missing:
        import shlex

        return ItemError(str(missing[0]), f"is not built for {release}",
                         f"kmodkit build {shlex.quote(str(manifest.project))} -k {release}")
    return mods


def module_dir(manifest: Manifest, release: str) -> str:
    """Where the project's modules go on a machine: /lib/modules/RELEASE/LOCATION (``[install] location``)."""
    return f"/lib/modules/{release}/{manifest.install_location}"


def etc_files(manifest: Manifest, comment: str) -> dict[str, bytes]:
    """The modules-load.d and modprobe.d files the manifest asks for (machine path -> content, ``comment`` the
    first line's text); empty when it asks for none."""
    files: dict[str, bytes] = {}
    head = f"# {comment}\n"
    name = f"kmodkit-{manifest.name}.conf"
    boot = [m.name for m in manifest.modules if m.load_at_boot]
    if boot:
        files[f"/etc/modules-load.d/{name}"] = (head + "\n".join(boot) + "\n").encode()
    options = [f"options {m.name} {m.options}" for m in manifest.modules if m.options]
    if options:
        files[f"/etc/modprobe.d/{name}"] = (head + "\n".join(options) + "\n").encode()
    return files


def reindex(root: Root, release: str) -> None:
    """Rewrite the index of ROOT/lib/modules/RELEASE with kmodkit's Indexer (when anything changed)."""
    from kmodkit.index.indexer import Indexer

    # no cache beside the index: uninstall leaves the tree exactly as it found it
    ix = Indexer(release, None if root.is_host else str(root.path), use_cache=False)
    result, files = ix.rebuild()
    ix.write(result, files)


@dataclass
class Install:
    """Install (or, with :meth:`uninstall`, remove) a project's built modules for some kernels of a root.

    ``kernels`` empty: every kernel the project is built for (out/KVER/) that the root has installed.
    """

    project: Path
    kernels: list[str]
    root: Root = HOST

    def __post_init__(self) -> None:
        self.project = Path(self.project).resolve()
        self.manifest = Manifest.load(self.project)
        self.key = str(self.project)
        if not self.kernels:
            out = self.project / "out"
            self.kernels = sorted(p.name for p in out.iterdir() if p.is_dir()
                                  and self.root.join("/lib/modules").joinpath(p.name).is_dir()) \
                if out.is_dir() else []
        self.kernels = list(dict.fromkeys(self.kernels))

    def _etc_files(self) -> dict[Path, bytes]:
        """The modules-load.d and modprobe.d files the manifest asks for (name -> content); none when it asks nothing."""
        comment = f"written by kmodkit install for {self.project}; kmodkit uninstall removes it"
        return {self.root.join(p): data for p, data in etc_files(self.manifest, comment).items()}

    def install(self) -> list[KernelInstall]:
        """Install for every kernel (each reported; a failed one does not stop the others) and record it."""
        doc = read_state(self.root)
        entry = doc["projects"].setdefault(self.key, {"name": self.manifest.name, "kernels": {}, "etc": {}})
        results = []
        for release in self.kernels:
            moddir = self.root.join("/lib/modules") / release
            if not moddir.is_dir():
                results.append(KernelInstall(release, (), ItemError(str(moddir), "is not an installed kernel",
                                                                    "install the kernel first")))
                continue
            built = built_modules(self.manifest, release)
            if isinstance(built, ItemError):
                results.append(KernelInstall(release, (), built))
                continue
            dest = self.root.join(module_dir(self.manifest, release))
            dest.mkdir(parents=True, exist_ok=True)
            written: dict[str, str] = {}
            for ko in built:
                target = dest / ko.name
                data = ko.read_bytes()
                write_atomic(target, data, 0o644)
                written[_machine(self.root, target)] = hashlib.sha256(data).hexdigest()
            # files an earlier install put there that this build no longer has
            for old in set(entry["kernels"].get(release, {})) - set(written):
                _remove_if_ours(self.root.join(old), entry["kernels"][release][old])
            entry["kernels"][release] = written
            reindex(self.root, release)
            results.append(KernelInstall(release, tuple(self.root.join(p) for p in written)))
        etc = self._etc_files()
        for path, data in etc.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, 0o644)
        entry["etc"] = {_machine(self.root, p): hashlib.sha256(d).hexdigest() for p, d in etc.items()}
        entry["registered"] = True  # the kernel hook builds and installs it for every new kernel
        _write_state(self.root, doc)
        return results

    def uninstall(self, forget: bool = True) -> list[KernelInstall]:
        """Remove what install recorded for every kernel (files changed since are kept and reported).

        Once no kernel has it, the project is forgotten (its /etc files removed, the hook no longer builds it);
        ``forget`` false keeps it registered: the kernel hook removing one kernel's modules does so.
        """
        doc = read_state(self.root)
        entry = doc["projects"].get(self.key)
        kernels = self.kernels if self.kernels else list((entry or {}).get("kernels", {}))
        results = []
        for release in kernels:
            files = (entry or {}).get("kernels", {}).get(release)
            if files is None:
                results.append(KernelInstall(release, (), ItemError(
                    str(self.project), f"is not installed for {release} below {self.root}")))
                continue
            removed: list[Path] = []
            kept: list[Path] = []
            for path, sha in files.items():
                (removed if _remove_if_ours(self.root.join(path), sha) else kept).append(self.root.join(path))
            moddir = self.root.join("/lib/modules") / release
            location = self.root.join(module_dir(self.manifest, release))
            while location != moddir and location.is_dir() and not any(location.iterdir()):
                location.rmdir()
                location = location.parent
            if moddir.is_dir():
                reindex(self.root, release)
            assert entry is not None
            del entry["kernels"][release]
            results.append(KernelInstall(release, tuple(removed), kept=tuple(kept)))
        if forget and entry is not None and not entry["kernels"]:
            for path, sha in entry.get("etc", {}).items():
                _remove_if_ours(self.root.join(path), sha)
            del doc["projects"][self.key]
        _write_state(self.root, doc)
        return results


def _remove_if_ours(path: Path, sha: str) -> bool:
    """Remove ``path`` when it still holds what kmodkit wrote (or is gone); False when it changed since."""
    try:
        if _sha256(path) != sha:
            return False
        path.unlink()
    except FileNotFoundError:
        pass
    return True


@dataclass(frozen=True)
class BuiltStatus:
    """One module of a project for one kernel: dkms status's view."""

    kernel: str  #: the kernel release
    module: str  #: the module's name
    version: str  #: the manifest's version
    built: bool  #: out/KVER/NAME.ko exists
    signed: bool  #: it carries a signature
    installed: Path | None  #: where install put it below the root, None when not installed
    current: bool  #: the installed file is the built one (False when not installed or different)

    def to_json(self) -> dict[str, Any]:
        """The status as a JSON object."""
        return {"kernel": self.kernel, "module": self.module, "version": self.version, "built": self.built,
                "signed": self.signed, "installed": str(self.installed) if self.installed else None,
                "current": self.current}


def built_status(project: Path, root: Root = HOST) -> list[BuiltStatus]:
    """Per kernel (built for, or installed with this project, or installed in the root) and module: what is there."""
    from kmodkit.errors import ModuleFormatError
    from kmodkit.kbuild.kernels import installed_kernels
    from kmodkit.modfile.signature import find_trailer

    project = Path(project).resolve()
    manifest = Manifest.load(project)
    entry = read_state(root)["projects"].get(str(project), {})
    out = project / "out"
    releases = {k.release for k in installed_kernels(root)} | set(entry.get("kernels", {}))
    if out.is_dir():
        releases |= {p.name for p in out.iterdir() if p.is_dir()}
    rows = []
    for release in sorted(releases):
        installed = entry.get("kernels", {}).get(release, {})
        for m in manifest.modules:
            ko = out / release / f"{m.name}.ko"
            try:
                data = ko.read_bytes()
                signed = find_trailer(data, str(ko)) is not None
            except (OSError, ModuleFormatError):
                data, signed = None, False
            where = next((root.join(p) for p in installed if Path(p).name == ko.name), None)
            current = where is not None and data is not None and where.is_file() and \
                hashlib.sha256(data).hexdigest() == _sha256(where)
            rows.append(BuiltStatus(release, m.name, m.version, data is not None, signed,
                                    where if where is not None and where.is_file() else None, current))
    return rows
