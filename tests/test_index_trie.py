"""kmod's index trie: our reader on depmod's .bin files, our writer re-reading its own output."""

from __future__ import annotations

import random
import re
import subprocess

import pytest

from conftest import KernelTree
from kmodkit.errors import UserError
from kmodkit.index.glob import fnmatch
from kmodkit.index.trie import IndexBuilder, IndexReader, build_index


@pytest.mark.kernel
def test_reader_lists_what_the_text_files_say(generic_tree: KernelTree) -> None:
    reader = IndexReader.open(str(generic_tree.moddir / "modules.dep.bin"))
    assert reader is not None
    text = {}
    for line in (generic_tree.moddir / "modules.dep").read_bytes().splitlines():
        name = line.split(b":", 1)[0].rsplit(b"/", 1)[-1].split(b".", 1)[0].replace(b"-", b"_")
        text[name] = line
    items = dict(reader.items())
    assert {k: v[0][1] for k, v in items.items()} == text
    assert reader.search(b"af_key") == text[b"af_key"]
    assert reader.search(b"af_ke") is None and reader.search(b"af_keyx") is None


@pytest.mark.kernel
def test_rebuilding_depmod_files_gives_the_same_bytes(generic_tree: KernelTree) -> None:
    for name in ("modules.alias.bin", "modules.symbols.bin", "modules.builtin.bin"):
        data = (generic_tree.moddir / name).read_bytes()
        items = dict(IndexReader(data, name).items())
        assert build_index(items) == data, name


@pytest.mark.kernel
def test_wildcard_search_matches_modprobe_resolve_alias(generic_tree: KernelTree) -> None:
    reader = IndexReader.open(str(generic_tree.moddir / "modules.alias.bin"))
    assert reader is not None
    patterns = [ln.split()[1] for ln in (generic_tree.moddir / "modules.alias").read_text().splitlines()[1:]]
    rng = random.Random(7)
    queries = [re.sub(r"\*", "9", p) for p in rng.sample(patterns, 25)] + ["nosuch:alias"]
    for q in queries:
        ref = subprocess.run(["modprobe", "-S", generic_tree.release, "-R", q], capture_output=True, text=True)
        mine = [v.decode() for _p, v in reader.search_wild(q.replace("-", "_").encode())]
        assert mine == ref.stdout.split(), q


def test_values_order_and_duplicates_follow_depmod() -> None:
    idx = IndexBuilder()
    assert not idx.insert(b"k", b"b", 5)
    assert not idx.insert(b"k", b"a", 1)
    assert idx.insert(b"k", b"b", 5)  # duplicate value reported, still stored (as depmod does)
    assert not idx.insert(b"k", b"c", 5)  # equal priority goes before the older ones
    reader = IndexReader(idx.to_bytes())
    assert list(reader.items()) == [(b"k", [(1, b"a"), (5, b"c"), (5, b"b"), (5, b"b")])]


def test_glob_follows_glibc() -> None:
    assert fnmatch(b"pci:v*d[0-9]", b"pci:v12d7")
    assert fnmatch(b"a[^b]c", b"axc") and not fnmatch(b"a[^b]c", b"abc")
    assert fnmatch(b"a[!b]c", b"axc") and fnmatch(b"a\\*", b"a*") and not fnmatch(b"a\\*", b"ab")
    assert fnmatch(b"x[[:digit:]]", b"x5") and not fnmatch(b"x[[:digit:]]", b"xa")


def test_corrupt_index_made_in_test_is_a_user_error() -> None:
    good = build_index({b"abc": [(0, b"v")], b"abd": [(0, b"w")]})
    with pytest.raises(UserError, match="bad index magic"):
        IndexReader(b"\0" * 16)
    with pytest.raises(UserError, match="corrupt index node"):
        IndexReader(good[:14] + b"\xff" * 3, "cut").search(b"abc")
