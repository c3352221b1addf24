"""``kmodkit deps --show-depends`` against kmod's ``modprobe --show-depends``, name by name.

Every module name of each installed tree and a few hundred aliases sampled
from its modules.alias go through one modprobe call per batch and one
kmodkit call; then the same with a test modprobe.d directory holding
options, softdep, blacklist, alias and install lines.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree

KMODKIT = [sys.executable, "-m", "kmodkit"]
BATCH = 1500


def _names(tree: KernelTree) -> list[str]:
    names = []
    for line in (tree.moddir / "modules.dep").read_text().splitlines():
        path = line.split(":", 1)[0]
        names.append(Path(path).name.split(".", 1)[0].replace("-", "_"))
    return names


def _aliases(tree: KernelTree, count: int) -> list[str]:
    rng = random.Random(4)
    patterns = [line.split()[1] for line in (tree.moddir / "modules.alias").read_text().splitlines()
                if line.startswith("alias ")]
    picked = rng.sample(patterns, min(count, len(patterns)))
    # turn patterns into concrete device strings the way a uevent would carry them
    return [p.replace("*", "0").replace("?", "1") for p in picked if "[" not in p]


def _modprobe(tree: KernelTree, names: list[str], config: Path | None) -> tuple[str, int]:
    out, status = [], 0
    for i in range(0, len(names), BATCH):
        cmd = ["modprobe", "-S", tree.release, "-a", "--show-depends"]
        if config is not None:
            cmd += ["-C", str(config)]
        proc = subprocess.run(cmd + names[i:i + BATCH], capture_output=True, text=True)
        out.append(proc.stdout)
        status = status or proc.returncode
    return "".join(out), status


def _kmodkit(tree: KernelTree, names: list[str], config: Path | None) -> tuple[str, int]:
    cmd = KMODKIT + ["deps", "-k", tree.release, "--show-depends"]
    if config is not None:
        cmd += ["-C", str(config)]
    proc = subprocess.run(cmd + names, capture_output=True, text=True)
    return proc.stdout, proc.returncode


def _compare(tree: KernelTree, names: list[str], config: Path | None = None) -> None:
    ref, ref_status = _modprobe(tree, names, config)
    mine, status = _kmodkit(tree, names, config)
    if ref != mine:
        ref_lines, mine_lines = ref.splitlines(), mine.splitlines()
        first = next((i for i, (a, b) in enumerate(zip(ref_lines, mine_lines)) if a != b),
                     min(len(ref_lines), len(mine_lines)))
        pytest.fail(f"first difference at line {first}:\nmodprobe: {ref_lines[first:first + 3]}\n"
                    f"kmodkit:  {mine_lines[first:first + 3]}")
    assert (status != 0) == (ref_status != 0)


@pytest.fixture(scope="module")
def test_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A modprobe.d directory with one of each kind of line, aimed at real modules."""
    d = tmp_path_factory.mktemp("modprobe.d")
    (d / "10-kmodkit-test.conf").write_text(
        "# options for a name and for an alias, with tabs and odd spacing\n"
        "options af_key\tfoo=1  bar=2\n"
        "options dummy numdummies=3\n"
        "options net-pf-15 via_alias=1\n"
        "softdep ext4 pre: af_key post: dummy\n"
        "softdep vfat pre: nosuchmodule\n"
        "blacklist pata_mpiix\n"
        "alias my-test-alias dummy\n"
        "alias my-glob-* af_key\n"
        "install loop /bin/true $CMDLINE_OPTS\n"
        "install xfs /bin/echo xfs\n"
        "softdep xfs pre: crc32c_generic\n"
        "remove dummy /bin/false\n"
        "this line is bad\n"
    )
    (d / "20-more.conf").write_text("options af_key baz=3\nblacklist af_key\n")
    return d


@pytest.mark.kernel
@pytest.mark.slow
def test_every_module_name_matches_modprobe(kernel_trees: list[KernelTree]) -> None:
    for tree in kernel_trees:
        _compare(tree, _names(tree))


@pytest.mark.kernel
def test_sampled_aliases_match_modprobe(kernel_trees: list[KernelTree]) -> None:
    for tree in kernel_trees:
        _compare(tree, _aliases(tree, 300))


@pytest.mark.kernel
def test_test_config_matches_modprobe(generic_tree: KernelTree, test_config: Path) -> None:
    extra = ["my-test-alias", "my-glob-x", "net-pf-15", "pci:v00008086d00001234sv0sd0bc0sc0i0", "loop",
             "xfs", "ext4", "vfat", "dummy", "symbol:xfrm_state_add", "nosuchthing", "crc32c"]
    _compare(generic_tree, extra + _names(generic_tree), test_config)


@pytest.mark.kernel
def test_unknown_name_reports_kmod_message(generic_tree: KernelTree) -> None:
    proc = subprocess.run(KMODKIT + ["deps", "-k", generic_tree.release, "af_key", "no_such_module_x"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"Module no_such_module_x not found in directory {generic_tree.moddir}" in proc.stderr
    assert "af_key.ko" in proc.stdout
