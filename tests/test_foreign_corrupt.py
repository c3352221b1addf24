"""Corrupt ELF32 and big-endian modules made in the test, through `info` AND `index` (the index's own reader).

Real modules of these classes are checked in (test_foreign_modules.py); a real
module cannot show a lying header or a section past its end, so tests/elfwriter.py
makes them, for i386/arm (ELF32 LE), mips (ELF32 BE), s390/ppc64 (ELF64 BE).
The oracles are kmod's modinfo (a made-in-test good file reads the same) and
depmod -b (the index of a tree with a corrupt file in it is depmod's).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need
from elfwriter import ARCHES, ElfSpec, build, modinfo_bytes, simple_module

KMODKIT = [sys.executable, "-m", "kmodkit"]
FOREIGN = ["i386", "arm", "mips", "s390", "ppc64"]
RELEASE = "6.1.0-test"
INDEX_FILES = ("modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
               "modules.symbols", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin",
               "modules.devname")


def _spec(arch: str, **header: object) -> ElfSpec:
    spec = simple_module(arch=arch)
    for k, v in header.items():
        setattr(spec, k, v)
    return spec


def _section(arch: str, index: int, **fields: object) -> ElfSpec:
    spec = simple_module(arch=arch)
    for k, v in fields.items():
        setattr(spec.sections[index], k, v)
    return spec


def corrupt(arch: str) -> dict[str, bytes]:
    """Corrupt modules of ``arch``'s class and byte order, each made in the test."""
    machine, ei_class, ei_data = ARCHES[arch]
    good = build(simple_module(arch=arch))
    return {
        "section_table_past_end": build(_spec(arch, shoff=1 << 20)),
        "truncated": good[:-30],
        "bad_name_offset": build(_section(arch, 1, name_offset=9999)),
        "overlapping_sections": build(_section(arch, 1, offset=16)),
        "modinfo_past_end": build(_section(arch, 1, size=1 << 24)),
        "symtab_past_end": build(_section(arch, 2, size=1 << 20)),
        "shstrndx_out_of_range": build(_spec(arch, shstrndx=99)),
        "wrong_shentsize": build(_spec(arch, e_shentsize=24)),
        # the header names the other class / byte order than the structures are written in
        "class_lies": build(_spec(arch, ei_class=3 - ei_class, layout_class=ei_class)),
        "byte_order_lies": build(_spec(arch, ei_data=3 - ei_data, layout_data=ei_data)),
        "modinfo_without_nul": build(simple_module(modinfo_bytes(("license", "GPL")) + b"name=cut", arch=arch)),
    }


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "internal error" not in text, text


def _errors(stderr: str) -> dict[str, str]:
    """``error: PATH: why`` lines by the file name they start with."""
    found = {}
    for line in stderr.splitlines():
        if line.startswith("error: "):
            path = line[len("error: "):].split(": ", 1)[0]
            assert Path(path).name not in found, f"two error lines for one file:\n{stderr}"
            found[Path(path).name] = line
    return found


@pytest.mark.parametrize("arch", FOREIGN)
def test_made_in_test_module_of_every_class_and_byte_order_reads_as_modinfo_reads_it(arch: str,
                                                                                    tmp_path: Path) -> None:
    path = tmp_path / f"tiny-{arch}.ko"
    path.write_bytes(build(simple_module(arch=arch)))
    theirs = subprocess.run(["modinfo", str(path)], capture_output=True, text=True, check=True).stdout
    ours = subprocess.run([*KMODKIT, "info", str(path)], capture_output=True, text=True, check=False)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs
    assert "name:           tiny\n" in ours.stdout


def _files(directory: Path, arch: str) -> list[Path]:
    """Every corrupt file of ``arch``, each followed by a good one, written into ``directory``."""
    paths = []
    for case, data in corrupt(arch).items():
        bad, good = directory / f"{case}.ko", directory / f"good-after-{case}.ko"
        bad.write_bytes(data)
        good.write_bytes(build(simple_module(modinfo_bytes(("license", "GPL"), ("name", f"after-{case}")),
                                             arch=arch)))
        paths += [bad, good]
    return paths


@pytest.mark.parametrize("arch", FOREIGN)
@pytest.mark.parametrize("args", [["-F", "name"], ["--json"], []], ids=["field", "json", "text"])
def test_info_batch_reports_each_corrupt_file_made_in_test_and_goes_on(arch: str, args: list[str],
                                                                       tmp_path: Path) -> None:
    paths = _files(tmp_path, arch)
    done = subprocess.run([*KMODKIT, "info", *args, *map(str, paths)], capture_output=True, text=True, check=False,
                          timeout=60, errors="replace")  # .modinfo bytes are printed as they are, as modinfo does
    _no_traceback(done.stderr)
    if args == ["--json"]:
        # with --json each bad item is an error record in the document on stdout, and stderr stays empty
        assert done.stderr == ""
        records = [r for r in json.loads(done.stdout) if "error" in r]
        errors = {Path(r["error"]["what"]).name: f"error: {r['error']['what']}: {r['error']['why']}" for r in records}
    else:
        errors = _errors(done.stderr)
    assert done.returncode == (2 if errors else 0), done.stderr
    assert set(errors) <= {f"{case}.ko" for case in corrupt(arch)}, "a good file was refused"
    for name, line in errors.items():
        assert line.startswith(f"error: {tmp_path / name}: ") and line.count(str(tmp_path)) == 1, line
    for case in corrupt(arch):
        assert f"after-{case}" in done.stdout, f"the good file after {case} was not described"


