"""``kmodkit package deb``: a project's built modules as Debian binary packages.

One package per target kernel, ``NAME-modules-KVER`` (the name ``dkms mkbmdeb`` gives its packages), or with
``one`` a single ``NAME-modules`` holding every kernel's modules.  A package holds what ``kmodkit install``
would write (the same homes: :func:`kmodkit.kbuild.install.built_modules`, :func:`~kmodkit.kbuild.install.
module_dir`, :func:`~kmodkit.kbuild.install.etc_files`): each module under /lib/modules/KVER/LOCATION/, the
modules-load.d and modprobe.d files as conffiles, and maintainer scripts that run ``depmod -a KVER`` for each
of its kernels that is installed.  Per-kernel packages cannot all own the same /etc files (dpkg refuses a
file two packages ship), so those go into one more package, ``NAME-modules-common``, the others depend on.

A per-kernel package depends on its kernel's image package (``linux-image-KVER``, signed or unsigned, from
``debian.toml``): the module is useless without that exact kernel, apt then keeps the kernel while the module
is installed, and removing the kernel removes its modules instead of leaving an orphaned updates/ directory.
A single package for several kernels depends on any one of them.

The archive is written by the distro's own ``dpkg-deb --build --root-owner-group`` rather than by hand: the
.deb format's details (member order, tar flavour, ownership, control.tar layout) are dpkg's to decide, and
every Debian system has it (dpkg is Essential).  Signed modules: a module the build signed ships as it is;
when the manifest names a key and the module is unsigned, the package's copy is signed by the build's own
signing hook (:func:`kmodkit.kbuild.signhook.sign_built_module`).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import cache
from pathlib import Path
from typing import Any

from kmodkit.errors import EnvironmentNotReady, ItemError, UserError
from kmodkit.kbuild.install import built_modules, etc_files, module_dir
from kmodkit.kbuild.manifest import Manifest

log = logging.getLogger(__name__)

#: the upstream part of a Debian version (deb-version(7)); a revision is added after it
_UPSTREAM_VERSION = re.compile(r"[0-9][A-Za-z0-9.+~-]*")
#: a Debian package name (Debian policy 5.6.1)
_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
#: the Debian revision of every package kmodkit writes: the first packaging of the manifest's version
REVISION = "1"
#: the Maintainer field when none is named (lintian refuses root@ as a maintainer)
DEFAULT_MAINTAINER = "kmodkit <kmodkit@localhost.invalid>"


@dataclass(frozen=True)
class DebPackage:
    """One package ``package deb`` wrote (or could not write)."""

    package: str  #: the package's name
    version: str  #: its version (the manifest's version and kmodkit's revision)
    kernels: tuple[str, ...]  #: the kernels it holds modules for (empty for the -common package)
    path: Path | None  #: the .deb written, None when it failed
    files: tuple[str, ...] = ()  #: what it installs, as the machine names the files
    error: ItemError | None = None  #: why it was not written, None when it was

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object."""
        return {"package": self.package, "version": self.version, "kernels": list(self.kernels),
                "path": str(self.path) if self.path else None, "ok": self.error is None, "files": list(self.files),
                "error": self.error.to_json() if self.error else None}


@dataclass(frozen=True)
class _Spec:
    """What goes into one package."""

    name: str
    kernels: tuple[str, ...]
    depends: str
    synopsis: str
    files: dict[str, bytes]  # machine path -> content
    conffiles: tuple[str, ...] = ()
    arch: str = "all"


@cache
def _table() -> dict[str, Any]:
    from kmodkit.kbuild.platform import _load

    return _load("debian.toml")


def debian_name(name: str) -> str:
    """A module (C identifier) name as a Debian package name part: lower case, ``_`` made ``-``."""
    return re.sub(r"[^a-z0-9+.-]", "-", name.lower()).strip("-+.")


def kernel_dependency(kernels: tuple[str, ...]) -> str:
    """The Depends alternatives naming the image packages of ``kernels`` (any one of them will do)."""
    return " | ".join(t.format(kver=k) for k in kernels for t in _table()["kernel_packages"])


