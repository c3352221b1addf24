"""``kernels fetch``: download a kernel's packages with the distro's tool and unpack them into the cache.

Each kernel is fetched on its own (a batch reports every kernel and goes on):

1. its packages are resolved from the archive's records (the headers and, transitively, the dependencies
   ``archives.toml`` names: Debian's -common headers and linux-kbuild; the image unless headers only);
2. a package file already kept in the cache whose size and SHA256 match the record is used as it is; the
   others are downloaded by the package tool (which verifies them) into a temp directory and moved in
   whole, so a killed download costs only the files it had not finished;
3. every package is unpacked into a temp directory, the flavour headers' absolute ``include`` fixed, the
   modules indexed (the image package ships no modules.dep: depmod runs in its postinst), the record
   written, and the directory renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from kmodkit.archive import store, tool as archive
from kmodkit.errors import ItemError, KmodkitError, UserError
from kmodkit.sysroot import HOST, Root

log = logging.getLogger(__name__)

#: progress(what, done, total): a step of one kernel ("download 6.1.0-55-amd64"), bytes or items so far, of total
Progress = Callable[[str, int, int], None]


class Outcome(Enum):
    """What a fetch did for one kernel."""

    FETCHED = "fetched"  #: unpacked into the cache now
    PRESENT = "present"  #: already in the cache with what was asked for


@dataclass(frozen=True)
class FetchResult:
    """One kernel fetched."""

    kernel: store.FetchedKernel  #: the kernel in the cache
    outcome: Outcome  #: fetched now, or already present
    downloaded: int  #: bytes downloaded for it (0 when every package file was kept already)
    reused: int  #: package files taken from the cache instead of downloaded

    def to_json(self) -> dict[str, object]:
        """JSON-able data for ``kernels fetch --json``."""
        return {**self.kernel.to_json(), "outcome": self.outcome.value, "downloaded": self.downloaded,
                "reused": self.reused}


def check_flavour(flavour: str | None) -> None:
    """Refuse a ``--flavour`` that no release can end in (the rule flavour_of reads releases with)."""
    import re

    if flavour is not None and not re.fullmatch(r"(?:cloud-|rt-)?[a-z][a-z0-9_]*", flavour):
        raise UserError(f"--flavour {flavour!r}", "is not a flavour", "name the last part of a release: "
                        "cloud-amd64, amd64, rt-amd64")


def flavour_matches(release: str, flavour: str | None) -> bool:
    """Whether ``release`` is of ``flavour`` (cloud-amd64, amd64, rt-amd64); any release when None."""
    from kmodkit.kbuild.kernels import flavour_of

    return flavour is None or flavour_of(release) == flavour


@dataclass
class Fetch:
    """Fetch kernels (by release, or the newest ``latest`` the archive has) into the cache; validated when built."""

    releases: list[str] = field(default_factory=list)
    latest: int | None = None  #: the newest N releases of the archive that are not installed here
    flavour: str | None = None  #: with ``latest``: only this flavour; with releases: each must be of it
    headers_only: bool = False  #: without the image and modules (what build needs; check, verify and vm need more)
    force: bool = False  #: unpack again even when the kernel is in the cache
    root: Root = HOST  #: the machine whose archive is asked (its os-release picks the tool)

    def __post_init__(self) -> None:
        from kmodkit.kbuild.kernels import release_problem

        if bool(self.releases) == (self.latest is not None):
            raise UserError("kernels fetch", "name kernels or give --latest N (one of the two)",
                            "kmodkit kernels list --available names the archive's kernels")
        if self.latest is not None and self.latest < 1:
            raise UserError(f"--latest {self.latest}", "must be at least 1")
        check_flavour(self.flavour)
        for r in self.releases:
            problem = release_problem(r)
            if problem is not None:
                raise UserError(r, problem, "kmodkit kernels list --available names the archive's kernels")
        self.tool = archive.tool_for(self.root)

    def targets(self) -> list[str]:
        """The releases to fetch: those named, or the newest ``latest`` ones of the archive (of ``flavour``)."""
        if self.releases:
            return list(dict.fromkeys(self.releases))
        from kmodkit.kbuild.kernels import installed_kernels, version_key

        here = {k.release for k in installed_kernels(self.root)}
        offered = archive.available(self.tool)
        wanted = "headers" if self.headers_only else "image"
        names = [r for r, kinds in offered.items()
                 if r not in here and flavour_matches(r, self.flavour) and {"headers", wanted} <= kinds]
        names.sort(key=version_key, reverse=True)
        if not names:
            raise UserError(f"--flavour {self.flavour}" if self.flavour else "--latest",
                            "the archive has no kernel of that flavour that is not installed",
                            "kmodkit kernels list --available names the archive's kernels")
        assert self.latest is not None
        return names[: self.latest]

    def run(self, progress: Progress | None = None) -> list[FetchResult | ItemError]:
        """Fetch every target; each kernel comes back as its result or the error that stopped it."""
        store.sweep_temps()
        out: list[FetchResult | ItemError] = []
        for release in self.targets():
            try:
                out.append(self.one(release, progress))
            except KmodkitError as exc:
                out.append(ItemError.from_error(release, exc))
        return out

    def one(self, release: str, progress: Progress | None = None) -> FetchResult:
        """Fetch the kernel ``release``; raises NotFoundError naming ``kernels list --available`` when the archive
        has no such kernel."""
        from kmodkit.errors import NotFoundError

        if not flavour_matches(release, self.flavour):
            raise UserError(release, f"is not of flavour {self.flavour}")
        present = store.root_of(release)
        current = store.read_record(present) if present is not None else None
        if current is not None and not self.force and current.headers and (self.headers_only or current.image):
            return FetchResult(current, Outcome.PRESENT, 0, 0)
        # what the cache has stays: --headers-only --force on a kernel with its image unpacks the image again too
        with_image = not self.headers_only or (current is not None and current.image)
        names = [self.tool.headers.format(kver=release)]
        if with_image:
            names.append(self.tool.image.format(kver=release))
        plan = store.packages_dir() / f"{release}.{'all' if with_image else 'headers'}.plan.json"
        records = _kept_plan(plan)
        if records is None:
            try:
                records = archive.resolve(self.tool, names)
            except NotFoundError as exc:
                if exc.subject in names:
                    raise NotFoundError(release, "the archive has no such kernel (no package " + exc.subject + ")",
                                        "kmodkit kernels list --available names the kernels it has") from exc
                raise
        downloaded, reused = self._download(release, records, progress)
        kernel = self._unpack(release, records, progress)
        from kmodkit.fileio import write_atomic

        write_atomic(plan, json.dumps([r.to_json() for r in records]).encode())
        return FetchResult(kernel, Outcome.FETCHED, downloaded, reused)

    # --- steps ----------------------------------------------------------------------------

    def _download(self, release: str, records: list[archive.PackageRecord],
                  progress: Progress | None) -> tuple[int, int]:
        from kmodkit.errors import EnvironmentNotReady
        from kmodkit.fileio import temp_name

        keep = store.packages_dir()
        keep.mkdir(parents=True, exist_ok=True)
        missing = [r for r in records if not r.matches(str(keep / r.filename))]
        total = sum(r.size or 0 for r in missing)
        if not missing:
            return 0, len(records)
        part = Path(temp_name(str(keep / "download")))
        part.mkdir()
        try:
            archive.download(self.tool, missing, str(part),
                             None if progress is None else lambda n: progress(f"download {release}", n, total))
            got = 0
            for r in missing:
                path = _downloaded_file(part, r, self.tool.package_suffix)
                if path is None or not r.matches(str(path)):
                    raise EnvironmentNotReady(r.filename, "the downloaded file does not match the archive's record "
                                              "(size or SHA256)", "run apt-get update and fetch again")
                got += path.stat().st_size
                os.replace(path, keep / r.filename)
        finally:
            shutil.rmtree(part, ignore_errors=True)
        return got, len(records) - len(missing)

    def _unpack(self, release: str, records: list[archive.PackageRecord],
                progress: Progress | None) -> store.FetchedKernel:
        from kmodkit.fileio import fsync_dir, temp_name

        roots = store.roots_dir()
        roots.mkdir(parents=True, exist_ok=True)
        final = roots / release
        tmp = Path(temp_name(str(final)))
        tmp.mkdir()
        try:
            if progress is not None:
                progress(f"unpack {release}", 0, len(records))
            archive.unpack(self.tool, [str(store.packages_dir() / r.filename) for r in records], str(tmp))
            if progress is not None:
                progress(f"unpack {release}", len(records), len(records))
            fixed = fix_headers_makefiles(tmp)
            log.debug("%s: rewrote %s", release, fixed)
            has_headers = (tmp / "usr/src" / f"linux-headers-{release}" / "Makefile").is_file() \
                or (tmp / "lib/modules" / release / "build").is_symlink()
            has_image = (tmp / "boot" / f"vmlinuz-{release}").is_file() and (tmp / "lib/modules" / release).is_dir()
            if has_image:
                if progress is not None:
                    progress(f"index {release}", 0, 1)
                _index(release, tmp)
            kernel = store.FetchedKernel(release, final, has_headers, has_image,
                                         tuple((r.name, r.version, r.filename) for r in records),
                                         store.tree_size(tmp), self.tool.family)
            (tmp / store.RECORD).write_text(json_text(kernel))
            if final.exists():  # replaced whole: the old directory leaves by a rename too
                old = Path(temp_name(str(final)))
                os.rename(final, old)
                os.rename(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, final)
            fsync_dir(str(roots))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return kernel


def json_text(kernel: store.FetchedKernel) -> str:
    """The record file's text."""
    import json

    return json.dumps(kernel.to_json(), indent=1) + "\n"


