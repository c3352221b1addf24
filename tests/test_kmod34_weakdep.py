"""kmod 34 (Debian 13) as the second oracle: modules.weakdep, pre-order tries, ``weakdep`` in modprobe.d.

``kmodkit index --kmod-compat 34`` must equal kmod 34's ``depmod -b`` byte
for byte, and ``--kmod-compat 30`` Debian 12's depmod, on the same tree.
Small trees are made in the tests (tests/elfwriter.py modules carrying
``weakdep=`` in .modinfo, which no Debian 12 module does); the whole generic
tree is the second tier.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree
from test_index_kmod_semantics import KVER, make_tree
from kmodkit.index.inputs import ALL_INDEX_FILES, INDEX_FILES, KmodCompat
from kmodkit.index.trie import IndexReader, build_index

KMODKIT = [sys.executable, "-m", "kmodkit"]

WEAK_TREE = {
    "wk_a": (("weakdep", b"wk_b"), ("weakdep", b"wk_c"), ("softdep", b"pre: wk_c"), ("alias", b"wk-alias-a")),
    "wk_b": (("weakdep", b"wk_a"), ("alias", b"pci:v00001234d*")),
    "wk_c": (("alias", b"wk-alias-c"),),
}


def _same_files(ref: Path, out: Path, names: tuple[str, ...]) -> None:
    for name in names:
        assert (out / name).read_bytes() == (ref / name).read_bytes(), f"{name} differs"


def test_preorder_trie_made_in_test_reads_back_like_the_postorder_one() -> None:
    values = {b"a": [(0, b"x")], b"ab": [(1, b"y"), (2, b"z")], b"abd": [(0, b"w")], b"b": [(0, b"v")],
              b"ba" * 40: [(0, b"long")], b"": [(0, b"root")]}
    post, pre = build_index(values), build_index(values, preorder=True)
    assert post != pre and len(post) == len(pre)
    assert dict(IndexReader(pre).items()) == dict(IndexReader(post).items()) == values


def test_weakdep_tree_made_in_test_equals_kmod34_and_kmod30(kmod34: list[str], tmp_path: Path) -> None:
    ref34 = make_tree(tmp_path / "ref34", WEAK_TREE)
    ref30 = make_tree(tmp_path / "ref30", WEAK_TREE)
    for prefix, root in ((kmod34, tmp_path / "ref34"), ([], tmp_path / "ref30")):
        proc = subprocess.run(prefix + ["depmod", "-b", str(root), KVER], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    lines = (ref34 / "modules.weakdep").read_text().splitlines()  # in depmod's module order
    assert lines[0] == "# Weak dependencies extracted from modules themselves."
    assert sorted(lines[1:]) == ["weakdep wk_a wk_b", "weakdep wk_a wk_c", "weakdep wk_b wk_a"]
    assert not (ref30 / "modules.weakdep").exists()
    for compat, ref, names in (("34", ref34, ALL_INDEX_FILES), ("30", ref30, INDEX_FILES)):
        out = tmp_path / f"out{compat}"
        proc = subprocess.run(KMODKIT + ["index", "--kmod-compat", compat, "-b", str(ref.parents[2]), "-o", str(out),
                                         KVER], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        _same_files(ref, out, names)
        assert (out / "modules.weakdep").exists() == (compat == "34")


def test_changing_compat_rebuilds_a_cached_index_made_in_test(kmod34: list[str], tmp_path: Path) -> None:
    moddir = make_tree(tmp_path / "root", WEAK_TREE)
    for compat in ("30", "34"):
        proc = subprocess.run(KMODKIT + ["index", "--json", "--kmod-compat", compat, "-b", str(tmp_path / "root"),
                                         KVER], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert '"files": []' not in proc.stdout  # the second run is not "up to date": its bytes differ
    ref = make_tree(tmp_path / "ref", WEAK_TREE)
    assert subprocess.run(kmod34 + ["depmod", "-b", str(tmp_path / "ref"), KVER]).returncode == 0
    _same_files(ref, moddir, ALL_INDEX_FILES)


def test_weakdep_lines_change_nothing_modprobe_shows(kmod34: list[str], tmp_path: Path) -> None:
    """kmod 34's modprobe reads weakdep (modprobe.d, modules.weakdep) but neither loads nor shows it."""
    root = tmp_path / "root"
    make_tree(root, WEAK_TREE)
    assert subprocess.run(kmod34 + ["depmod", "-b", str(root), KVER]).returncode == 0
    conf = tmp_path / "weak.conf"
    conf.write_text("weakdep wk_c wk_b\nsoftdep wk_b post: wk_c\n")
    for name in ("wk_a", "wk_b", "wk_c", "wk-alias-c"):
        ref = subprocess.run(kmod34 + ["modprobe", "-C", str(conf), "-d", str(root), "-S", KVER, "--show-depends",
                                       name], capture_output=True, text=True)
        mine = subprocess.run(KMODKIT + ["deps", "--no-cmdline", "-C", str(conf), "-b", str(root), "-k", KVER, name],
                              capture_output=True, text=True)
        assert (mine.stdout, mine.returncode) == (ref.stdout, ref.returncode), name
        assert mine.stderr == ""  # kmod 30 would call the weakdep line bad; kmodkit reads it as kmod 34 does
    from kmodkit.index.config import ModprobeConfig
    from kmodkit.index.lookup import ModuleTree
    from kmodkit.index.resolver import Resolver

    moddir = str(root / "lib" / "modules" / KVER)
    resolver = Resolver(ModuleTree(moddir, ModprobeConfig.load(moddir, [str(conf)], "")))
    assert [m.name for m in resolver.weakdeps("wk_c")] == ["wk_b"]  # modprobe.d: listed before modules.weakdep
    # modules.weakdep has one line per value and libkmod stops at the first line that matches
    assert [m.name for m in resolver.weakdeps("wk_a")] == ["wk_b"]
    assert resolver.weakdeps("nothing") == []


@pytest.mark.kernel
def test_generic_tree_equals_kmod34_depmod(kmod34: list[str], generic_tree: KernelTree, tmp_path: Path) -> None:
    moddir = tmp_path / "root" / "lib" / "modules" / generic_tree.release
    moddir.mkdir(parents=True)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy(generic_tree.moddir / name, moddir / name)
    (moddir / "kernel").symlink_to(generic_tree.moddir / "kernel")
    proc = subprocess.run(kmod34 + ["depmod", "-b", str(tmp_path / "root"), generic_tree.release],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    proc = subprocess.run(KMODKIT + ["index", "--kmod-compat", "34", "-b", str(tmp_path / "root"), "-o", str(out),
                                     generic_tree.release], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _same_files(moddir, out, KmodCompat.KMOD34.index_files)
