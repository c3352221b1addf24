"""``kmodkit test`` without booting: what the script is given (every module in load order, other
projects' first) and what is refused before any VM starts.  The booted runs are test_project_test_vm.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree
from kmodkit.errors import ItemError, UserError
from kmodkit.vm.testrun import ProjectTest, load_order

PROJECTS = Path(__file__).parent / "data" / "projects"


def _kk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True)


def _hello(tmp_path: Path) -> Path:
    done = _kk("new", "hello", "--dir", str(tmp_path / "hello"))
    assert done.returncode == 0, done.stderr
    return tmp_path / "hello"


@pytest.mark.kernel
@pytest.mark.slow
def test_modules_come_in_load_order_after_the_projects_they_depend_on(tmp_path: Path, cloud_tree: KernelTree
                                                                      ) -> None:
    for name in ("core", "probe"):
        shutil.copytree(PROJECTS / name, tmp_path / name)
    (tmp_path / "probe" / "t.sh").write_text("#!/bin/sh\n")
    with open(tmp_path / "probe" / "kmodkit.toml", "a") as f:
        f.write('\n[test]\nscript = "t.sh"\n')
    for name in ("core", "probe"):
        done = _kk("build", str(tmp_path / name), "-k", cloud_tree.release, "--no-check")
        assert done.returncode == 0, done.stdout + done.stderr
    core = tmp_path / "core" / "out" / cloud_tree.release
    # fleetmon_jiffies needs fleetmon (its depends=, read from the built file): given backwards, it comes after
    assert load_order([core / "fleetmon_jiffies.ko", core / "fleetmon.ko"]) == [core / "fleetmon.ko",
                                                                                core / "fleetmon_jiffies.ko"]
    test = ProjectTest(tmp_path / "probe", kernels=[cloud_tree.release])
    assert test.modules_for(cloud_tree.release) == [
        core / "fleetmon.ko", core / "fleetmon_jiffies.ko",
        tmp_path / "probe" / "out" / cloud_tree.release / "fleetmon_probe.ko"]
    # a kernel the depended-on project is not built for: the fix names that project
    shutil.rmtree(core)
    missing = test.modules_for(cloud_tree.release)
    assert missing == ItemError(str(core / "fleetmon.ko"), f"is not built for {cloud_tree.release}",
                                f"kmodkit build {tmp_path / 'core'} -k {cloud_tree.release}")


def test_a_file_that_is_no_module_keeps_its_place(tmp_path: Path) -> None:
    # a corrupt file made here (reality has no such build output): insmod is left to say what is wrong
    files = [tmp_path / "b.ko", tmp_path / "a.ko"]
    for f in files:
        f.write_bytes(b"not an ELF file")
    assert load_order(files) == files


def test_a_manifest_without_a_test_script_is_refused_with_the_fix(tmp_path: Path) -> None:
    project = _hello(tmp_path)
    manifest = project / "kmodkit.toml"
    manifest.write_text(manifest.read_text().replace('script = "tests/vm-test.sh"', ""))
    with pytest.raises(UserError) as err:
        ProjectTest(project, kernels=["6.1.0-1-amd64"])
    assert str(err.value) == (f"{manifest}: names no test script; "
                              'add [test] script = "tests/vm-test.sh" (kmodkit new writes one)')
    done = _kk("test", str(project), "-k", "6.1.0-1-amd64")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {err.value}\n"


def test_a_missing_script_and_bad_options_are_refused_before_any_boot(tmp_path: Path) -> None:
    project = _hello(tmp_path)
    (project / "tests" / "vm-test.sh").unlink()
    done = _kk("test", str(project), "-k", "6.1.0-1-amd64")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {project / 'tests' / 'vm-test.sh'}: the test script kmodkit.toml names "
                                  "does not exist;"), done.stderr
    project = _hello(tmp_path / "2")
    done = _kk("test", str(project), "-k", "6.1.0-1-amd64", "--all-installed")
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
    done = _kk("test", str(project), "-k", "6.1.0-1-amd64", "-j", "0")
    assert done.returncode == 2 and done.stderr.startswith("error: -j 0: ")
    done = _kk("test", str(project), "-k", "../x")
    assert done.returncode == 2 and done.stderr.startswith("error: -k '../x': ")


@pytest.mark.kernel
def test_a_mistyped_kernel_is_refused_with_the_close_names(tmp_path: Path, cloud_tree: KernelTree) -> None:
    project = _hello(tmp_path)
    typo = cloud_tree.release[:-1]
    done = _kk("test", str(project), "-k", typo)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: -k {typo}: is not an installed kernel (no /lib/modules/{typo}); "
                                  f"did you mean {cloud_tree.release}"), done.stderr
