"""The distro's package tool, driven by the table ``archives.toml``: which kernels the archive has,
what a kernel's packages depend on, and downloading and unpacking them without installing anything.

Only the Debian row is tested; the RPM rows are written as data and say so (``tested = false``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from kmodkit.archive.store import tree_size
from kmodkit.errors import ConfigError, EnvironmentNotReady, NotFoundError
from kmodkit.sysroot import HOST, Root

log = logging.getLogger(__name__)

#: how long one archive query may take
QUERY_TIMEOUT = 120.0


@dataclass(frozen=True)
class ArchiveTool:
    """One row of ``archives.toml``: a distro family's commands, as argument vectors."""

    family: str  #: the family key of kbuild/distros.toml: debian, ubuntu, fedora, rhel
    tested: bool  #: whether kmodkit's tests run these commands (only Debian's are)
    search: tuple[str, ...]  #: lists the archive's kernel packages, one name first on each line
    show: tuple[str, ...]  #: prints a package's record (Package:, Version:, Depends:, Size:, SHA256:)
    download: tuple[str, ...]  #: downloads package files into the working directory
    download_item: str  #: how one package is named to ``download`` ({package}, {version})
    unpack: tuple[tuple[str, ...], ...]  #: a pipeline unpacking {file} below {dest}
    package_suffix: str  #: ".deb" or ".rpm"
    headers: str  #: the headers package of a kernel ({kver})
    image: str  #: the image-and-modules package of a kernel ({kver})
    release: str  #: a regular expression a release must start with (metapackages' short names do not)
    not_release: tuple[str, ...]  #: name endings of packages that are no kernel (-common, -dbg)
    fetch_depends: tuple[str, ...]  #: dependency name prefixes fetched with a package
    verified: str  #: what vouches for a downloaded file
    example: str  #: the archive facts the row was written from

    def release_of(self, package: str) -> tuple[str, str] | None:
        """``(kind, release)`` for a kernel package name (kind "headers" or "image"); None for any other name."""
        for kind, template in (("headers", self.headers), ("image", self.image)):
            prefix = template.split("{kver}", 1)[0]
            if not package.startswith(prefix):
                continue
            release = package[len(prefix):]
            if re.match(self.release, release) and not release.endswith(self.not_release):
                return kind, release
        return None


