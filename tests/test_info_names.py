"""``kmodkit info -k KVER NAME`` against ``modinfo -k KVER NAME`` for names, aliases and built-in modules.

The lookup behind it is kmodkit.index's (libkmod's seven steps over the
.bin files); these are spot checks over each installed tree, with -F, -0
and -m.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree

KMODKIT = [sys.executable, "-m", "kmodkit"]


def _pair(tree: KernelTree, *args: str) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    ref = subprocess.run(["modinfo", "-k", tree.release, *args], capture_output=True)
    mine = subprocess.run(KMODKIT + ["info", "-k", tree.release, *args], capture_output=True)
    return ref, mine


def _samples(tree: KernelTree) -> list[list[str]]:
    rng = random.Random(11)
    names = [p.name.split(".", 1)[0] for p in tree.modules()]
    aliases = [line.split()[1] for line in (tree.moddir / "modules.alias").read_text().splitlines()
               if line.startswith("alias ") and "*" not in line and "[" not in line]
    builtins = [line.rsplit("/", 1)[-1].split(".", 1)[0] for line in
                (tree.moddir / "modules.builtin").read_text().splitlines()]
    cases: list[list[str]] = []
    for name in rng.sample(names, 8):
        cases += [[name], ["-F", "depends", name], ["-m", name.replace("_", "-")]]
    for alias in rng.sample(aliases, 6):
        cases += [[alias], ["-0", "-F", "alias", alias]]
    for name in rng.sample(builtins, 3):
        cases += [[name], ["-F", "license", name]]
    cases += [["symbol:xfrm_state_add"], ["-F", "filename", "fs-ext4"]]
    return cases


@pytest.mark.kernel
def test_info_by_name_alias_and_builtin_matches_modinfo(kernel_trees: list[KernelTree]) -> None:
    for tree in kernel_trees[:2]:
        for args in _samples(tree):
            ref, mine = _pair(tree, *args)
            assert mine.stdout == ref.stdout, (tree.release, args)
            assert (mine.returncode == 0) == (ref.returncode == 0), (tree.release, args)


@pytest.mark.kernel
def test_info_unknown_name_fails_like_modinfo(generic_tree: KernelTree) -> None:
    ref, mine = _pair(generic_tree, "no_such_module_zz")
    assert ref.returncode != 0 and mine.returncode != 0
    assert b"no_such_module_zz" in mine.stderr and b"Traceback" not in mine.stderr


def test_filename_field_of_a_name_whose_file_is_gone_made_in_test_prints_the_index_path(tmp_path: Path) -> None:
    """modinfo -F filename NAME answers from the index without opening the file (tree and removal made in the test)."""
    from test_index_kmod_semantics import KVER, make_tree

    moddir = make_tree(tmp_path, {"gone_mod": (), "kept_mod": ()})
    assert subprocess.run(["depmod", "-b", str(tmp_path), KVER], capture_output=True).returncode == 0
    (moddir / "kernel" / "gone_mod.ko").unlink()
    junk = tmp_path / "junk.ko"
    junk.write_bytes(b"not a module")  # a path is stat'ed, not read
    for args in (["gone_mod", "kept_mod"], ["-0", "gone_mod"], [str(junk)], [str(tmp_path / "absent.ko")]):
        ref = subprocess.run(["modinfo", "-b", str(tmp_path), "-k", KVER, "-F", "filename", *args], capture_output=True)
        mine = subprocess.run(KMODKIT + ["info", "-b", str(tmp_path), "-k", KVER, "-F", "filename", *args],
                              capture_output=True)
        assert (mine.stdout, mine.returncode != 0) == (ref.stdout, ref.returncode != 0), args


def test_module_reader_never_imports_the_index() -> None:
    """Name resolution lives in kmodkit.names, above both: modfile → index would be an import cycle."""
    import re

    import kmodkit.modfile

    package = Path(kmodkit.modfile.__file__).parent
    imports = {p.name: re.findall(r"^\s*(?:from|import) kmodkit\.index\b.*$", p.read_text(), re.M)
               for p in sorted(package.glob("*.py"))}
    assert {name: found for name, found in imports.items() if found} == {}
    code = "import sys, kmodkit.names; print(sorted(m for m in sys.modules if m.startswith('kmodkit.index')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout == "[]\n"  # and the resolver above them loads the index only when a name is looked up
