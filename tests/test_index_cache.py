"""``kmodkit index`` with its cache: what a second run reads, writes and trusts, checked against depmod.

The quick path (nothing changed: write nothing), a module whose content
changed (rebuild from the stored records), stats too recent to trust, and
directory listings reused from the last walk.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import KernelTree
from elfwriter import Sec, build, simple_module
from kmodkit.index.cache import CACHE_NAME, RECORDS_NAME
from kmodkit.index.inputs import INDEX_FILES, MODULE_SUFFIXES, TREE_FILES
from test_index_depmod import assert_same, depmod, make_tree

KMODKIT = [sys.executable, "-m", "kmodkit"]
_HOUR_NS = 3600 * 10**9


def index(root: Path, release: str, out: Path) -> dict[str, object]:
    proc = subprocess.run(KMODKIT + ["index", "--json", "-b", str(root), "-o", str(out), release],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary: dict[str, object] = json.loads(proc.stdout)
    return summary


def set_mtime(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def test_module_suffixes_are_the_module_readers() -> None:
    from kmodkit.modfile.module import MODULE_SUFFIXES as READER_SUFFIXES

    assert MODULE_SUFFIXES == READER_SUFFIXES


@pytest.mark.kernel
def test_unchanged_tree_writes_nothing_and_a_changed_module_rebuilds_as_depmod(
        generic_tree: KernelTree, tmp_path: Path) -> None:
    rel = next(str(p.relative_to(generic_tree.moddir)) for p in generic_tree.modules() if p.name == "af_key.ko")
    other = next(p for p in generic_tree.modules() if p.name == "ah4.ko")
    root, out = tmp_path / "root", tmp_path / "out"
    moddir = make_tree(generic_tree, root, copy=rel)
    # made just now: too recent to be trusted (see the next test), so aged
    made = [Path(rel), *Path(rel).parents[:-1], *TREE_FILES]
    for name in made + [Path(".")]:
        set_mtime(moddir / name, time.time_ns() - _HOUR_NS)
    assert index(root, generic_tree.release, out)["read"] == len(generic_tree.modules())
    stamps = {name: (out / name).stat().st_mtime_ns for name in INDEX_FILES}
    head = (out / CACHE_NAME).stat().st_mtime_ns

    again = index(root, generic_tree.release, out)
    assert again["read"] == 0 and again["files"] == [] and again["unchanged"] == list(INDEX_FILES)
    assert {name: (out / name).stat().st_mtime_ns for name in INDEX_FILES} == stamps
    assert (out / CACHE_NAME).stat().st_mtime_ns == head  # not even the cache is rewritten

    # the same module under another name: its record differs, the rest comes from the cache
    (moddir / rel).write_bytes(other.read_bytes())
    set_mtime(moddir / rel, time.time_ns() - _HOUR_NS)
    changed = index(root, generic_tree.release, out)
    assert changed["read"] == 1 and "modules.dep" in changed["files"]
    assert depmod(root, generic_tree.release).returncode == 0
    assert_same(moddir, out)


def _tiny_tree(root: Path) -> Path:
    """A made-up tree (old timestamps): mod_a exports a_fn, mod_b uses it, in kernel/x and kernel/y."""
    moddir = root / "lib" / "modules" / "6.1.0-kmodkit-test"
    for sub, name, symbols in (("x", "mod_a", [("a_fn", 1)]), ("y", "mod_b", [("a_fn", 0), ("b_fn", 1)])):
        (moddir / "kernel" / sub).mkdir(parents=True, exist_ok=True)
        spec = simple_module(symbols=symbols)
        spec.sections.append(Sec("__ksymtab_strings", symbols[-1][0].encode() + b"\0"))
        (moddir / "kernel" / sub / f"{name}.ko").write_bytes(build(spec))
    old = time.time_ns() - _HOUR_NS
    for path in sorted(moddir.rglob("*"), reverse=True) + [moddir]:
        set_mtime(path, old)
    return moddir


def test_recent_change_made_in_test_is_checked_again_until_it_is_old(tmp_path: Path) -> None:
    """A stat within 2 s of a change may hide a second change in the same clock tick: not trusted."""
    moddir = _tiny_tree(tmp_path)
    out = tmp_path / "out"
    release = moddir.name
    assert index(tmp_path, release, out)["read"] == 2
    assert index(tmp_path, release, out)["read"] == 0
    mod_a = moddir / "kernel" / "x" / "mod_a.ko"
    set_mtime(mod_a, time.time_ns())
    assert index(tmp_path, release, out)["read"] == 1
    assert index(tmp_path, release, out)["read"] == 1  # still too recent to trust
    set_mtime(mod_a, time.time_ns() - _HOUR_NS)
    assert index(tmp_path, release, out)["read"] == 1
    assert index(tmp_path, release, out)["read"] == 0


def test_module_added_to_a_listed_directory_made_in_test_is_found(tmp_path: Path) -> None:
    moddir = _tiny_tree(tmp_path)
    out = tmp_path / "out"
    release = moddir.name
    index(tmp_path, release, out)
    # a third module in kernel/x (whose listing the cache holds), using b_fn
    spec = simple_module(symbols=[("b_fn", 0)])
    (moddir / "kernel" / "x" / "mod_c.ko").write_bytes(build(spec))
    # old enough to be trusted, yet not the mtime the cache holds for kernel/x
    set_mtime(moddir / "kernel" / "x", time.time_ns() - 2 * _HOUR_NS)
    set_mtime(moddir / "kernel" / "x" / "mod_c.ko", time.time_ns() - 2 * _HOUR_NS)
    third = index(tmp_path, release, out)
    assert third["read"] == 1 and third["modules"] == 3
    (moddir / "kernel" / "y" / "mod_b.ko").unlink()
    fourth = index(tmp_path, release, out)
    assert fourth["modules"] == 2
    assert depmod(tmp_path, release).returncode == 0
    for name in INDEX_FILES:
        assert (out / name).read_bytes() == (moddir / name).read_bytes(), name


def test_records_of_another_run_made_in_test_are_not_trusted(tmp_path: Path) -> None:
    moddir = _tiny_tree(tmp_path)
    out = tmp_path / "out"
    release = moddir.name
    index(tmp_path, release, out)
    (out / RECORDS_NAME).write_bytes(b"kmodkit-records\0" + b"\xff" * 64)  # another generation
    set_mtime(moddir / "kernel" / "x" / "mod_a.ko", time.time_ns() - 2 * _HOUR_NS)
    assert index(tmp_path, release, out)["read"] == 2  # the one changed, then every record again
    assert depmod(tmp_path, release).returncode == 0
    for name in INDEX_FILES:
        assert (out / name).read_bytes() == (moddir / name).read_bytes(), name
