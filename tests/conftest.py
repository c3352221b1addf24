"""The test bed: real Debian kernel trees installed on this machine, found at run time.

Tests that need a tree ask for a fixture below.  When the tree is missing
they skip on a developer's machine and FAIL in CI (CI=true): CI must never
pass by skipping what it was meant to check.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MODULES_ROOT = Path(os.environ.get("KMODKIT_TEST_MODULES_ROOT", "/lib/modules"))


@dataclass(frozen=True)
class KernelTree:
    """One installed kernel: its module tree, headers and image."""

    release: str  #: e.g. 6.1.0-56-amd64
    moddir: Path  #: /lib/modules/RELEASE
    headers: Path | None  #: the Kbuild tree (build link), None when headers are missing
    vmlinuz: Path | None  #: /boot/vmlinuz-RELEASE, None when absent

    @property
    def flavour(self) -> str:
        """``cloud-amd64`` or ``amd64`` (the part after the ABI)."""
        return "cloud-amd64" if self.release.endswith("-cloud-amd64") else self.release.rsplit("-", 1)[-1]

    @property
    def series(self) -> str:
        """``6.1`` or ``6.12``."""
        m = re.match(r"(\d+\.\d+)", self.release)
        return m.group(1) if m else ""

    def modules(self) -> list[Path]:
        """Every module file of the tree, sorted."""
        return sorted(
            Path(p) for p in glob.glob(f"{self.moddir}/**/*.ko*", recursive=True) if re.search(r"\.ko(\.\w+)?$", p)
        )

    @property
    def compressed(self) -> bool:
        """Whether the tree's modules are compressed."""
        mods = self.modules()
        return bool(mods) and mods[0].suffix != ".ko"


def _version_key(release: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", release)]


def discover_trees(root: Path = MODULES_ROOT) -> list[KernelTree]:
    """Installed kernel trees with modules, newest first."""
    trees = []
    for moddir in root.glob("*"):
        if not (moddir / "kernel").is_dir():
            continue
        build = moddir / "build"
        headers = build.resolve() if (build / "Makefile").exists() else None
        vmlinuz = Path("/boot") / f"vmlinuz-{moddir.name}"
        trees.append(KernelTree(moddir.name, moddir, headers, vmlinuz if vmlinuz.exists() else None))
    return sorted(trees, key=lambda t: _version_key(t.release), reverse=True)


def need(what: str) -> None:
    """Skip (developer) or fail (CI) because ``what`` is missing on this machine."""
    message = f"{what} is not installed; run 'scripts/bootstrap setup'"
    if IN_CI:
        pytest.fail(f"CI must not skip: {message}")
    pytest.skip(message)


def _pick(pred: object, what: str) -> KernelTree:
    for tree in discover_trees():
        if pred(tree):  # type: ignore[operator]
            return tree
    need(what)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def kernel_trees() -> list[KernelTree]:
    """Every installed Debian kernel tree (at least one, or skip/fail)."""
    trees = discover_trees()
    if not trees:
        need("a Debian kernel tree under /lib/modules")
    return trees


@pytest.fixture(scope="session")
def generic_tree() -> KernelTree:
    """The newest 6.1 generic amd64 tree (~4,000 uncompressed modules, with 9p for VM boots)."""
    return _pick(lambda t: t.flavour == "amd64" and t.series == "6.1", "a 6.1 generic amd64 kernel")


@pytest.fixture(scope="session")
def cloud_tree() -> KernelTree:
    """The newest 6.1 cloud-amd64 tree."""
    return _pick(lambda t: t.flavour == "cloud-amd64" and t.series == "6.1", "a 6.1 cloud-amd64 kernel")


@pytest.fixture(scope="session")
def xz_tree() -> KernelTree:
    """The newest tree whose modules are .ko.xz (Debian 6.12)."""
    return _pick(lambda t: t.compressed, "a kernel with xz-compressed modules (6.12 cloud-amd64)")


@pytest.fixture(scope="session")
def sample_module(generic_tree: KernelTree) -> Path:
    """A small real module with a dependency and an alias: af_key.ko."""
    hits = [p for p in generic_tree.modules() if p.name == "af_key.ko"]
    if not hits:
        need("af_key.ko in the generic tree")
    return hits[0]


#: kmod 34 from Debian 13 (trixie), unpacked by scripts/bootstrap (install_kmod34) and run with trixie's ld.so
KMOD34_RUN = Path(__file__).resolve().parent.parent / ".cache" / "kmod34" / "run"


@pytest.fixture(scope="session")
def kmod34() -> list[str]:
    """The command prefix that runs a kmod 34 tool: ``kmod34 + ["depmod", "-b", ...]`` (skip/fail when absent)."""
    if not os.access(KMOD34_RUN, os.X_OK):
        need("kmod 34 (Debian 13's kmod, the second oracle)")
    return [str(KMOD34_RUN)]
