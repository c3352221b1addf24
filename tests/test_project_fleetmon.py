"""The vendor-driver proof of issue 12, for every installed kernel: core (two modules, a shared header, one
exporting to the other, a subdirectory) and probe (a second project using core's header and exports) are
built and signed for every kernel with headers, installed into a throwaway root holding copies of every
installed kernel's tree, and ``kmodkit deps --show-depends`` of the installed tree loads core before probe.
Oracles: kmod's modinfo (vermagic, signer, depends) and ``modprobe -d ROOT --show-depends``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit.kbuild.builder import Build
from conftest import need

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

PROJECTS = Path(__file__).parent / "data" / "projects"


def _modinfo(path: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True, check=True).stdout.strip()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, kernel_trees: list) -> tuple[Path, Path, list[str]]:
    kernels = [t.release for t in kernel_trees if t.headers]
    if not kernels:
        need("kernel headers")
    base = tmp_path_factory.mktemp("fleet")
    keys = base / "keys"
    keys.mkdir()
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "30", "-batch", "-x509",
                    "-subj", "/CN=fleetmon proof", "-newkey", "rsa:2048", "-keyout", str(keys / "signing.pem"),
                    "-outform", "PEM", "-out", str(keys / "signing.crt")], check=True, capture_output=True)
    for name in ("core", "probe"):
        shutil.copytree(PROJECTS / name, base / name)
        with open(base / name / "kmodkit.toml", "a") as f:
            f.write('\n[signing]\nkey = "../keys/signing.pem"\ncert = "../keys/signing.crt"\n')
        report = Build(base / name, kernels=kernels, workdir=base / "work").run()
        assert report.ok, [(r.kernel, r.problem) for r in report.results if not r.ok]
    root = base / "root"
    for release in kernels:
        dest = root / "lib" / "modules" / release
        dest.parent.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["cp", "-al", f"/lib/modules/{release}", str(dest)], capture_output=True).returncode:
            shutil.copytree(f"/lib/modules/{release}", dest, symlinks=True)
    for name in ("core", "probe"):
        proc = _cli("install", str(base / name), "--root", str(root))
        assert proc.returncode == 0, proc.stderr
    return base, root, kernels


def test_both_projects_are_built_and_signed_for_every_kernel(fleet: tuple[Path, Path, list[str]]) -> None:
    base, _, kernels = fleet
    for release in kernels:
        for project, module in (("core", "fleetmon"), ("core", "fleetmon_jiffies"), ("probe", "fleetmon_probe")):
            ko = base / project / "out" / release / f"{module}.ko"
            assert _modinfo(ko, "vermagic").split()[0] == release
            assert _modinfo(ko, "signer") == "fleetmon proof"
        assert _modinfo(base / "probe" / "out" / release / "fleetmon_probe.ko", "depends") == "fleetmon"
        assert _modinfo(base / "core" / "out" / release / "fleetmon_jiffies.ko", "depends") == "fleetmon"


def test_the_installed_tree_loads_core_before_its_users(fleet: tuple[Path, Path, list[str]]) -> None:
    _, root, kernels = fleet
    for release in kernels:
        moddir = root / "lib" / "modules" / release
        want = [f"insmod {moddir}/updates/fleetmon/fleetmon.ko", f"insmod {moddir}/updates/fleetmon_probe.ko"]
        ours = _cli("deps", "-b", str(root), "-k", release, "--show-depends", "fleetmon_probe")
        assert ours.returncode == 0, ours.stderr
        assert [line.rstrip() for line in ours.stdout.splitlines()] == want
        kmod = subprocess.run(["modprobe", "-d", str(root), "-S", release, "--show-depends", "fleetmon_probe"],
                              capture_output=True, text=True, check=True).stdout
        assert [line.rstrip() for line in kmod.splitlines()] == want
        jiffies = _cli("deps", "-b", str(root), "-k", release, "--show-depends", "fleetmon_jiffies").stdout
        assert [line.rstrip() for line in jiffies.splitlines()] == \
            [want[0], f"insmod {moddir}/updates/fleetmon/fleetmon_jiffies.ko"]