@dataclass
class DebBuild:
    """Build .deb packages of a project's built modules (out/KVER/) into ``out``.

    ``kernels`` empty: ``all_installed`` takes every kernel installed on this machine, else every kernel the
    project is built for.  Raises UserError when the project's name or version cannot name a Debian package.
    """

    project: Path
    kernels: list[str] = field(default_factory=list)
    all_installed: bool = False
    one: bool = False
    out: Path = Path(".")
    maintainer: str = DEFAULT_MAINTAINER

    def __post_init__(self) -> None:
        from kmodkit.kbuild.kernels import installed_kernels, release_problem

        self.project = Path(self.project).resolve()
        self.manifest = Manifest.load(self.project)
        if not self.kernels:
            if self.all_installed:
                self.kernels = [k.release for k in installed_kernels()]
            else:
                out = self.project / "out"
                self.kernels = sorted(p.name for p in out.iterdir() if p.is_dir()) if out.is_dir() else []
        self.kernels = list(dict.fromkeys(self.kernels))
        for k in self.kernels:
            problem = release_problem(k)
            if problem:
                raise UserError(k, problem)
        self.base = debian_name(self.manifest.name)
        if len(self.base) < 2:
            raise UserError(f"{self.manifest.path}: [module] name", f"{self.manifest.name!r} makes no Debian "
                            "package name (two or more letters or digits are needed)")
        if not _UPSTREAM_VERSION.fullmatch(self.manifest.version):
            raise UserError(f"{self.manifest.path}: [module] version",
                            f"{self.manifest.version!r} is not a Debian version",
                            "start it with a digit and use only letters, digits and . + ~ -")
        if not re.fullmatch(r"[^<>\n]+ <[^<>@\s]+@[^<>@\s]+>", self.maintainer):
            raise UserError(f"maintainer {self.maintainer!r}", "is not 'Full Name <address>'",
                            "name one as --maintainer 'Jane Doe <jane@example.com>'")
        self.version = f"{self.manifest.version}-{REVISION}"

    def run(self) -> list[DebPackage]:
        """Write the packages; each failed one is reported in its result and the others go on.

        With ``one``, a kernel without a build fails the whole package (each such kernel is reported).
        Raises EnvironmentNotReady when dpkg-deb is missing.
        """
        if shutil.which("dpkg-deb") is None:
            raise EnvironmentNotReady("dpkg-deb", "is not installed", "apt-get install dpkg")
        self.out = Path(self.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        etc = etc_files(self.manifest, f"shipped by a package of {self.base} (kmodkit package deb); "
                                       "dpkg removes it on purge")
        results: list[DebPackage] = []
        if self.one:
            built = {k: built_modules(self.manifest, k) for k in self.kernels}
            errors = [b for b in built.values() if isinstance(b, ItemError)]
            name = f"{self.base}-modules"
            if errors:
                return [DebPackage(name, self.version, tuple(self.kernels), None, (), e) for e in errors]
            spec = _Spec(name, tuple(self.kernels), kernel_dependency(tuple(self.kernels)),
                         f"{self.base} kernel modules for {len(self.kernels)} Linux kernels", dict(etc), tuple(etc))
            return [self._package(spec, {k: b for k, b in built.items() if not isinstance(b, ItemError)})]
        depends_common = ""
        if etc:
            common = _Spec(f"{self.base}-modules-common", (), "", f"{self.base} kernel modules: configuration",
                           dict(etc), tuple(etc))
            results.append(self._package(common, {}))
            depends_common = f", {common.name} (= {self.version})"
        for k in self.kernels:
            name = f"{self.base}-modules-{debian_name(k)}"
            mods = built_modules(self.manifest, k)
            if isinstance(mods, ItemError):
                results.append(DebPackage(name, self.version, (k,), None, (), mods))
                continue
            spec = _Spec(name, (k,), kernel_dependency((k,)) + depends_common,
                         f"{self.base} kernel modules for Linux {k}", {})
            results.append(self._package(spec, {k: mods}))
        return results

    def _package(self, spec: _Spec, built: dict[str, list[Path]]) -> DebPackage:
        """Stage ``spec`` with the modules of ``built`` (kernel -> files) and build its .deb."""
        if not _PACKAGE_NAME.fullmatch(spec.name):
            return DebPackage(spec.name, self.version, spec.kernels, None, (),
                              ItemError(spec.name, "is not a Debian package name",
                                        "name the kernel with lower-case letters, digits and . + -"))
        files = dict(spec.files)
        arches: dict[str, Path] = {}
        for kver, mods in built.items():
            for ko in mods:
                data = self._module_bytes(ko)
                if isinstance(data, ItemError):
                    return DebPackage(spec.name, self.version, spec.kernels, None, (), data)
                arch = _architecture(data, ko)
                if isinstance(arch, ItemError):
                    return DebPackage(spec.name, self.version, spec.kernels, None, (), arch)
                arches.setdefault(arch, ko)
                files[f"{module_dir(self.manifest, kver)}/{ko.name}"] = data
        if len(arches) > 1:
            (a, first), (b, other) = list(arches.items())[:2]
            return DebPackage(spec.name, self.version, spec.kernels, None, (), ItemError(
                str(other), f"is built for {b}, {first} for {a}: one package holds one architecture",
                "package each architecture's kernels on their own (-k)"))
        arch = next(iter(arches), spec.arch)
        with tempfile.TemporaryDirectory(prefix="kmodkit-deb-") as stage:
            _stage(Path(stage), spec, files, arch, self)
            dest = self.out / f"{spec.name}_{self.version}_{arch}.deb"
            error = _dpkg_deb(Path(stage), dest, _epoch(self))
        if error is not None:
            return DebPackage(spec.name, self.version, spec.kernels, None, (), error)
        log.info("wrote %s", dest)
        return DebPackage(spec.name, self.version, spec.kernels, dest, tuple(sorted(files)))

    def _module_bytes(self, ko: Path) -> bytes | ItemError:
        """The module as the package ships it: signed with the manifest's key when it names one."""
        from kmodkit.kbuild.products import is_signed

        data = ko.read_bytes()
        if self.manifest.signing is None or is_signed(ko):
            return data
        from kmodkit.kbuild.signhook import SignState, sign_built_module

        with tempfile.TemporaryDirectory(prefix="kmodkit-deb-sign-") as d:
            copy = Path(d) / ko.name
            copy.write_bytes(data)
            outcome = sign_built_module(copy, self.manifest.signing, self.project)
            if outcome.state is not SignState.SIGNED:
                return ItemError(str(ko), f"is unsigned and cannot be signed with [signing] key: {outcome.detail}",
                                 f"sign it with 'kmodkit sign {ko}' and package again")
            return copy.read_bytes()


def _architecture(data: bytes, path: Path) -> str | ItemError:
    """The Debian architecture of a module's bytes (``debian.toml``), or why it has none."""
    from kmodkit.errors import KmodkitError
    from kmodkit.modfile.module import ModuleFile

    try:
        with ModuleFile.from_bytes(data, str(path)) as mod:
            elf = mod.elf
            key = f"{elf.machine_name}/{64 if elf.is64 else 32}/{'little' if elf.little else 'big'}"
    except KmodkitError as exc:
        return ItemError.from_error(str(path), exc)
    arch = _table()["architectures"].get(key)
    if arch is None:
        return ItemError(str(path), f"is built for {key}, which no Debian architecture in kmodkit's table names")
    return str(arch)


def _stage(stage: Path, spec: _Spec, files: dict[str, bytes], arch: str, job: DebBuild) -> None:
    """Write the package's tree (data files, /usr/share/doc, DEBIAN/) below ``stage``."""
    doc = f"/usr/share/doc/{spec.name}"
    files = dict(files)
    files[f"{doc}/copyright"] = _copyright(job).encode()
    files[f"{doc}/changelog.Debian.gz"] = gzip.compress(_changelog(spec, job).encode(), 9, mtime=0)
    epoch = _epoch(job)
    stage.chmod(0o755)
    sums = []
    dirs: set[str] = set()
    for machine, data in sorted(files.items()):
        rel = machine.lstrip("/")
        path = stage / rel
        for parent in Path(rel).parents:
            if str(parent) != ".":
                dirs.add(str(parent))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o644)
        if machine not in spec.conffiles:
            sums.append(f"{hashlib.md5(data).hexdigest()}  {rel}\n")  # noqa: S324 - dpkg's md5sums format
    control = stage / "DEBIAN"
    control.mkdir()
    size = sum((len(d) + 1023) // 1024 for d in files.values()) + len(dirs)
    fields = [("Package", spec.name), ("Source", f"{job.base}-modules"), ("Version", job.version),
              ("Architecture", arch), ("Maintainer", job.maintainer), ("Installed-Size", str(size)),
              ("Depends", ", ".join(d for d in ("kmod", spec.depends) if d)), ("Section", "kernel"),
              ("Priority", "optional"), ("Description", _description(spec, job))]
    (control / "control").write_text("".join(f"{k}: {v}\n" for k, v in fields))
    (control / "md5sums").write_text("".join(sums))
    if spec.conffiles:
        (control / "conffiles").write_text("".join(f"{c}\n" for c in sorted(spec.conffiles)))
    if spec.kernels:
        for script, actions in (("postinst", "configure"), ("postrm", "remove|abort-install|abort-upgrade|disappear")):
            (control / script).write_text(_depmod_script(spec.kernels, actions))
            (control / script).chmod(0o755)
    for p in (stage, *stage.rglob("*")):
        if p.is_dir():
            p.chmod(0o755)
        os.utime(p, (epoch, epoch), follow_symlinks=False)


def _depmod_script(kernels: tuple[str, ...], actions: str) -> str:
    """A maintainer script that re-indexes each of ``kernels`` that is installed (its package ships
    modules.builtin), below $DPKG_ROOT when dpkg runs it outside a chroot (--force-script-chrootless)."""
    listed = " ".join(kernels)
    return f"""#!/bin/sh
# written by kmodkit package deb: re-index the kernels this package holds modules for
set -e
case "$1" in
{actions})
    for kver in {listed}; do
        [ -e "$DPKG_ROOT/lib/modules/$kver/modules.builtin" ] || continue
        if [ -n "$DPKG_ROOT" ]; then
            depmod -b "$DPKG_ROOT" -a "$kver"
        else
            depmod -a "$kver"
        fi
    done
    ;;
esac
exit 0
"""


def _description(spec: _Spec, job: DebBuild) -> str:
    """The Description field: the synopsis, then a body of lines within lintian's 80 columns."""
    import textwrap

    body = [f"{m.name}.ko: {m.description or f'the {m.name} module'}." for m in job.manifest.modules]
    if spec.kernels:
        body.append(f"Built by kmodkit from the project {job.base}, version {job.manifest.version}, for Linux "
                    f"{', '.join(spec.kernels)}.")
    else:
        body.append(f"The modules-load.d and modprobe.d files the {job.base} modules of every kernel share.")
    lines = [w for text in body for w in textwrap.wrap(text, 78)]
    return "\n ".join([spec.synopsis, *lines])


def _copyright(job: DebBuild) -> str:
    licence = job.manifest.license
    entry = _table()["licenses"].get(licence, {"name": licence or "unknown", "file": ""})
    author = _author(job) or f"the authors of {job.manifest.name}"
    year = time.gmtime(_epoch(job)).tm_year
    text = (f" On Debian systems, the complete text of this licence is in /usr/share/common-licenses/{entry['file']}."
            if entry["file"] else f" The module declares MODULE_LICENSE(\"{licence}\"); see its source.")
    return ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
            f"Upstream-Name: {job.manifest.name}\n"
            f"Comment: kernel modules built by kmodkit from {job.manifest.name} {job.manifest.version}\n\n"
            f"Files: *\nCopyright: {year} {author}\nLicense: {entry['name']}\n{text}\n")


