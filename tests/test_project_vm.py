"""The vendor-driver proof of issue 12 in a booted kernel: core and probe, built for the newest generic
kernel and installed into a throwaway root, load in the order ``kmodkit deps --show-depends`` reads from that
root's index (fleetmon before its users), work (the probe registers with the core) and unload in reverse.
kmod's insmod loads each file of the plan; kmodkit unloads.  One boot of the real Debian kernel under QEMU (`kmodkit vm run`, the host's root shared read-only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import discover_trees, need

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.kernel]

PROJECTS = Path(__file__).parent / "data" / "projects"

GUEST = r'''
import json, subprocess, sys
root, kver = sys.argv[1], sys.argv[2]
kk = [sys.executable, "-m", "kmodkit"]
report = {}
deps = subprocess.run(kk + ["deps", "-b", root, "-k", kver, "--show-depends", "fleetmon_probe", "fleetmon_jiffies"],
                      capture_output=True, text=True)
# modprobe -a prints a shared dependency once per name that needs it; it is loaded once
report["plan"] = list(dict.fromkeys(l.split()[1] for l in deps.stdout.splitlines() if l.startswith("insmod ")))
report["loads"] = []
for path in report["plan"]:
    # kmod's insmod: kmodkit load PATH looks for a file's dependencies beside it or in /lib/modules/KVER only,
    # and this tree is the throwaway root's (the guest's /lib/modules is the host's, read-only)
    done = subprocess.run(["insmod", path], capture_output=True, text=True)
    report["loads"].append({"path": path, "rc": done.returncode, "err": done.stderr[-500:]})
with open("/proc/modules") as f:
    report["modules"] = {l.split()[0]: l.split()[3] for l in f if l.startswith("fleetmon")}
report["unloads"] = [subprocess.run(kk + ["unload", name], capture_output=True, text=True).returncode
                     for name in ("fleetmon_probe", "fleetmon_jiffies", "fleetmon")]
with open("/proc/modules") as f:
    report["left"] = [l.split()[0] for l in f if l.startswith("fleetmon")]
print("FLEET-REPORT " + json.dumps(report))
'''


def test_core_and_probe_load_in_dependency_order_in_a_booted_kernel(tmp_path_factory: pytest.TempPathFactory) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        need("qemu-system-x86")
    tree = next((t for t in discover_trees() if t.flavour == "amd64" and t.headers and t.vmlinuz), None)
    if tree is None:
        need("a Debian generic amd64 kernel with its headers")
    assert tree is not None
    base = tmp_path_factory.mktemp("fleetvm")  # under the host's /tmp, which the guest sees
    kk = [sys.executable, "-m", "kmodkit"]
    root = base / "root"
    root.joinpath("lib", "modules").mkdir(parents=True)
    subprocess.run(["cp", "-al", str(tree.moddir), str(root / "lib" / "modules" / tree.release)], check=True)
    for name in ("core", "probe"):
        shutil.copytree(PROJECTS / name, base / name)
        for step in (["build", str(base / name), "-k", tree.release, "--workdir", str(base / "work")],
                     ["install", str(base / name), "--root", str(root)]):
            done = subprocess.run(kk + step, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
    (base / "guest.py").write_text(GUEST)
    done = subprocess.run(kk + ["vm", "run", "-k", tree.release, "--runs-dir", str(base / "runs"), "--timeout", "600",
                                "--json", "--", sys.executable, str(base / "guest.py"), str(root), tree.release],
                          capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(l for l in done.stderr.splitlines() if l.startswith("FLEET-REPORT "))
    report = json.loads(line.split(" ", 1)[1])
    updates = f"{root}/lib/modules/{tree.release}/updates"
    assert report["plan"] == [f"{updates}/fleetmon/fleetmon.ko", f"{updates}/fleetmon_probe.ko",
                              f"{updates}/fleetmon/fleetmon_jiffies.ko"]
    assert all(load["rc"] == 0 for load in report["loads"]), report["loads"]
    # fleetmon is used by its two users (the 4th /proc/modules field lists them)
    assert sorted(report["modules"]["fleetmon"].strip(",").split(",")) == ["fleetmon_jiffies", "fleetmon_probe"]
    assert report["unloads"] == [0, 0, 0] and report["left"] == []
    log = Path(json.loads(done.stdout)["run_dir"], "kernel.log").read_text(errors="replace")
    assert "fleetmon: source probe registered" in log and "fleetmon: source jiffies registered" in log
