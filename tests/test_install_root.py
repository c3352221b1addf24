"""``kmodkit install`` / ``uninstall`` / ``status --built`` (issue 12) into a throwaway root holding a copy of an
installed kernel's tree (hard links: nothing of the real tree is written).  Oracles: kmod's
``modprobe -d ROOT --show-depends`` reads the index kmodkit wrote; the tree after uninstall is the tree before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need

from kmodkit.kbuild.builder import Build

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

PROJECTS = Path(__file__).parent / "data" / "projects"


def copy_tree(src: Path, dest: Path) -> None:
    """A copy of a kernel's module tree: hard links where the file system allows, else a plain copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["cp", "-al", str(src), str(dest)], capture_output=True).returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, symlinks=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.suffix not in (".ko", ".xz", ".zst") and "cache" not in p.name}


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory, cloud_tree) -> tuple[Path, str]:
    if cloud_tree.headers is None:
        need("no headers for the cloud kernel")
    base = tmp_path_factory.mktemp("install")
    for name in ("core", "probe"):
        shutil.copytree(PROJECTS / name, base / name)
        r = Build(base / name, kernels=[cloud_tree.release], workdir=base / "work").run().results[0]
        assert r.ok, r.problem
    return base, cloud_tree.release


def test_install_indexes_both_projects_and_uninstall_undoes_exactly_that(projects: tuple[Path, str],
                                                                          tmp_path: Path) -> None:
    base, kver = projects
    root = tmp_path / "root"
    copy_tree(Path("/lib/modules") / kver, root / "lib" / "modules" / kver)
    moddir = root / "lib" / "modules" / kver
    before = _files(moddir)
    for name in ("core", "probe"):
        proc = _cli("install", str(base / name), "--root", str(root))
        assert proc.returncode == 0, proc.stderr
    assert (moddir / "updates" / "fleetmon" / "fleetmon.ko").is_file()  # the manifest's location
    assert (moddir / "updates" / "fleetmon_probe.ko").is_file()
    # the oracle: kmod's modprobe reads kmodkit's index and loads the core first
    deps = subprocess.run(["modprobe", "-d", str(root), "-S", kver, "--show-depends", "fleetmon_probe"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert deps == [f"insmod {moddir}/updates/fleetmon/fleetmon.ko ", f"insmod {moddir}/updates/fleetmon_probe.ko "]
    assert (root / "etc/modules-load.d/kmodkit-fleetmon.conf").read_text().splitlines()[1:] == ["fleetmon"]
    assert (root / "etc/modprobe.d/kmodkit-fleetmon.conf").read_text().splitlines()[1:] == \
        ["options fleetmon interval=10"]
    state = json.loads((root / "var/lib/kmodkit/installed.json").read_text())
    assert sorted(state["projects"][str(base / "core")]["kernels"][kver]) == [
        f"/lib/modules/{kver}/updates/fleetmon/fleetmon.ko", f"/lib/modules/{kver}/updates/fleetmon/fleetmon_jiffies.ko"]
    status = json.loads(_cli("status", "--built", str(base / "core"), "--root", str(root), "--json").stdout)
    mine = [m for m in status["modules"] if m["kernel"] == kver]
    assert [(m["module"], m["built"], m["signed"], m["current"]) for m in mine] == [
        ("fleetmon", True, False, True), ("fleetmon_jiffies", True, False, True)]
    for name in ("probe", "core"):
        proc = _cli("uninstall", str(base / name), "--root", str(root))
        assert proc.returncode == 0, proc.stderr
    assert not (moddir / "updates").exists() and not (root / "etc/modules-load.d/kmodkit-fleetmon.conf").exists()
    assert json.loads((root / "var/lib/kmodkit/installed.json").read_text())["projects"] == {}
    after = _files(moddir)
    assert after.keys() == before.keys()
    # kmodkit's index of the tree as it was is depmod's, byte for byte
    assert after["modules.dep"] == before["modules.dep"] and after["modules.alias.bin"] == before["modules.alias.bin"]


def test_uninstall_keeps_a_file_changed_since_and_install_reports_each_kernel(projects: tuple[Path, str],
                                                                              tmp_path: Path) -> None:
    base, kver = projects
    root = tmp_path / "root"
    copy_tree(Path("/lib/modules") / kver, root / "lib" / "modules" / kver)
    (root / "lib" / "modules" / "6.0.0-0-notbuilt-amd64").mkdir()
    proc = _cli("install", str(base / "probe"), "--root", str(root), "-k", "6.0.0-0-notbuilt-amd64", "-k", kver)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: {base}/probe/out/6.0.0-0-notbuilt-amd64/fleetmon_probe.ko: is not built for "
                           f"6.0.0-0-notbuilt-amd64; kmodkit build {base}/probe -k 6.0.0-0-notbuilt-amd64\n")
    installed = root / "lib" / "modules" / kver / "updates" / "fleetmon_probe.ko"
    assert installed.is_file()
    installed.write_bytes(b"replaced by hand")
    proc = _cli("uninstall", str(base / "probe"), "--root", str(root))
    assert proc.returncode == 0 and f"warning: {installed}: changed since kmodkit installed it" in proc.stderr
    assert installed.read_bytes() == b"replaced by hand"
