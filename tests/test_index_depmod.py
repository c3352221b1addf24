"""``kmodkit index`` against kmod's ``depmod -b``: every file byte for byte, incremental runs, bad input.

Each installed tree is rebuilt in a temp dir (its ``kernel`` directory linked,
its modules.order / modules.builtin* copied); depmod writes the reference
there, kmodkit writes into a second directory with ``-o``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree, need
from elfwriter import Sec, build, simple_module
from kmodkit.index.depfiles import INDEX_FILES, render_all, write_index
from kmodkit.index.depmod import Depmod, DependencyCycleError
from kmodkit.index.cache import CACHE_NAME, RECORDS_NAME

KMODKIT = [sys.executable, "-m", "kmodkit"]
_TREE_FILES = ("modules.order", "modules.builtin", "modules.builtin.modinfo")


def make_tree(tree: KernelTree, root: Path, copy: str | None = None) -> Path:
    """``root/lib/modules/RELEASE`` with the tree's modules linked; ``copy`` (a relative module path)
    is copied instead, with real directories on its way, so a test may touch it."""
    moddir = root / "lib" / "modules" / tree.release
    moddir.mkdir(parents=True)
    for name in _TREE_FILES:
        if (tree.moddir / name).exists():
            shutil.copy(tree.moddir / name, moddir / name)
    if copy is None:
        (moddir / "kernel").symlink_to(tree.moddir / "kernel")
        return moddir
    # real directories down to the copied file, every sibling on the way linked
    parts = Path(copy).parts
    src, dst = tree.moddir / parts[0], moddir / parts[0]
    dst.mkdir()
    for part in parts[1:]:
        for entry in src.iterdir():
            if entry.name != part:
                (dst / entry.name).symlink_to(entry)
        src, dst = src / part, dst / part
        if part != parts[-1]:
            dst.mkdir()
    shutil.copy2(src, dst)
    return moddir


def depmod(root: Path, release: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["depmod", "-b", str(root), *extra, release], capture_output=True, text=True)


def kmodkit_index(root: Path, release: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(KMODKIT + ["index", "-b", str(root), "-o", str(out), *extra, release],
                          capture_output=True, text=True)


def assert_same(ref_dir: Path, out_dir: Path) -> None:
    for name in INDEX_FILES:
        ref = (ref_dir / name).read_bytes()
        mine = (out_dir / name).read_bytes()
        assert mine == ref, f"{name} differs ({len(mine)} bytes vs depmod's {len(ref)})"


@pytest.mark.kernel
@pytest.mark.parametrize("which", ["generic_tree", "xz_tree", "cloud_tree"])
def test_every_file_equals_depmod(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tree: KernelTree = request.getfixturevalue(which)
    moddir = make_tree(tree, tmp_path / "root")
    assert depmod(tmp_path / "root", tree.release).returncode == 0
    out = tmp_path / "out"
    proc = kmodkit_index(tmp_path / "root", tree.release, out, "--no-cache")
    assert proc.returncode == 0, proc.stderr
    assert_same(moddir, out)
    assert not (out / CACHE_NAME).exists() and not (out / RECORDS_NAME).exists()


@pytest.mark.kernel
def test_index_of_installed_tree_equals_shipped_index(generic_tree: KernelTree) -> None:
    """The library on the tree in place, compared with what Debian's depmod left there."""
    result = Depmod(generic_tree.release, config_paths=[]).compute()
    files = render_all(result)
    for name in ("modules.dep", "modules.alias", "modules.symbols", "modules.dep.bin", "modules.alias.bin"):
        assert files[name] == (generic_tree.moddir / name).read_bytes(), name


