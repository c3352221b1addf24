"""``kmodkit kernels fetch|list|prune`` for real: Debian kernels that are NOT installed here, downloaded from the
archive with apt-get, unpacked into the cache, then built for, checked, indexed and booted as installed ones.

The kernels are chosen at run time by asking the archive (apt-cache) for releases that are not installed;
no ABI is written here.  Oracles: kmod's modinfo, depmod and modprobe on the fetched tree, the vermagic of
the modules Debian shipped in the fetched image.  Download volume: one 6.1 cloud kernel with its image
(~40 MB) and one 6.12 kernel's headers (~15 MB, a part of it twice for the killed fetch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import IN_CI, need
from terminal import on_terminal

pytestmark = [pytest.mark.network, pytest.mark.slow]

KK = [sys.executable, "-m", "kmodkit"]


def _archive_kernels() -> dict[str, set[str]]:
    """release -> {"headers", "image"} the archive offers, through the same query ``kernels list --available`` makes."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        need("apt-get and dpkg-deb (a Debian machine)")
    from kmodkit.archive import tool as archive

    try:
        return archive.available(archive.tool_for())
    except Exception as exc:  # noqa: BLE001 - an unreachable archive is a skip here, a failure in CI
        if IN_CI:
            raise
        need(f"a reachable Debian archive ({exc})")


