"""The kmod image's Dockerfile: built in the cluster from the project's sources, or packed from ``kmodkit build``.

KMM builds a kmod image with kaniko from one file: the ``dockerfile`` key of a ConfigMap, mounted alone as
the build context (no other file of the project reaches the build).  So :func:`in_cluster` carries the
project's sources inside the Dockerfile, as a gzipped tar in base64 that the builder stage unpacks, the same
files ``kmodkit build`` copies (only what make reads: :func:`source_files`) with the same per-object flags
(:func:`kmodkit.kbuild.products.add_module_flags`, with include paths as ``$(M)/...``).  The builder then
runs ``make -C /lib/modules/${KERNEL_FULL_VERSION}/build M=$PWD modules`` in that directory: KMM sets
KERNEL_FULL_VERSION to the node's release, the headers package provides the build link, and the same line
runs outside any container against an installed kernel's headers (tests/test_kmm.py does exactly that).
The final stage holds the modules in ``/opt/lib/modules/KVER/`` (KMM's default ``dirName``) and their
``modules.dep`` from ``depmod -b /opt``, as KMM's kmod_image.md describes.

:func:`prebuilt` packs what ``kmodkit build`` made (``out/KVER/*.ko``, signed when the manifest names a key)
into the same layout; it is built with the project as context, once per kernel.

A private key is never carried: the manifest's key and certificate are left out by name, and a source file
holding a PEM private key block is refused.  The archive is reproducible (sorted, owner 0, time 0), so the
same project gives the same ConfigMap and KMM sees nothing to rebuild.
"""

from __future__ import annotations

import base64
import functools
import gzip
import io
import os
import re
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kmodkit.errors import UserError
from kmodkit.kbuild import inputs, products
from kmodkit.kbuild.manifest import Manifest
from kmodkit.kbuild.platform import Distro

#: KMM's default modprobe dirName: the image's modules are below DIRNAME/lib/modules/KVER
DIR_NAME = "/opt"
#: what a ConfigMap may hold in all (etcd's object limit); the Dockerfile is nearly all of it
CONFIGMAP_LIMIT = 1024 * 1024
#: files of a project that make reads, by name and by suffix; nothing else goes into the image
SOURCE_NAMES = frozenset({"Kbuild", "Makefile", "GNUmakefile", "Kconfig"})
SOURCE_SUFFIXES = (".c", ".h", ".S", ".s", ".lds", ".mk", ".inc")
#: the characters of one line of the embedded archive
_WRAP = 76
#: base64 characters one RUN line carries: the shell gets the line as one argument, and Linux takes no argument
#: longer than MAX_ARG_STRLEN (32 pages: 128 KiB)
_RUN_CHARS = 96 * 1024
#: the file the RUN lines assemble the archive in, in the builder's WORKDIR
_B64 = ".kmodkit-sources.b64"
#: an image reference a FROM line may name: [registry[:port]/]path[:tag][@digest], nothing the parser splits at
_REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")


@dataclass(frozen=True)
class Recipe:
    """How a distro family's kmod image is built (one row of ``images.toml``)."""

    family: str  #: the distro family key (debian, ubuntu, fedora, rhel, amzn)
    image: str  #: the base image of both stages
    builder: str  #: the builder stage's install command (uses ${KERNEL_FULL_VERSION})
    final: str  #: the final stage's install command (depmod)


@functools.cache
def _table() -> dict[str, dict[str, str]]:
    return tomllib.loads(resources.files("kmodkit.kmm").joinpath("images.toml").read_text())


def recipe(distro: Distro, base_image: str | None = None) -> Recipe:
    """The recipe for ``distro``'s family, its base image replaced by ``base_image`` when given.

    Raises UserError when the distro is none of ``images.toml``'s families.
    """
    family = distro.family.key if distro.family is not None else ""
    row = _table().get(family)
    if row is None:
        raise UserError(distro.pretty_name or "this machine's distro", "has no kmod image recipe "
                        f"(known: {', '.join(_table())})", "build on one of those distros")
    if base_image is not None and not _REFERENCE.match(base_image):
        raise UserError(f"--base-image {base_image!r}", "is not an image reference",
                        "name one such as debian:12 or registry.example.com/base/debian:12")
    version = distro.version_id or "latest"
    image = base_image or row["image"].format(id=distro.id, version_id=version, major=version.split(".")[0])
    return Recipe(family, image, row["builder"], row["final"])


def source_dir(manifest: Manifest) -> str:
    """Where the builder stage unpacks and builds the project: /usr/src/NAME."""
    return f"/usr/src/{manifest.name}"


def source_files(manifest: Manifest, project: Path, leave_out: tuple[Path, ...] = ()) -> list[Path]:
    """The project's files the image is built from (relative, sorted): what make reads, nothing else.

    ``leave_out`` names files and directories never taken (the output directory).  The manifest's signing key
    and certificate are always left out; a chosen file holding a PEM private key raises UserError.
    """
    skip = [p.resolve() for p in leave_out]
    if manifest.signing is not None:
        skip += [(project / f).resolve() for f in (manifest.signing.key, manifest.signing.cert)
                 if f and not f.startswith("pkcs11:")]
    out = []
    for rel in inputs.project_files(project):
        real = (project / rel).resolve()
        if any(real == s or s in real.parents for s in skip):
            continue
        if rel.name not in SOURCE_NAMES and not rel.name.endswith(SOURCE_SUFFIXES):
            continue
        if b"PRIVATE KEY-----" in real.read_bytes():
            raise UserError(str(project / rel), "holds a private key, and kmodkit kmm never puts one in a "
                            "generated file", "keep keys out of the project's source files")
        out.append(rel)
    return out


