"""``kmodkit dkms export``: a DKMS source tree (``/usr/src/NAME-VERSION`` with dkms.conf) from a kmodkit project.

The tree is the project's input files (those ``kmodkit build`` hashes and copies) without kmodkit.toml and
without private keys, plus what DKMS's plain ``make -C KDIR M=DIR`` needs to build exactly what ``kmodkit
build`` builds: each module's include paths and cflags appended to the Kbuild of its directory as
``CFLAGS_obj.o`` lines (:func:`kmodkit.kbuild.products.flag_lines`, the lines ``kmodkit build`` adds to its
copy; include paths spelled from ``$(src)`` so the tree can move), and dkms.conf.

What the manifest becomes in dkms.conf: PACKAGE_NAME is the first module's name (the name the project goes
by everywhere), PACKAGE_VERSION its version (or ``--version``); one BUILT_MODULE_NAME[i] /
BUILT_MODULE_LOCATION[i] (the module's subdir) / DEST_MODULE_LOCATION[i] (``/`` + [install] location) per
module; MAKE[0] and CLEAN as DKMS's defaults; STRIP[i]="no" (kmodkit keeps debug information, which
``kmodkit oops`` decodes with); AUTOINSTALL="yes".  Signing: DKMS 3.0 signs every package with the one key
named in /etc/dkms/framework.conf (``mok_signing_key``, ``mok_certificate``; it ignores per-package keys in
dkms.conf) and the hash of the kernel's CONFIG_MODULE_SIG_HASH, so the manifest's [signing] key and cert
become :data:`SIGNING_CONF`, a framework.conf.d snippet in the tree to copy to /etc/dkms/framework.conf.d/.
Refused: ``depends`` on other projects and include paths outside the project (a DKMS package builds alone),
an install location outside /updates, /extra or /kernel (DKMS refuses it), versions with characters DKMS
cannot take in its paths and unquoted shell words.

The tree is written in a temp directory beside the target and renamed into place; an existing tree with the
same files is left as it is, one with different files is refused.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kmodkit.errors import UserError, from_oserror
from kmodkit.kbuild import inputs, products
from kmodkit.kbuild.dkmsconf import DKMS_CONF, parse_conf
from kmodkit.kbuild.manifest import MANIFEST, Manifest

#: where DKMS looks for source trees
DEFAULT_DEST = Path("/usr/src")
#: the framework.conf.d snippet an export with a signing key writes into the tree
SIGNING_CONF = "kmodkit-dkms-signing.conf"
#: what a PACKAGE_VERSION may hold: DKMS puts it in paths and unquoted shell words
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~_-]*$")
#: what an install location may hold (DKMS uses it unquoted too)
_LOCATION = re.compile(r"^[A-Za-z0-9._+/-]+$")
#: the first line of what the export appends to a Kbuild
MARK = "# --- added by kmodkit dkms export from kmodkit.toml (include, cflags) ---"
#: DKMS's own default make commands (dkms read_conf), written out so the file says what runs
_MAKE = 'make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build'


@dataclass(frozen=True)
class ExportResult:
    """What :meth:`DkmsExport.write` did."""

    tree: Path  #: DEST/NAME-VERSION
    name: str  #: PACKAGE_NAME
    version: str  #: PACKAGE_VERSION
    files: tuple[str, ...]  #: the tree's files, relative to it, sorted
    written: bool  #: False when an identical tree was there already
    signing_conf: Path | None  #: the framework.conf.d snippet, None without a signing key

    def to_json(self) -> dict[str, object]:
        """The result as a JSON object."""
        return {"tree": str(self.tree), "name": self.name, "version": self.version, "files": list(self.files),
                "state": "written" if self.written else "up to date",
                "signing_conf": str(self.signing_conf) if self.signing_conf else None}


@dataclass
class DkmsExport:
    """An export of ``project`` to ``dest``/NAME-VERSION; validated on construction."""

    project: Path
    dest: Path = DEFAULT_DEST
    version: str | None = None  #: PACKAGE_VERSION; None: the first module's version

    def __post_init__(self) -> None:
        self.project = Path(self.project).resolve()
        if not (self.project / MANIFEST).is_file():
            raise UserError(str(self.project), f"holds no {MANIFEST}: only a kmodkit project is exported",
                            "run 'kmodkit init' in it first, or name the project's directory")
        self.manifest = Manifest.load(self.project)
        m = self.manifest
        self.name = m.name
        self.package_version = self.version if self.version is not None else m.version
        if not _VERSION.match(self.package_version):
            subject = "--version" if self.version is not None else f"{m.path}: version"
            raise UserError(f"{subject} {self.package_version!r}", "DKMS cannot take this version: it goes into "
                            "paths and unquoted shell words", "use letters, digits and . + ~ _ - (e.g. 1.0.0), "
                            "with --version")
        if m.depends:
            raise UserError(f"{m.path}: [project] depends", "a DKMS package builds alone: DKMS's BUILD_DEPENDS "
                            "is advisory and never hands another package's Module.symvers to modpost",
                            "export the projects as one project with several [[module]]s")
        outside = products.include_paths(m, self.project)
        if outside:
            raise UserError(f"{m.path}: include {str(outside[0])!r}", "is outside the project, and a DKMS tree "
                            "holds only its own files", "copy those headers into the project and name them there")
        location = m.install_location
        if not _LOCATION.match(location) or location.split("/")[0] not in ("updates", "extra", "kernel"):
            raise UserError(f"{m.path}: [install] location {location!r}", "DKMS installs only below /updates, "
                            "/extra or /kernel (and into paths of plain characters)",
                            'use e.g. location = "updates"')
        if m.signing is not None and not m.signing.cert:
            raise UserError(f"{m.path}: [signing] cert", "is empty, and DKMS needs the certificate as a file",
                            "name the key's certificate in cert = ...")
        self.dest = Path(self.dest)
        self.tree = self.dest / f"{self.name}-{self.package_version}"

    # --- what the tree holds --------------------------------------------------------------

    def files(self) -> list[Path]:
        """The project's files the tree gets: its inputs without kmodkit.toml and private keys."""
        secret = set()
        if self.manifest.signing is not None and not self.manifest.signing.key.startswith("pkcs11:"):
            secret.add((self.project / self.manifest.signing.key).resolve())
        out = []
        for rel in inputs.project_files(self.project):
            path = self.project / rel
            if str(rel) == MANIFEST or path.resolve() in secret or _holds_private_key(path):
                continue
            out.append(rel)
        return out

    def dkms_conf(self) -> str:
        """The text of dkms.conf (checked by kmodkit's own dkms.conf reader before it is written)."""
        m = self.manifest
        lines = [f"# dkms.conf for {self.name} {self.package_version}, written by 'kmodkit dkms export' from "
                 f"{MANIFEST}.",
                 "# DKMS sources this file with bash; 'kmodkit build' reads it as data (README.md, DKMS).",
                 f"PACKAGE_NAME={_q(self.name)}",
                 f"PACKAGE_VERSION={_q(self.package_version)}",
                 f'MAKE[0]="{_MAKE} modules"',
                 f'CLEAN="{_MAKE} clean"']
        for i, mod in enumerate(m.modules):
            lines.append(f"BUILT_MODULE_NAME[{i}]={_q(mod.name)}")
            if mod.subdir:
                lines.append(f"BUILT_MODULE_LOCATION[{i}]={_q(mod.subdir + '/')}")
            lines.append(f"DEST_MODULE_LOCATION[{i}]={_q('/' + m.install_location.strip('/'))}")
            lines.append(f'STRIP[{i}]="no"')
        lines.append('AUTOINSTALL="yes"')
        return "\n".join(lines) + "\n"

    def signing_conf(self) -> str | None:
        """The framework.conf.d snippet naming the manifest's key and certificate; None without a key."""
        sig = self.manifest.signing
        if sig is None:
            return None
        key = sig.key if sig.key.startswith("pkcs11:") else os.path.normpath(self.project / sig.key)
        cert = os.path.normpath(self.project / sig.cert)
        return "\n".join([
            f"# Signing for the DKMS package {self.name}, written by 'kmodkit dkms export' from {MANIFEST} [signing].",
            "# DKMS 3.0 reads the key only from /etc/dkms/framework.conf and /etc/dkms/framework.conf.d/*.conf and",
            "# signs EVERY package with it: copy this file to /etc/dkms/framework.conf.d/ to use this project's key.",
            "# DKMS signs with the hash the kernel's CONFIG_MODULE_SIG_HASH names"
            f" ({MANIFEST} says {sig.hash}).",
            f"mok_signing_key={shlex.quote(key)}",
            f"mok_certificate={shlex.quote(cert)}",
        ]) + "\n"

    def _fill(self, tree: Path) -> None:
        """Write the tree's files into the empty directory ``tree``."""
        for rel in self.files():
            target = tree / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(self.project / rel, target)

        def include(real: Path, module_dir: Path) -> str:
            rel = os.path.relpath(real, module_dir)
            return "-I$(src)" if rel == "." else f"-I$(src)/{rel}"

        for subdir, added in products.flag_lines(self.manifest, self.project, include).items():
            products.append_to_kbuild(tree / subdir if subdir else tree, added, MARK)
        conf = self.dkms_conf()
        parse_conf(conf, tree / DKMS_CONF)  # what kmodkit writes, kmodkit reads
        (tree / DKMS_CONF).write_text(conf)
        signing = self.signing_conf()
        if signing is not None:
            (tree / SIGNING_CONF).write_text(signing)

    # --- writing ----------------------------------------------------------------------------

    def write(self) -> ExportResult:
        """Write the tree (temp directory, then rename); an identical tree is left alone, a different one refused."""
        try:
            self.dest.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.tree.name}.kmodkit-", suffix=".tmp", dir=self.dest))
        except OSError as exc:
            raise from_oserror(exc, str(self.dest)) from None
        try:
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the sources from a DKMS run as another user
            self._fill(tmp)
            files = [str(p) for p in inputs.project_files(tmp)]
            if os.path.lexists(self.tree) and not _empty_dir(self.tree):
                difference = _difference(tmp, self.tree)
                if difference is not None:
                    raise UserError(str(self.tree), f"exists and differs from this export ({difference}); "
                                    "export never overwrites a tree", "remove it first (dkms remove, then rm -r), "
                                    "or export another version with --version")
                return ExportResult(self.tree, self.name, self.package_version, tuple(files), False,
                                    self.tree / SIGNING_CONF if self.manifest.signing else None)
            os.rename(tmp, self.tree)
        except OSError as exc:
            raise from_oserror(exc, str(self.tree)) from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return ExportResult(self.tree, self.name, self.package_version, tuple(files), True,
                            self.tree / SIGNING_CONF if self.manifest.signing else None)


def _q(value: str) -> str:
    """``value`` as a double-quoted shell word (export's values are checked to hold no $ ` " or \\)."""
    assert not set(value) & set('$`"\\\n'), value
    return f'"{value}"'


def _holds_private_key(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return False
    return b"PRIVATE KEY-----" in head


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    except OSError:
        return False


def _difference(new: Path, old: Path) -> str | None:
    """The first file that differs between the two trees (their inputs, not build products); None when equal."""
    if not old.is_dir() or old.is_symlink():
        return "it is not a directory"
    a, b = inputs.project_files(new), inputs.project_files(old)
    for rel in sorted(set(a) ^ set(b)):
        return f"{rel} is only in {'the export' if rel in a else 'the tree there'}"
    for rel in a:
        if (new / rel).read_bytes() != (old / rel).read_bytes():
            return f"{rel} differs"
    return None