@dataclass(frozen=True)
class PackageRecord:
    """What the archive says about one package (its ``show`` record)."""

    name: str  #: package name
    version: str  #: version the download is pinned to
    size: int | None  #: file size in bytes, None when the record does not say
    sha256: str | None  #: the file's SHA256 (hex), None when the record does not say
    filename: str  #: the file's name once downloaded
    depends: tuple[tuple[tuple[str, str | None], ...], ...]  #: alternatives of (name, "= version" or None)

    def to_json(self) -> dict[str, object]:
        """The record as JSON-able data."""
        return {"name": self.name, "version": self.version, "size": self.size, "sha256": self.sha256,
                "filename": self.filename, "depends": [[list(a) for a in alts] for alts in self.depends]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackageRecord:
        """A record from :meth:`to_json`'s data; KeyError or TypeError when it is not one."""
        if not isinstance(data["filename"], str) or "/" in data["filename"] or data["filename"].startswith("."):
            raise TypeError("not a plain file name")
        return cls(str(data["name"]), str(data["version"]), None if data["size"] is None else int(data["size"]),
                   None if data["sha256"] is None else str(data["sha256"]), data["filename"],
                   tuple(tuple((str(n), None if v is None else str(v)) for n, v in alts) for alts in data["depends"]))

    def matches(self, path: str) -> bool:
        """Whether the file at ``path`` is this package's file (size and SHA256 as the archive's index says)."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        if self.size is not None and st.st_size != self.size:
            return False
        if self.sha256 is None:
            return self.size is not None
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest() == self.sha256


@functools.cache
def tools() -> dict[str, ArchiveTool]:
    """Every row of ``archives.toml`` by family key."""
    text = resources.files("kmodkit.archive").joinpath("archives.toml").read_text()
    try:
        table: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # a packaging bug, but say where
        raise ConfigError("kmodkit/archive/archives.toml", str(exc)) from exc
    return {key: ArchiveTool(
        family=key, tested=row["tested"], search=tuple(row["search"]), show=tuple(row["show"]),
        download=tuple(row["download"]), download_item=row["download_item"],
        unpack=tuple(tuple(stage) for stage in row["unpack"]), package_suffix=row["package_suffix"],
        headers=row["headers"], image=row["image"], release=row["release"], not_release=tuple(row["not_release"]),
        fetch_depends=tuple(row["fetch_depends"]), verified=row["verified"], example=row["example"],
    ) for key, row in table.items()}


def tool_for(root: Root = HOST) -> ArchiveTool:
    """The archive tool of the distro below ``root``; EnvironmentNotReady for a distro without one."""
    from kmodkit.kbuild.platform import detect_distro

    distro = detect_distro(root)
    family = distro.family.key if distro.family else None
    if family is None or family not in tools():
        raise EnvironmentNotReady(distro.pretty_name or "this distro", "kmodkit cannot fetch kernels from its archive "
                                  "(archives.toml has no row for it)",
                                  "install the kernel's headers with the package manager instead")
    return tools()[family]


def _run(argv: list[str], what: str, timeout: float = QUERY_TIMEOUT) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise EnvironmentNotReady(argv[0], "is not installed", f"install it to {what}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentNotReady(" ".join(argv[:3]), f"did not answer within {timeout:.0f} s") from exc
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise EnvironmentNotReady(" ".join(argv[:3]), f"failed ({out.returncode}): {last}")
    return out.stdout


def available(tool: ArchiveTool) -> dict[str, set[str]]:
    """release -> the kinds of package the archive has for it ("headers", "image"); empty when none."""
    out: dict[str, set[str]] = {}
    for line in _run(list(tool.search), "list the archive's kernels").splitlines():
        name = line.split(" ", 1)[0].strip()
        found = tool.release_of(name)
        if found is not None:
            out.setdefault(found[1], set()).add(found[0])
    return out


def show(tool: ArchiveTool, packages: list[str]) -> dict[str, PackageRecord]:
    """The archive's records of ``packages`` (their candidate versions), asked in one run of the tool; a package
    the archive does not have is absent from the answer."""
    argv: list[str] = []
    for a in tool.show:  # "{package}" stands for every name
        argv += packages if a == "{package}" else [a]
    try:
        text = _run(argv, "read the archive's package records")
    except EnvironmentNotReady:
        text = ""  # some tools fail as a whole when one name is unknown: each is then missing
    out: dict[str, PackageRecord] = {}
    for fields in _records(text):
        name = fields.get("Package", "")
        if name not in packages or name in out:
            continue
        size = fields.get("Size", "")
        filename = os.path.basename(fields.get("Filename", "")) or f"{name}{tool.package_suffix}"
        out[name] = PackageRecord(name, fields.get("Version", ""), int(size) if size.isdigit() else None,
                                  fields.get("SHA256") or None, filename, _depends(fields.get("Depends", "")))
    return out


def _records(text: str) -> list[dict[str, str]]:
    return [_first_record(chunk) for chunk in re.split(r"\n\s*\n", text) if chunk.strip()]


def _first_record(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
            continue
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _depends(text: str) -> tuple[tuple[tuple[str, str | None], ...], ...]:
    out = []
    for clause in filter(None, (c.strip() for c in text.split(","))):
        alts = []
        for alt in clause.split("|"):
            m = re.match(r"\s*([^\s(]+)\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?", alt)
            if m:
                pin = m.group(3) if m.group(2) == "=" else None
                alts.append((m.group(1).split(":", 1)[0], pin))
        out.append(tuple(alts))
    return tuple(out)


def resolve(tool: ArchiveTool, packages: Iterable[str]) -> list[PackageRecord]:
    """``packages`` and, transitively, their dependencies named by ``fetch_depends`` (first fitting alternative).

    Asked level by level, one run of the tool per level (two for Debian's headers).  A dependency pinned
    with ``=`` must have that version as its candidate; of an unpinned one the archive keeps only the
    newest (Debian's linux-kbuild-6.1), which its ``>=`` allows.  NotFoundError names a missing package.
    """
    records: dict[str, PackageRecord] = {}
    pins: dict[str, tuple[str, str]] = {}  # dependency -> (version, who pinned it)
    level = list(dict.fromkeys(packages))
    while level:
        found = show(tool, level)
        for name in level:
            if name not in found:
                raise NotFoundError(name, "the archive has no such package",
                                    "kmodkit kernels list --available names the kernels it has")
            rec = records[name] = found[name]
            if name in pins and rec.version != pins[name][0]:
                raise NotFoundError(name, f"{pins[name][1]} needs version {pins[name][0]}, the archive has "
                                    f"{rec.version}", "run apt-get update")
        nxt = []
        for name in level:
            for alts in records[name].depends:
                for dep, pin in alts:
                    if dep.startswith(tool.fetch_depends):
                        if pin is not None:
                            pins.setdefault(dep, (pin, name))
                        if dep not in records and dep not in nxt:
                            nxt.append(dep)
                        break
        level = nxt
    return list(records.values())


def download(tool: ArchiveTool, records: list[PackageRecord], dest: str,
             progress: Callable[[int], None] | None = None) -> None:
    """Download the files of ``records`` into the directory ``dest`` with the package tool (which verifies them).

    ``progress`` is called with the bytes in ``dest`` so far, a few times a second.
    """
    if not records:
        return
    argv = list(tool.download) + [tool.download_item.format(package=r.name, version=r.version) for r in records]
    log.info("downloading %s", " ".join(r.name for r in records))
    errors = open(os.path.join(dest, ".download.log"), "w+b")
    try:
        proc = subprocess.Popen(argv, cwd=dest, stdin=subprocess.DEVNULL, stdout=errors, stderr=subprocess.STDOUT)
    except FileNotFoundError as exc:
        errors.close()
        raise EnvironmentNotReady(argv[0], "is not installed", "install it to fetch kernels") from exc
    with errors:
        try:
            while proc.poll() is None:
                if progress is not None:
                    progress(tree_size(Path(dest)))
                time.sleep(0.2)
        finally:
            if proc.poll() is None:  # interrupted: take the tool down with us
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            errors.seek(0)
            lines = [ln for ln in errors.read().decode(errors="replace").splitlines() if ln.strip()]
            raise EnvironmentNotReady(" ".join(argv[:2]), f"failed ({proc.returncode}): "
                                      f"{lines[-1] if lines else '(no message)'}",
                                      "check the network and run apt-get update")
    if progress is not None:
        progress(tree_size(Path(dest)))


def unpack(tool: ArchiveTool, files: list[str], dest: str, jobs: int | None = None) -> None:
    """Unpack the package files ``files`` below the directory ``dest``, ``jobs`` at a time (default: the CPU
    count); no maintainer script runs.  The packages of one kernel hold disjoint files."""
    jobs = jobs or os.cpu_count() or 1
    running: list[tuple[str, list[list[str]], list[subprocess.Popen[bytes]], Any]] = []
    failure: EnvironmentNotReady | None = None
    todo = list(files)
    try:
        while todo or running:
            while todo and len(running) < jobs:
                file = todo.pop(0)
                running.append((file, *_start(tool, file, dest)))
            file, stages, procs, errors = running.pop(0)
            problem = _finish(stages, procs, errors)
            if problem is not None and failure is None:
                failure = EnvironmentNotReady(os.path.basename(file), problem,
                                              "remove it from the cache (kmodkit kernels prune) and fetch again")
    finally:
        for _, _, procs, errors in running:  # interrupted: take the unpackers down with us
            for p in procs:
                p.kill()
                p.wait()
            errors.close()
    if failure is not None:
        raise failure


def _start(tool: ArchiveTool, file: str, dest: str) -> tuple[list[list[str]], list[subprocess.Popen[bytes]], Any]:
    stages = [[a.format(file=file, dest=dest) for a in stage] for stage in tool.unpack]
    errors = tempfile.TemporaryFile()
    procs: list[subprocess.Popen[bytes]] = []
    prev = None
    try:
        for i, argv in enumerate(stages):
            last = i == len(stages) - 1
            p = subprocess.Popen(argv, cwd=dest, stdin=prev if prev is not None else subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL if last else subprocess.PIPE, stderr=errors)
            if prev is not None:
                prev.close()
            prev = p.stdout
            procs.append(p)
    except FileNotFoundError as exc:
        for p in procs:
            p.kill()
            p.wait()
        errors.close()
        raise EnvironmentNotReady(str(exc.filename or stages[0][0]), "is not installed",
                                  "install it to unpack packages") from exc
    return stages, procs, errors


def _finish(stages: list[list[str]], procs: list[subprocess.Popen[bytes]], errors: Any) -> str | None:
    with errors:
        for p in procs:
            p.wait()
        bad = next(((argv, p.returncode) for argv, p in zip(stages, procs) if p.returncode != 0), None)
        if bad is None:
            return None
        errors.seek(0)
        lines = [ln for ln in errors.read().decode(errors="replace").splitlines() if ln.strip()]
        return f"{bad[0][0]} failed ({bad[1]}): {lines[-1] if lines else '(no message)'}"