def _author(job: DebBuild) -> str | None:
    """The first module's MODULE_AUTHOR from any of its builds, None when none says."""
    from kmodkit.errors import KmodkitError
    from kmodkit.modfile.module import ModuleFile

    for k in job.kernels:
        try:
            with ModuleFile.open(job.project / "out" / k / f"{job.manifest.name}.ko") as mod:
                author = mod.get("author")
        except (OSError, KmodkitError):
            continue
        if author:
            return author
    return None


def _changelog(spec: _Spec, job: DebBuild) -> str:
    import textwrap

    kernels = f" for Linux {', '.join(spec.kernels)}" if spec.kernels else ""
    entry = textwrap.fill(f"{job.manifest.name} {job.manifest.version} built by kmodkit{kernels}.", 79,
                          initial_indent="  * ", subsequent_indent="    ")
    return (f"{job.base}-modules ({job.version}) unstable; urgency=medium\n\n{entry}\n\n"
            f" -- {job.maintainer}  {formatdate(_epoch(job))}\n")


def _epoch(job: DebBuild) -> int:
    """The packages' one timestamp: SOURCE_DATE_EPOCH when set, else the newest build's (reproducible)."""
    env = os.environ.get("SOURCE_DATE_EPOCH", "")
    if env.isdigit():
        return int(env)
    times = [int(p.stat().st_mtime) for k in job.kernels for p in (job.project / "out" / k).glob("*.ko")]
    return max(times, default=int(job.manifest.path.stat().st_mtime))


def _dpkg_deb(stage: Path, dest: Path, epoch: int) -> ItemError | None:
    """``dpkg-deb --build`` the stage into ``dest`` through a temp name beside it, renamed when whole; the
    archive's own timestamps are ``epoch`` (dpkg-deb reads SOURCE_DATE_EPOCH), so a rebuild is byte-identical."""
    from kmodkit.fileio import fsync_dir, write_temp

    tmp = write_temp(str(dest), b"", 0o644)  # the temp name kmodkit's sweeps know, reserved
    try:
        done = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(stage), tmp],
                              capture_output=True, text=True,
                              env={**os.environ, "LC_ALL": "C", "SOURCE_DATE_EPOCH": str(epoch)})
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            return ItemError(str(dest), f"dpkg-deb failed: {lines[-1]}")
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
        tmp = ""
        fsync_dir(str(dest.parent))
    finally:
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return None
