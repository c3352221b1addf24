"""``kmodkit test`` in booted kernels (issue 12): the manifest's test script runs in a VM per kernel with
the project's built modules as its arguments, in load order.

Boots of the real Debian kernels under QEMU (vm run's library): the example's script passes on 6.1 cloud
and 6.12 cloud; a script that fails makes its kernel fail while a kernel the project is not built for fails
with the fix and the batch goes on; a module that oopses while the script carries on fails its kernel and
the report comes back decoded to the module's source line; the vendor-shaped probe project gets core's two
modules and its own, in dependency order, and all three load.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree, discover_trees, need
from test_oops_decode import COMMON_H

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.kernel]

REPO = Path(__file__).resolve().parent.parent
PROJECTS = Path(__file__).parent / "data" / "projects"


def _kk(*args: str, cwd: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True, cwd=cwd)


def _tree(pred: object, what: str) -> KernelTree:
    if shutil.which("qemu-system-x86_64") is None:
        need("qemu-system-x86")
    tree = next((t for t in discover_trees() if t.headers and t.vmlinuz and pred(t)), None)  # type: ignore[operator]
    if tree is None:
        need(what)
    assert tree is not None
    return tree


def _cloud61() -> KernelTree:
    return _tree(lambda t: t.flavour == "cloud-amd64" and t.series == "6.1", "a 6.1 cloud kernel with its headers")


def _cloud612() -> KernelTree:
    return _tree(lambda t: t.flavour == "cloud-amd64" and t.series == "6.12", "a 6.12 cloud kernel with its headers")


def _build(project: Path, *kvers: str) -> None:
    done = _kk("build", str(project), *(a for k in kvers for a in ("-k", k)), "--no-check")
    assert done.returncode == 0, done.stdout + done.stderr


def _test(project: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    done = _kk("test", str(project), "--runs-dir", str(project / "runs"), "--json", *args)
    assert done.stdout, done.stderr
    return done, json.loads(done.stdout)


def test_the_examples_script_passes_on_6_1_and_6_12_cloud(tmp_path: Path) -> None:
    old, new = _cloud61(), _cloud612()
    project = tmp_path / "hello"
    shutil.copytree(REPO / "example" / "hello", project, ignore=shutil.ignore_patterns("out", ".kmodkit"))
    _build(project, old.release, new.release)
    done, report = _test(project, "-k", old.release, "-k", new.release)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["ok"] and report["passed"] == 2 and report["jobs"] == 1
    results = report["results"]
    assert isinstance(results, list) and [r["kernel"] for r in results] == [old.release, new.release]
    for r in results:
        assert r["verdict"] == "pass" and r["exit_status"] == 0 and r["reports"] == [], r
        assert r["modules"] == [str(project / "out" / r["kernel"] / "hello.ko")]
        assert r["output_tail"].endswith("PASS: hello")  # the script's own last line
        assert Path(r["run_dir"], "kernel.log").is_file() and r["seconds"] > 0


def test_a_failing_script_fails_its_kernel_and_an_unbuilt_kernel_fails_with_the_fix(tmp_path: Path) -> None:
    tree = _cloud61()
    other = next((t for t in discover_trees() if t.release != tree.release and t.vmlinuz), None)
    if other is None:
        need("a second installed kernel")
    assert other is not None
    project = tmp_path / "hello"
    shutil.copytree(REPO / "example" / "hello", project, ignore=shutil.ignore_patterns("out", ".kmodkit"))
    script = project / "tests" / "vm-test.sh"
    # the version check fails: the script says so and exits 1
    script.write_text(script.read_text().replace("version=", "version=not-", 1))
    _build(project, tree.release)
    done = _kk("test", str(project), "--runs-dir", str(project / "runs"), "-k", other.release, "-k", tree.release)
    assert done.returncode == 1, done.stdout + done.stderr
    table = done.stdout.splitlines()
    assert table[0].split() == ["KERNEL", "RESULT", "EXIT", "SECONDS"]
    assert table[1].split()[:3] == [other.release, "ERROR", "-"]
    assert table[2].split()[:3] == [tree.release, "FAIL", "1"]
    assert table[-1] == "0 of 2 kernels passed"
    missing = project / "out" / other.release / "hello.ko"
    assert (f"error: {missing}: is not built for {other.release}; kmodkit build {project} -k {other.release}"
            in done.stderr.splitlines())
    assert "  | FAIL: version is not not-" in done.stderr  # the script's output, shown for the failed kernel


def test_a_module_that_oopses_fails_its_kernel_and_the_report_is_decoded(tmp_path: Path) -> None:
    tree = _cloud61()
    project = tmp_path / "crashy"
    (project / "tests").mkdir(parents=True)
    (project / "crashy_common.h").write_text(COMMON_H)
    (project / "crashy_null.c").write_text('#define CRASHY_MODE 0\n#include "crashy_common.h"\n')
    (project / "Kbuild").write_text("obj-m := crashy_null.o\n")
    (project / "kmodkit.toml").write_text('[module]\nname = "crashy_null"\nlicense = "GPL"\ninclude = ["."]\n'
                                          '[test]\nscript = "tests/t.sh"\n')
    # the insmod dies in the oops; the script carries on and exits 0: the kernel still fails
    (project / "tests" / "t.sh").write_text('#!/bin/sh\ninsmod "$1"; echo "insmod $?"; exit 0\n')
    (project / "tests" / "t.sh").chmod(0o755)
    _build(project, tree.release)
    done, report = _test(project, "-k", tree.release)
    assert done.returncode == 1, done.stderr
    (r,) = report["results"]  # type: ignore[misc]
    assert r["verdict"] == "crash" and r["exit_status"] == 0 and not r["passed"], r
    kinds = [d["kind"] for d in r["reports"]]
    assert "null-deref" in kinds, kinds
    oops = r["reports"][kinds.index("null-deref")]
    assert oops["guilty"]["module"] == "crashy_null"
    assert any(loc["file"].endswith("crashy_common.h") for loc in oops["guilty"]["source"]), oops["guilty"]
    # the text view names the report and where it was decoded to
    text = _kk("test", str(project), "--runs-dir", str(project / "runs2"), "-k", tree.release)
    assert text.returncode == 1 and f"{tree.release}  CRASH" in text.stdout
    assert "null-deref" in text.stderr and "crashy_common.h:" in text.stderr, text.stderr


def test_the_vendor_projects_modules_load_in_dependency_order(tmp_path: Path) -> None:
    tree = _cloud61()
    for name in ("core", "probe"):
        shutil.copytree(PROJECTS / name, tmp_path / name)
    probe = tmp_path / "probe"
    (probe / "tests").mkdir()
    # each module in the order given, then what the kernel says: fleetmon used by its two users
    (probe / "tests" / "vm-test.sh").write_text(
        '#!/bin/sh\nset -e\nfor ko in "$@"; do insmod "$ko"; echo "loaded ${ko##*/}"; done\n'
        'grep "^fleetmon " /proc/modules\n'
        'for m in fleetmon_probe fleetmon_jiffies fleetmon; do rmmod $m; done\n'
        'dmesg | grep -q "fleetmon: source probe registered"\n')
    (probe / "tests" / "vm-test.sh").chmod(0o755)
    with open(probe / "kmodkit.toml", "a") as f:
        f.write('\n[test]\nscript = "tests/vm-test.sh"\n')
    _build(tmp_path / "core", tree.release)
    _build(probe, tree.release)
    done, report = _test(probe, "-k", tree.release)
    assert done.returncode == 0, done.stdout + done.stderr
    (r,) = report["results"]  # type: ignore[misc]
    core_out, probe_out = tmp_path / "core" / "out" / tree.release, probe / "out" / tree.release
    # core's modules (the project probe depends on) first, each after what its depends= names
    assert r["modules"] == [str(core_out / "fleetmon.ko"), str(core_out / "fleetmon_jiffies.ko"),
                            str(probe_out / "fleetmon_probe.ko")]
    lines = r["output_tail"].splitlines()
    assert lines[:3] == ["loaded fleetmon.ko", "loaded fleetmon_jiffies.ko", "loaded fleetmon_probe.ko"]
    users = lines[3].split()[3].strip(",").split(",")
    assert sorted(users) == ["fleetmon_jiffies", "fleetmon_probe"]