def _kept_plan(path: Path) -> list[archive.PackageRecord] | None:
    """The records a fetch of this kernel resolved before, when every one's kept file still matches them.

    A warm fetch then asks nothing of the archive: Debian never changes a package version's file, and the
    records came from its verified index.  None when there is no plan or a file is missing or changed.
    """
    try:
        records = [archive.PackageRecord.from_json(r) for r in json.loads(path.read_text())]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    keep = store.packages_dir()
    return records if records and all(r.sha256 and r.matches(str(keep / r.filename)) for r in records) else None


def _downloaded_file(directory: Path, record: archive.PackageRecord, suffix: str) -> Path | None:
    exact = directory / record.filename
    if exact.is_file():
        return exact
    # the tool may name the file its own way (an epoch written as %3a): the package's name starts it
    for p in sorted(directory.glob(f"{record.name}_*{suffix}")):
        return p
    return None


_ABS_INCLUDE = re.compile(r"^include (/usr/src/([^/\s]+)/Makefile)\s*$")


def fix_headers_makefiles(root: Path) -> list[Path]:
    """Rewrite the absolute ``include /usr/src/DIR/Makefile`` of each unpacked headers Makefile; the files changed.

    Debian's flavour headers hold only ``include /usr/src/linux-headers-K-common/Makefile``: make would read
    the *installed* common headers (or none) instead of the ones unpacked beside it.  The include becomes
    relative to the Makefile's own directory, so the tree still works once the temp directory is renamed.
    Nothing else in the packages is absolute except the build/source links, which :class:`Root` re-roots.
    """
    changed = []
    for makefile in sorted((root / "usr/src").glob("*/Makefile")):
        try:
            text = makefile.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        lines = text.splitlines()
        out = []
        for line in lines:
            m = _ABS_INCLUDE.match(line)
            if m and (root / "usr/src" / m.group(2) / "Makefile").is_file():
                line = f"include $(dir $(realpath $(lastword $(MAKEFILE_LIST))))../{m.group(2)}/Makefile"
            out.append(line)
        if out != lines:
            fd, tmp = tempfile.mkstemp(dir=makefile.parent, prefix=".Makefile.")
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(out) + "\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, makefile)
            changed.append(makefile)
    return changed


def _index(release: str, root: Path) -> None:
    """Write the module index of the unpacked tree, as the image package's postinst (depmod) would."""
    from kmodkit.index.indexer import Indexer

    system_map = root / "boot" / f"System.map-{release}"
    ix = Indexer(release, str(root), config_paths=[], system_map=str(system_map) if system_map.is_file() else None,
                 use_cache=False)
    result, files = ix.rebuild()
    ix.write(result, files)
