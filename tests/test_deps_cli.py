"""``kmodkit deps`` beyond modprobe: --reverse, --why, --tree, --json, and bad modprobe.d lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree

KMODKIT = [sys.executable, "-m", "kmodkit"]


def deps(tree: KernelTree, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(KMODKIT + ["deps", "-k", tree.release, *args], capture_output=True, text=True)


@pytest.mark.kernel
def test_reverse_lists_every_module_whose_dep_line_names_it(generic_tree: KernelTree) -> None:
    expected = sorted(
        Path(line.split(":", 1)[0]).name.split(".", 1)[0].replace("-", "_")
        for line in (generic_tree.moddir / "modules.dep").read_text().splitlines()
        if any(Path(d).name.split(".", 1)[0] == "xfrm_algo" for d in line.split(":", 1)[1].split())
    )
    proc = deps(generic_tree, "--reverse", "xfrm_algo")
    assert proc.returncode == 0
    assert proc.stdout.split() == expected and "af_key" in expected


@pytest.mark.kernel
def test_why_and_tree_follow_direct_dependencies(generic_tree: KernelTree) -> None:
    proc = deps(generic_tree, "--why", "af_key", "xfrm_algo")
    assert proc.stdout == "af_key -> xfrm_algo\n"
    unrelated = deps(generic_tree, "--why", "xfrm_algo", "ext4")
    assert unrelated.returncode == 1 and "does not depend on" in unrelated.stdout
    tree = deps(generic_tree, "--tree", "ext4").stdout.splitlines()
    assert tree[0] == "ext4" and {"  jbd2", "  mbcache", "  crc16"} <= set(tree)


@pytest.mark.kernel
def test_json_plan_carries_kinds_and_reasons(generic_tree: KernelTree) -> None:
    proc = deps(generic_tree, "--json", "ext4", "no_such_module_q")
    assert proc.returncode == 1
    plans = json.loads(proc.stdout)
    ext4, missing = plans
    assert missing["found"] == [] and missing["steps"] == []
    assert missing["error"]["what"] == "no_such_module_q" and missing["error"]["exit"] == 1  # --json's error object
    reasons = {s["name"]: s["reason"] for s in ext4["steps"]}
    assert reasons["ext4"] == "target" and reasons["jbd2"] == "dependency"
    assert "softdep-pre" in reasons.values()  # ext4's crc32c softdep
    assert all(s["kind"] == "insmod" and s["path"].endswith(".ko") for s in ext4["steps"])


@pytest.mark.kernel
def test_bad_modprobe_d_lines_are_reported_with_file_and_line(generic_tree: KernelTree, tmp_path: Path) -> None:
    (tmp_path / "bad.conf").write_text("options af_key x=1\nbogus words here\noptions\n")
    proc = deps(generic_tree, "-C", str(tmp_path), "af_key")
    ref = subprocess.run(["modprobe", "-S", generic_tree.release, "-C", str(tmp_path), "--show-depends", "af_key"],
                         capture_output=True, text=True)
    assert proc.stdout == ref.stdout and proc.returncode == ref.returncode == 0
    assert f"{tmp_path}/bad.conf line 2: ignoring bad line starting with 'bogus'" in proc.stderr
    assert f"{tmp_path}/bad.conf line 3: ignoring bad line starting with 'options'" in proc.stderr


@pytest.mark.kernel
def test_module_missing_from_disk_is_reported(generic_tree: KernelTree, tmp_path: Path) -> None:
    """A tree whose modules.dep.bin names a file that is gone (the file removed in the test's copy)."""
    moddir = tmp_path / "lib" / "modules" / generic_tree.release
    (moddir / "kernel" / "net" / "key").mkdir(parents=True)
    for name in ("modules.dep.bin", "modules.alias.bin", "modules.symbols.bin", "modules.builtin.bin",
                 "modules.softdep"):
        (moddir / name).write_bytes((generic_tree.moddir / name).read_bytes())
    proc = subprocess.run(KMODKIT + ["deps", "-b", str(tmp_path), "-k", generic_tree.release, "-C", str(tmp_path),
                                     "af_key"], capture_output=True, text=True)
    ref = subprocess.run(["modprobe", "-d", str(tmp_path), "-S", generic_tree.release, "-C", str(tmp_path),
                          "--show-depends", "af_key"], capture_output=True, text=True)
    assert proc.stdout == ref.stdout  # modprobe prints the plan regardless
    assert proc.returncode == ref.returncode == 0  # modprobe exits 0: a warning, not a failure
    assert "warning: " in proc.stderr and "af_key.ko: listed in modules.dep but missing" in proc.stderr
    assert "xfrm_algo" not in proc.stdout  # libkmod drops a dependency list naming a missing file