def _tree(root: Path, arch: str) -> Path:
    kernel = root / "lib" / "modules" / RELEASE / "kernel"
    kernel.mkdir(parents=True)
    _files(kernel, arch)
    return kernel


def _depmod() -> str:
    depmod = shutil.which("depmod") or shutil.which("/usr/sbin/depmod") or shutil.which("/sbin/depmod")
    if depmod is None:
        need("kmod's depmod")
    assert depmod is not None
    return depmod


@pytest.mark.parametrize("arch", FOREIGN)
def test_index_of_a_tree_with_corrupt_files_made_in_test_equals_depmod(arch: str, tmp_path: Path) -> None:
    config = tmp_path / "depmod.d"
    config.mkdir()
    theirs, ours = tmp_path / "depmod", tmp_path / "kmodkit"
    _tree(theirs, arch)
    kernel = _tree(ours, arch)
    # libkmod asserts (abort) on an out-of-range e_shstrndx: depmod indexes no tree holding one
    (theirs / "lib" / "modules" / RELEASE / "kernel" / "shstrndx_out_of_range.ko").unlink()
    subprocess.run([_depmod(), "-C", str(config), "-b", str(theirs), RELEASE], capture_output=True, check=True)
    done = subprocess.run([*KMODKIT, "index", "-C", str(config), "-b", str(ours), RELEASE], capture_output=True,
                          text=True, check=False, timeout=120)
    _no_traceback(done.stderr)
    errors = _errors(done.stderr)
    assert done.returncode in ((1, 2) if errors else (0,)), done.stderr
    assert set(errors) <= {f"{case}.ko" for case in corrupt(arch)}, "a good file was refused"
    (ours / "lib" / "modules" / RELEASE / "kernel" / "shstrndx_out_of_range.ko").unlink()
    subprocess.run([*KMODKIT, "index", "-C", str(config), "-b", str(ours), RELEASE], capture_output=True, check=False,
                   timeout=120)
    want, got = theirs / "lib" / "modules" / RELEASE, ours / "lib" / "modules" / RELEASE
    assert [n for n in INDEX_FILES if (got / n).read_bytes() != (want / n).read_bytes()] == []
    assert b"good-after-truncated" in (got / "modules.dep").read_bytes()
    for name, line in errors.items():
        assert line.startswith(f"error: {kernel / name}: "), line
        assert line.count(str(kernel)) == 1, f"the path is printed more than once: {line}"


@pytest.mark.parametrize("arch", FOREIGN)
def test_info_and_index_agree_on_each_corrupt_file_made_in_test(arch: str, tmp_path: Path) -> None:
    """One verdict per file (issue 10, item 13), kmod's: a file is refused by `info` exactly when kmod's
    `modinfo` refuses it, and by `index` exactly when `depmod` does.  Where kmod itself splits (a module
    whose .modinfo cannot be read: modinfo refuses it, depmod still indexes its symbols), kmodkit splits
    the same way, and nowhere else."""
    kernel = _tree(tmp_path, arch)
    files = sorted(str(p) for p in kernel.iterdir())
    info = subprocess.run([*KMODKIT, "info", "-F", "name", *files], capture_output=True, text=True, check=False,
                          timeout=60)
    index = subprocess.run([*KMODKIT, "index", "-b", str(tmp_path), RELEASE], capture_output=True, text=True,
                           check=False, timeout=120)
    by_info, by_index = set(_errors(info.stderr)), set(_errors(index.stderr))
    modinfo = shutil.which("modinfo") or "/usr/sbin/modinfo"
    kmod_refuses = set()
    for f in files:
        if Path(f).name == "shstrndx_out_of_range.ko":  # libkmod aborts on it (an assertion): no verdict to take
            continue
        if subprocess.run([modinfo, "-F", "name", f], capture_output=True, check=False).returncode != 0:
            kmod_refuses.add(Path(f).name)
    assert by_info - {"shstrndx_out_of_range.ko"} == kmod_refuses
    split = by_info - by_index
    assert split <= kmod_refuses, f"only info rejects {sorted(split)}, and modinfo reads them"
    assert by_index <= by_info, f"only index rejects {sorted(by_index - by_info)}"
