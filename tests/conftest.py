"""The test bed: real Debian kernel trees installed on this machine, found at run time.

Tests that need a tree ask for a fixture below.  When the tree is missing
they skip on a developer's machine and FAIL in CI (CI=true): CI must never
pass by skipping what it was meant to check.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MODULES_ROOT = Path(os.environ.get("KMODKIT_TEST_MODULES_ROOT", "/lib/modules"))

# -- hermetic HOME and XDG_CACHE_HOME --------------------------------------------------------------
# The user's real cache, found before anything changes the environment.  Workers started by
# pytest-xdist inherit the controller's already-isolated environment, so the controller hands the
# real path down in KMODKIT_TEST_REAL_CACHE.
_REAL_CACHE_VAR = "KMODKIT_TEST_REAL_CACHE"
if _REAL_CACHE_VAR not in os.environ:
    os.environ[_REAL_CACHE_VAR] = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
#: the cache kmodkit would use outside the tests: no test may write there
REAL_CACHE = Path(os.environ[_REAL_CACHE_VAR]) / "kmodkit"
_SNAPSHOT = pytest.StashKey[dict[str, tuple[int, int]]]()
_SESSION_HOME = pytest.StashKey[Path]()


def _snapshot(top: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``top`` with its size and mtime, and the names beside ``top`` (the rest of
    ~/.cache, where a leaked tool would start a directory of its own)."""
    found: dict[str, tuple[int, int]] = {}
    try:
        found.update((f"../{name}", (0, 0)) for name in os.listdir(top.parent))
    except OSError:
        pass
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            found[os.path.relpath(path, top)] = (st.st_size, st.st_mtime_ns)
    if top.exists():
        found["."] = (0, top.stat().st_mtime_ns)
    return found


def pytest_configure(config: pytest.Config) -> None:
    """Give the whole session a private HOME before any fixture runs (session- and module-scoped ones
    too) and before any subprocess starts; each test then gets its own (the ``home`` fixture)."""
    config.stash[_SNAPSHOT] = _snapshot(REAL_CACHE)
    session_home = config.stash[_SESSION_HOME] = Path(tempfile.mkdtemp(prefix="kmodkit-test-home-"))
    os.environ["HOME"] = str(session_home)
    os.environ["XDG_CACHE_HOME"] = str(session_home / ".cache")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any test wrote into the user's real kmodkit cache; remove the session's HOME."""
    if _SESSION_HOME in session.config.stash:
        shutil.rmtree(session.config.stash[_SESSION_HOME], ignore_errors=True)
    before = session.config.stash.get(_SNAPSHOT, None)
    if before is None:
        return
    after = _snapshot(REAL_CACHE)
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        message = (f"error: the tests wrote into the real cache {REAL_CACHE}: {', '.join(changed[:5])}; "
                   "a test or fixture escaped the 'home' fixture (HOME / XDG_CACHE_HOME)")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(message, red=True)
        else:
            print(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's own HOME, with XDG_CACHE_HOME inside it (tuxmake's ``home`` fixture).

    Set in ``os.environ``, so subprocesses inherit it.  Session- and module-scoped fixtures run
    before this and see the session's private HOME set in :func:`pytest_configure`.
    """
    path = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(path / ".cache"))
    return path


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