def _not_installed(series: str, flavour: str, image: bool) -> str:
    """The newest release of ``series`` (6.1, 6.12) and ``flavour`` the archive has and this machine has not."""
    from kmodkit.kbuild.kernels import flavour_of, version_key

    offered = _archive_kernels()
    wanted = {"headers", "image"} if image else {"headers"}
    names = sorted((r for r, kinds in offered.items()
                    if r.startswith(series + ".") and flavour_of(r) == flavour and wanted <= kinds
                    and not os.path.lexists(f"/lib/modules/{r}")), key=version_key, reverse=True)
    if not names:
        need(f"a {series} {flavour} kernel in the archive that is not installed")
    return names[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One XDG_CACHE_HOME for the whole file, so each kernel is downloaded once."""
    return tmp_path_factory.mktemp("kernels-cache")


def kk(cache: Path, *argv: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    done = subprocess.run(KK + list(argv), capture_output=True, text=True, env=env, cwd=cwd)
    if check:
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done


@pytest.fixture(scope="module")
def k61() -> str:
    """A 6.1 cloud kernel that is not installed (fetched with its image: check, verify, deps, vm need it)."""
    return _not_installed("6.1", "cloud-amd64", image=True)


@pytest.fixture(scope="module")
def k612() -> str:
    """A 6.12 cloud kernel that is not installed (headers only)."""
    return _not_installed("6.12", "cloud-amd64", image=False)


@pytest.fixture(scope="module")
def fetched61(cache: Path, k61: str) -> Path:
    """k61's headers, image and modules in the cache: its root directory."""
    out = json.loads(kk(cache, "kernels", "fetch", k61, "--json").stdout)
    [rec] = out["kernels"]
    assert rec["release"] == k61 and rec["headers"] and rec["image"], rec
    return Path(rec["root"])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("example")  # under /tmp, which a guest sees
    done = subprocess.run(KK + ["new", "hello", "--dir", str(base / "hello")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return base / "hello"


def _vermagic(path: Path) -> str:
    return subprocess.run(["modinfo", "-F", "vermagic", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


# --- the kill test comes first: it wants k612 absent from the cache -------------------------------------


def _kill_when(cache: Path, argv: list[str], ready: object, timeout: float = 300.0) -> None:
    """Start ``kmodkit ARGV``, SIGKILL it as soon as ``ready()`` holds (polled every 20 ms)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = subprocess.Popen(KK + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    end = time.monotonic() + timeout
    try:
        while not ready():  # type: ignore[operator]
            assert proc.poll() is None, "the fetch ended before the point the test kills it at"
            assert time.monotonic() < end, "the kill point was never reached"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # apt-get and dpkg-deb with it, as a kill of the session would
        proc.wait()


def _temps(d: Path) -> list[Path]:
    return [p for p in d.glob(".*.kmodkit-*.tmp")] if d.is_dir() else []


def test_a_killed_fetch_leaves_no_kernel_and_the_next_one_completes(cache: Path, k612: str) -> None:
    roots, packages = cache / "kmodkit/kernels/roots", cache / "kmodkit/kernels/packages"
    assert not (roots / k612).exists()
    fetch = ["kernels", "fetch", "--headers-only", k612]

    def downloading() -> bool:  # some bytes of a package file are in the download temp directory
        return any(f.stat().st_size > 0 for t in _temps(packages) for f in t.glob("*.deb*"))

    _kill_when(cache, fetch, downloading)
    assert not (roots / k612).exists() and not list(packages.glob("*.deb"))  # no half file was kept
    listed = json.loads(kk(cache, "kernels", "list", "--json").stdout)["kernels"]
    assert k612 not in [r["release"] for r in listed]

    # the next fetch completes; killed again while unpacking (its packages are whole by then)
    _kill_when(cache, fetch, lambda: bool(_temps(roots)))
    assert not (roots / k612).exists()
    assert _temps(roots), "the kill did not interrupt the unpacking"
    kept = sorted(p.name for p in packages.glob("*.deb"))
    assert any(n.startswith(f"linux-headers-{k612}_") for n in kept), kept

    out = json.loads(kk(cache, *fetch, "--json").stdout)
    [rec] = out["kernels"]
    assert rec["outcome"] == "fetched" and rec["downloaded"] == 0 and rec["reused"] == len(kept)
    assert (roots / k612 / "kmodkit-kernel.json").is_file()
    assert not _temps(roots) and not _temps(packages)  # the killed runs' leftovers were swept


# --- building for fetched kernels ----------------------------------------------------------------------


def test_build_for_a_fetched_612_kernel_has_its_vermagic(cache: Path, k612: str, project: Path,
                                                         tmp_path: Path) -> None:
    kk(cache, "kernels", "fetch", "--headers-only", k612)
    done = kk(cache, "build", str(project), "-k", k612, "--workdir", str(tmp_path), "--no-check")
    ko = project / "out" / k612 / "hello.ko"
    assert ko.is_file(), done.stdout + done.stderr
    magic = _vermagic(ko)
    assert magic.split()[0] == k612
    # the rest of the vermagic as Debian's own modules of an installed 6.12 kernel of the flavour carry it
    installed = sorted(Path("/lib/modules").glob("6.12.*-cloud-amd64/kernel/fs/fat/fat.ko*"))
    if installed:
        assert magic.split()[1:] == _vermagic(installed[0]).split()[1:]


def test_build_for_a_fetched_61_kernel_has_the_vermagic_of_its_own_modules(cache: Path, k61: str, fetched61: Path,
                                                                          project: Path, tmp_path: Path) -> None:
    done = kk(cache, "build", str(project), "-k", k61, "--workdir", str(tmp_path))
    ko = project / "out" / k61 / "hello.ko"
    assert ko.is_file(), done.stdout + done.stderr
    shipped = next((fetched61 / "lib/modules" / k61 / "kernel").rglob("*.ko"))
    assert _vermagic(ko) == _vermagic(shipped)  # the oracle: a module Debian built for that very kernel
    assert "check: hello.ko loads" in done.stdout


def test_the_unpacked_headers_makefile_includes_the_unpacked_common_headers(fetched61: Path, k61: str) -> None:
    text = (fetched61 / "usr/src" / f"linux-headers-{k61}" / "Makefile").read_text()
    assert "include /usr/src" not in text and "linux-headers-" in text
    # the build link stays as the package ships it: absolute, re-rooted by kmodkit's Root
    assert os.readlink(fetched61 / "lib/modules" / k61 / "build") == f"/usr/src/linux-headers-{k61}"


# --- check, info, deps, verify, index against a fetched kernel ------------------------------------------


def test_check_info_deps_and_verify_find_the_fetched_kernel(cache: Path, k61: str, fetched61: Path,
                                                            project: Path, tmp_path: Path) -> None:
    ko = project / "out" / k61 / "hello.ko"
    if not ko.is_file():
        kk(cache, "build", str(project), "-k", k61, "--workdir", str(tmp_path), "--no-check")
    [verdict] = json.loads(kk(cache, "check", str(ko), "-k", k61, "--json").stdout)
    assert verdict["kernel"] == k61 and verdict["loads"] is True and verdict["refusal"] is None

    moddir = fetched61 / "lib/modules" / k61
    shipped = next(moddir.rglob("nf_tables.ko"))
    info = kk(cache, "info", "-k", k61, "-F", "vermagic", "nf_tables").stdout.strip()
    assert info == _vermagic(shipped)

    # kmod's modprobe on the fetched root is the oracle of deps
    ours = kk(cache, "deps", "-k", k61, "--show-depends", "nf_tables").stdout.split()
    theirs = subprocess.run(["modprobe", "-d", str(fetched61), "-S", k61, "--show-depends", "nf_tables"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert ours == theirs and str(shipped) in ours

    # the fetched image's own key signed its modules: the certificate came out of the cached vmlinuz
    [mod] = json.loads(kk(cache, "verify", "-k", k61, str(shipped), "--json").stdout)["modules"]
    assert mod["verdict"] == "valid" and mod["cert_source"] == f"vmlinuz-{k61}" and mod["kernel_loads"]["enforced"]


def test_the_fetched_module_index_is_depmods(fetched61: Path, k61: str, tmp_path: Path) -> None:
    copy = tmp_path / "root"
    subprocess.run(["cp", "-a", str(fetched61), str(copy)], check=True)
    subprocess.run(["depmod", "-b", str(copy), k61], check=True)
    for name in ("modules.dep", "modules.dep.bin", "modules.alias", "modules.symbols", "modules.builtin.bin"):
        assert (copy / "lib/modules" / k61 / name).read_bytes() == (fetched61 / "lib/modules" / k61 / name).read_bytes(), name


# --- warm cache, list, bad input -------------------------------------------------------------------------


def test_a_second_fetch_downloads_nothing(cache: Path, k61: str, fetched61: Path) -> None:
    [again] = json.loads(kk(cache, "kernels", "fetch", k61, "--json").stdout)["kernels"]
    assert again["outcome"] == "present" and again["downloaded"] == 0
    # unpacked again from the kept package files: still nothing downloaded
    [forced] = json.loads(kk(cache, "kernels", "fetch", k61, "--force", "--json").stdout)["kernels"]
    assert forced["outcome"] == "fetched" and forced["downloaded"] == 0 and forced["reused"] >= 4
    assert (fetched61 / "boot" / f"vmlinuz-{k61}").is_file()


def test_a_fetch_on_a_terminal_shows_progress_and_a_piped_one_does_not(cache: Path, k61: str,
                                                                      fetched61: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "COLUMNS": "120", "TERM": "xterm"}
    status, text = on_terminal(["kernels", "fetch", "--headers-only", "--force", k61], env)
    assert status == 0, text
    assert f"unpack {k61}" in text and "packages" in text  # the bar, drawn on the terminal
    assert f"{k61}: fetched: headers" in text
    piped = kk(cache, "kernels", "fetch", "--headers-only", "--force", k61)
    assert "unpack" not in piped.stderr and piped.stdout.startswith(f"{k61}: fetched")
    # --headers-only does not take away what the cache had: the image was unpacked again too
    assert "image and modules" in piped.stdout and (fetched61 / "boot" / f"vmlinuz-{k61}").is_file()


def test_list_shows_installed_and_fetched_kernels(cache: Path, k61: str, fetched61: Path) -> None:
    rows = {r["release"]: r for r in json.loads(kk(cache, "kernels", "list", "--json").stdout)["kernels"]}
    assert rows[k61]["fetched"] and not rows[k61]["installed"] and rows[k61]["image"] and rows[k61]["size"] > 10**7
    for d in Path("/lib/modules").iterdir():
        if d.is_dir():
            assert rows[d.name]["installed"]
    cloud = json.loads(kk(cache, "kernels", "list", "--flavour", "cloud-amd64", "--json").stdout)["kernels"]
    assert cloud and all(r["release"].endswith("-cloud-amd64") for r in cloud)


def test_a_kernel_the_archive_lacks_is_one_error_line_naming_the_list(cache: Path) -> None:
    done = kk(cache, "kernels", "fetch", "6.1.0-9999-cloud-amd64", check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: 6.1.0-9999-cloud-amd64: ")
    assert "kmodkit kernels list --available" in done.stderr
    bad = kk(cache, "kernels", "fetch", "../etc", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_latest_picks_the_newest_kernels_of_a_flavour_that_are_not_installed(cache: Path, k612: str) -> None:
    from kmodkit.kbuild.kernels import flavour_of, version_key

    kk(cache, "kernels", "fetch", "--headers-only", k612)
    expected = max((r for r, kinds in _archive_kernels().items() if flavour_of(r) == "cloud-amd64"
                    and "headers" in kinds and not os.path.lexists(f"/lib/modules/{r}")), key=version_key)
    [rec] = json.loads(kk(cache, "kernels", "fetch", "--latest", "1", "--flavour", "cloud-amd64", "--headers-only",
                          "--json").stdout)["kernels"]
    assert rec["release"] == expected
    if expected == k612:
        assert rec["outcome"] == "present" and rec["downloaded"] == 0
    for bad in (["--latest", "0"], ["--latest", "1", k612], []):
        done = kk(cache, "kernels", "fetch", *bad, check=False)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, bad


# --- booting a fetched kernel -----------------------------------------------------------------------------


@pytest.mark.vm
def test_vm_run_boots_a_fetched_kernel_and_loads_the_example(cache: Path, k61: str, fetched61: Path,
                                                             project: Path, tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        need("qemu-system-x86")
    ko = project / "out" / k61 / "hello.ko"
    if not ko.is_file():
        kk(cache, "build", str(project), "-k", k61, "--workdir", str(tmp_path), "--no-check")
    done = kk(cache, "vm", "run", "-k", k61, "--runs-dir", str(tmp_path / "runs"), "--timeout", "600", "--json",
              "--", "insmod", str(ko), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = Path(json.loads(done.stdout)["run_dir"])
    log = (run_dir / "kernel.log").read_text(errors="replace")
    assert f"Linux version {k61} " in log  # the guest ran the fetched kernel, not an installed one
    assert "hello" in log and "taints kernel" in log


# --- prune last: it removes what the tests above fetched --------------------------------------------------


def test_prune_frees_the_kernel_and_its_package_files(cache: Path, k612: str) -> None:
    kk(cache, "kernels", "fetch", "--headers-only", k612)
    roots = cache / "kmodkit/kernels/roots"
    before = sum(p.stat().st_size for p in (cache / "kmodkit/kernels").rglob("*") if p.is_file() and not p.is_symlink())
    out = json.loads(kk(cache, "kernels", "prune", k612, "--json").stdout)
    assert out["removed"] == [k612] and out["freed"] > 10**6
    assert any(p.startswith(f"linux-headers-{k612}_") for p in out["packages"])
    assert not (roots / k612).exists()
    after = sum(p.stat().st_size for p in (cache / "kmodkit/kernels").rglob("*") if p.is_file() and not p.is_symlink())
    assert after < before
    gone = kk(cache, "kernels", "prune", k612, check=False)
    assert gone.returncode == 2 and "kmodkit kernels list" in gone.stderr
    done = kk(cache, "kernels", "prune", "--all")
    assert done.stdout.startswith("removed ") or "freed" in done.stdout
    assert not list(roots.iterdir())