@pytest.mark.kernel
def test_symvers_and_system_map_with_errsyms(generic_tree: KernelTree, tmp_path: Path) -> None:
    symvers = generic_tree.headers / "Module.symvers" if generic_tree.headers else None
    system_map = Path(f"/boot/System.map-{generic_tree.release}")
    if symvers is None or not symvers.exists():
        need("no Module.symvers for the generic kernel")
    moddir = make_tree(generic_tree, tmp_path / "root")
    for flag, path in (("-E", symvers), ("-F", system_map)):
        if not path.exists():
            continue
        ref = depmod(tmp_path / "root", generic_tree.release, "-e", flag, str(path))
        assert ref.returncode == 0
        out = tmp_path / f"out{flag}"
        proc = kmodkit_index(tmp_path / "root", generic_tree.release, out, "-e", flag, str(path))
        assert_same(moddir, out)
        ref_warn = sorted(line.split("WARNING: ", 1)[1] for line in ref.stderr.splitlines() if "WARNING: " in line)
        mine = sorted(line.split("warning: ", 1)[1] for line in proc.stderr.splitlines() if "warning: " in line)
        assert mine == ref_warn
        assert (proc.returncode == 1) == bool(ref_warn)


@pytest.mark.kernel
def test_incremental_run_reads_only_the_touched_module(generic_tree: KernelTree, tmp_path: Path) -> None:
    rel = next(str(p.relative_to(generic_tree.moddir)) for p in generic_tree.modules() if p.name == "af_key.ko")
    root = tmp_path / "root"
    moddir = make_tree(generic_tree, root, copy=rel)
    out = tmp_path / "out"
    first = subprocess.run(KMODKIT + ["index", "--json", "-b", str(root), "-o", str(out), generic_tree.release],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert '"read": %d' % len(generic_tree.modules()) in first.stdout
    st = os.stat(moddir / rel)
    os.utime(moddir / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = subprocess.run(KMODKIT + ["index", "--json", "-b", str(root), "-o", str(out), generic_tree.release],
                            capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert '"read": 1,' in second.stdout
    assert depmod(root, generic_tree.release).returncode == 0
    assert_same(moddir, out)


def _cycle_tree(root: Path) -> Path:
    moddir = root / "lib" / "modules" / "6.1.0-kmodkit-test"
    (moddir / "kernel").mkdir(parents=True)
    for me, other in (("cyc_a", "cyc_b"), ("cyc_b", "cyc_a")):
        spec = simple_module(symbols=[(f"{other}_fn", 0), (f"{me}_fn", 1)])
        spec.sections.append(Sec("__ksymtab_strings", f"{me}_fn\0".encode()))
        (moddir / "kernel" / f"{me}.ko").write_bytes(build(spec))
    return moddir


def test_dependency_cycle_made_in_test_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    moddir = _cycle_tree(tmp_path)
    ref = depmod(tmp_path, "6.1.0-kmodkit-test")
    assert ref.returncode != 0 and "Cycle detected" in ref.stderr  # the oracle agrees it is a cycle
    with pytest.raises(DependencyCycleError) as info:
        Depmod("6.1.0-kmodkit-test", str(tmp_path), config_paths=[]).compute()
    assert info.value.cycles == [["cyc_b", "cyc_a", "cyc_b"]]  # depmod's start and order
    (moddir / "modules.dep").write_text("previous\n")
    proc = subprocess.run(KMODKIT + ["index", "-b", str(tmp_path), "6.1.0-kmodkit-test"], capture_output=True, text=True)
    assert proc.returncode == ref.returncode == 1
    assert proc.stderr.startswith("error: Cycle detected: cyc_b -> cyc_a -> cyc_b\n")
    assert "Traceback" not in proc.stderr
    assert (moddir / "modules.dep").read_text() == "previous\n"


def test_corrupt_module_made_in_test_is_reported_and_index_still_written(tmp_path: Path) -> None:
    moddir = _cycle_tree(tmp_path)
    (moddir / "kernel" / "cyc_b.ko").unlink()
    (moddir / "kernel" / "broken.ko").write_bytes(b"\x7fELF" + b"\0" * 10)
    proc = subprocess.run(KMODKIT + ["index", "-b", str(tmp_path), "6.1.0-kmodkit-test"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "broken.ko" in proc.stderr and "Traceback" not in proc.stderr
    ref = (moddir / "modules.dep").read_text()
    assert depmod(tmp_path, "6.1.0-kmodkit-test").returncode == 0
    assert (moddir / "modules.dep").read_text() == ref  # depmod lists the unreadable file too


def test_unreadable_module_made_in_test_is_named_once_on_its_error_line(tmp_path: Path) -> None:
    moddir = tmp_path / "lib" / "modules" / "6.1.0-kmodkit-test"
    (moddir / "kernel").mkdir(parents=True)
    broken = moddir / "kernel" / "broken.ko"
    broken.write_bytes(b"\x7fELF" + b"\0" * 10)
    proc = subprocess.run(KMODKIT + ["index", "-b", str(tmp_path), "6.1.0-kmodkit-test"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: {broken}: truncated ELF header (14 bytes)"]


def test_failed_write_leaves_previous_index_intact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "modules.dep").write_bytes(b"old\n")
    (out / "modules.devname").mkdir()  # cannot be replaced by a file: the write must fail as a whole
    files = {name: b"new\n" for name in INDEX_FILES}
    with pytest.raises(OSError):
        write_index(files, str(out))
    assert (out / "modules.dep").read_bytes() == b"old\n"
    assert sorted(p.name for p in out.iterdir()) == ["modules.dep", "modules.devname"]


def test_missing_tree_and_bad_release_are_one_line_errors(tmp_path: Path) -> None:
    for args, status in ((["index", "-b", str(tmp_path), "6.1.0-none"], 2), (["index", "notaversion"], 2)):
        proc = subprocess.run(KMODKIT + args, capture_output=True, text=True)
        assert proc.returncode == status
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


@pytest.mark.kernel
@pytest.mark.parametrize("conf", [
    "",  # default: "updates" first
    "search extra built-in updates\n",
    "search updates built-in\noverride af_key * extra\n",
    "search built-in\nexclude updates\n",
])
def test_duplicate_modules_follow_depmod_d_priorities(cloud_tree: KernelTree, tmp_path: Path, conf: str) -> None:
    """The same module in kernel/, updates/ and extra/ (copies made in the test), with depmod.d rules."""
    root = tmp_path / "root"
    moddir = make_tree(cloud_tree, root)
    src = next(p for p in cloud_tree.modules() if p.name.startswith("af_key.ko"))
    for sub in ("updates", "extra"):
        (moddir / sub).mkdir()
        shutil.copy(src, moddir / sub / src.name)
    confdir = tmp_path / "depmod.d"
    confdir.mkdir()
    (confdir / "test.conf").write_text(conf)
    assert depmod(root, cloud_tree.release, "-C", str(confdir)).returncode == 0
    out = tmp_path / "out"
    proc = kmodkit_index(root, cloud_tree.release, out, "--no-cache", "-C", str(confdir))
    assert proc.returncode == 0, proc.stderr
    assert_same(moddir, out)


def test_special_files_named_like_modules_get_one_warning_each_as_depmod_says_made_in_test(
        sample_module: Path, tmp_path: Path) -> None:
    """A FIFO or a link to a device named x.ko: depmod says 'unsupported file type' for each and indexes the rest."""
    import os
    import shutil
    import subprocess
    import sys

    tree = tmp_path / "lib" / "modules" / "6.1.0-kmodkit-test" / "kernel"
    tree.mkdir(parents=True)
    shutil.copy(sample_module, tree / "af_key.ko")
    os.mkfifo(tree / "fifo.ko")
    (tree / "zero.ko").symlink_to("/dev/zero")
    conf = tmp_path / "conf"
    conf.mkdir()
    done = subprocess.run([sys.executable, "-m", "kmodkit", "index", "-C", str(conf), "-b", str(tmp_path),
                           "6.1.0-kmodkit-test"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stderr.splitlines())
    assert lines == [f"warning: {tree / 'fifo.ko'}: a FIFO, not a module file: skipped (depmod: unsupported file type)",
                     f"warning: {tree / 'zero.ko'}: a character device, not a module file: skipped (depmod: "
                     "unsupported file type)"]
    assert (tree.parent / "modules.dep").read_text() == "kernel/af_key.ko:\n"