def source_archive(manifest: Manifest, project: Path, files: list[Path]) -> bytes:
    """A reproducible .tar.gz of ``files`` with the manifest's include paths and cflags added to the Kbuild
    files, as ``kmodkit build`` adds them to its copy (include paths as ``$(M)/...``)."""
    with tempfile.TemporaryDirectory(prefix="kmodkit-kmm-") as tmp:
        copy = Path(tmp) / "src"
        inputs.copy_tree(project, files, copy)
        products.add_module_flags(manifest, copy, project, at=Path("$(M)"))
        raw = io.BytesIO()
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(p for p in copy.rglob("*") if p.is_file()):
                info = tarfile.TarInfo(str(path.relative_to(copy)))
                data = path.read_bytes()
                info.size = len(data)
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                tar.addfile(info, io.BytesIO(data))
        return raw.getvalue()


def _module_paths(manifest: Manifest, base: str) -> list[str]:
    """Where make leaves each module below ``base`` (the directory of the Kbuild that builds it)."""
    return [f"{base}/{m.subdir}/{m.name}.ko" if m.subdir else f"{base}/{m.name}.ko" for m in manifest.modules]


def _final_stage(recipe: Recipe, sources: list[str], source_flag: str) -> list[str]:
    dest = f"{DIR_NAME}/lib/modules/${{KERNEL_FULL_VERSION}}/"
    return [
        f"FROM {recipe.image}",
        "ARG KERNEL_FULL_VERSION",
        f"RUN {recipe.final}",
        f"RUN mkdir -p {dest}",
        f"COPY {source_flag}{' '.join(sources)} {dest}",
        f"RUN depmod -b {DIR_NAME} ${{KERNEL_FULL_VERSION}}",
    ]


def in_cluster(manifest: Manifest, project: Path, recipe: Recipe, leave_out: tuple[Path, ...] = ()) -> str:
    """The Dockerfile KMM builds in the cluster for each kernel (its ConfigMap's ``dockerfile``).

    Raises UserError when a module includes from outside the project (the image holds only the project) or
    when the Dockerfile would not fit in a ConfigMap.
    """
    outside = products.include_paths(manifest, project)
    if outside:
        raise UserError(str(outside[0]), "is included from outside the project, and the in-cluster build holds "
                        "only the project", "build the images yourself and pass --prebuilt")
    for m in manifest.modules:
        if m.subdir and not inputs.make_safe(Path(m.subdir)):
            raise UserError(f"{manifest.path}: subdir {m.subdir!r}", "holds characters a Dockerfile's COPY or make "
                            "cannot take", "rename the directory with letters, digits and ._-")
    files = source_files(manifest, project, leave_out)
    archive = base64.b64encode(source_archive(manifest, project, files)).decode()
    runs = []
    for n, start in enumerate(range(0, len(archive), _RUN_CHARS)):
        part = archive[start:start + _RUN_CHARS]
        wrapped = "\\\n".join(part[i:i + _WRAP] for i in range(0, len(part), _WRAP))
        runs.append(f"RUN echo '{wrapped}' {'>' if n == 0 else '>>'} {_B64}")
    base = source_dir(manifest)
    lines = [
        f"# The kmod image of {', '.join(m.name for m in manifest.modules)} for Kernel Module Management, written by",
        "# 'kmodkit kmm' from kmodkit.toml (regenerate it rather than editing it).  KMM builds it in the cluster",
        "# with the build argument KERNEL_FULL_VERSION set to each node's kernel release.",
        f"FROM {recipe.image} AS builder",
        "ARG KERNEL_FULL_VERSION",
        f"RUN {recipe.builder}",
        f"WORKDIR {base}",
        f"# the project's sources ({len(files)} files: {', '.join(str(f) for f in files[:6])}"
        f"{', ...' if len(files) > 6 else ''}), a gzipped tar in base64",
        *runs,
        f"RUN base64 -d {_B64} | tar -xzf - && rm {_B64}",
        "RUN make -C /lib/modules/${KERNEL_FULL_VERSION}/build M=$PWD modules",
        "",
        *_final_stage(recipe, _module_paths(manifest, base), "--from=builder "),
    ]
    text = "\n".join(lines) + "\n"
    if len(text) > CONFIGMAP_LIMIT - 4096:
        raise UserError(str(project), f"its sources make a Dockerfile of {len(text)} bytes, more than a ConfigMap "
                        f"holds ({CONFIGMAP_LIMIT} bytes)", "build the images yourself and pass --prebuilt")
    return text


def prebuilt(manifest: Manifest, recipe: Recipe) -> str:
    """The Dockerfile packing ``kmodkit build``'s modules for one kernel (build arg KERNEL_FULL_VERSION), built
    with the project directory as its context."""
    sources = [f"out/${{KERNEL_FULL_VERSION}}/{m.name}.ko" for m in manifest.modules]
    lines = [
        f"# The kmod image of {', '.join(m.name for m in manifest.modules)} for Kernel Module Management, written by",
        "# 'kmodkit kmm --prebuilt': the modules 'kmodkit build' made (and signed, when kmodkit.toml names a key).",
        "# Build it from the project directory once per kernel:",
        "#   docker build -f Dockerfile --build-arg KERNEL_FULL_VERSION=KVER -t IMAGE:TAG PROJECT",
        *_final_stage(recipe, sources, ""),
    ]
    return "\n".join(lines) + "\n"
