"""``kmodkit init`` adopts an existing Kbuild tree (issue 12), and ``new --dir`` writes into a directory that
holds other files.  The trees are the proof project's sources (tests/data/projects/core) with Kbuild files
that need no manifest, copied here; the oracle for "builds exactly what make builds" is a real build whose
manifest and make must agree."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit.errors import UserError
from kmodkit.kbuild.adopt import Adoption
from kmodkit.kbuild.builder import Build, State
from kmodkit.kbuild.manifest import Manifest
from kmodkit.kbuild.project import NewProject
from conftest import need

CORE = Path(__file__).parent / "data" / "projects" / "core"


def _tree(tmp_path: Path) -> Path:
    """core without its manifest, its Kbuild files carrying the flags themselves (as a vendor tree does)."""
    tree = tmp_path / "vendor"
    shutil.copytree(CORE, tree, ignore=shutil.ignore_patterns("kmodkit.toml", "out"))
    (tree / "Kbuild").write_text("# fleetmon\nccflags-y := -I$(src) -DFLEETMON_MAX_SOURCES=4\n"
                                 "obj-m += fleetmon.o\nfleetmon-y := fleetmon_main.o \\\n\tlib/ring.o\n"
                                 "obj-m += jiffies/\nobj-$(CONFIG_FLEETMON_EXTRA) += extra.o\n")
    (tree / "jiffies" / "Kbuild").write_text("ccflags-y := -I$(src)/..\nobj-m := fleetmon_jiffies.o\n")
    return tree


def _snapshot(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


def test_init_reads_obj_m_composite_objects_and_subdirectories(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    before = _snapshot(tree)
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "init", str(tree)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {tree}/Kbuild:7: obj-$(CONFIG_FLEETMON_EXTRA) += extra.o (built only when a CONFIG option" \
        in proc.stderr
    m = Manifest.load(tree)
    assert [(x.name, x.subdir, x.sources) for x in m.modules] == [
        ("fleetmon", "", ("fleetmon_main.c", "lib/ring.c")),
        ("fleetmon_jiffies", "jiffies", ("jiffies/fleetmon_jiffies.c",))]
    after = _snapshot(tree)
    assert after.pop("kmodkit.toml") and after == before  # nothing else touched


def test_init_refuses_to_overwrite_a_manifest(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    (tree / "kmodkit.toml").write_text("# mine\n")
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "init", str(tree)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr == (f"error: {tree}/kmodkit.toml: exists already; init never "
                                                    "overwrites it; edit it, or remove it first to write a new one\n")
    assert (tree / "kmodkit.toml").read_text() == "# mine\n"


def test_init_of_a_directory_without_kbuild_says_so(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no Kbuild or Makefile with obj-m lines"):
        Adoption(tmp_path)


@pytest.mark.kernel
@pytest.mark.slow
def test_the_adopted_manifest_builds_exactly_what_make_builds(tmp_path: Path, cloud_tree) -> None:
    if cloud_tree.headers is None:
        need("the cloud kernel's headers")
    tree = _tree(tmp_path)
    Adoption(tree).write()
    r = Build(tree, kernels=[cloud_tree.release], workdir=tmp_path / "work").run().results[0]
    assert r.state is State.BUILT, r.problem  # a disagreement between manifest and make would fail it
    assert [p.name for p in r.modules] == ["fleetmon.ko", "fleetmon_jiffies.ko"]


def test_new_writes_into_a_directory_with_other_files(tmp_path: Path) -> None:
    """0.1 refused any non-empty directory, a fresh git repository with a README included."""
    (tmp_path / "p" / ".git").mkdir(parents=True)
    (tmp_path / "p" / "README.md").write_text("mine")
    written = NewProject("demo", tmp_path / "p").create()
    assert tmp_path / "p" / "demo.c" in written and (tmp_path / "p" / "README.md").read_text() == "mine"
    with pytest.raises(UserError, match="demo.c: exists; new never overwrites a file"):
        NewProject("demo", tmp_path / "p")
