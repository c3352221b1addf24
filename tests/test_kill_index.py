"""``kmodkit index`` killed with SIGKILL at random moments and at its first rename, many times (issue 10, item 5).

The tree alternates between two states (a real module in ``extra/`` or not),
so the index before a run and after it differ in modules.dep, .alias and their .bin.  After each
kill: no process of the run is left; a reader opening the index
(``ModuleTree``, which deps, info -k and load use) sees one whole set, the
old or the new, never a mix; the next run writes the new set and leaves no
temp file and no journal.  Real Debian modules; the kills at the first
rename land inside the renaming, where 0.1 left modules.dep new and
modules.dep.bin old.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import KernelTree
from kmodkit.fileio import JOURNAL_NAME
from kmodkit.index.inputs import INDEX_FILES, TREE_FILES
from test_kill_sign import kill_all, kmodkit_env, temps_under, wait_until_gone

KILLS = int(os.environ.get("KMODKIT_KILLS", "12"))


def index_set(out: Path) -> tuple[bytes, ...]:
    """The bytes of every index file in ``out``, in depmod's order (b"" for a missing file)."""
    return tuple((out / n).read_bytes() if (out / n).exists() else b"" for n in INDEX_FILES)


@pytest.mark.slow
@pytest.mark.kernel
def test_killed_index_is_never_read_as_a_mix_and_the_next_run_repairs_it(generic_tree: KernelTree,
                                                                          tmp_path: Path) -> None:
    from kmodkit.index.lookup import ModuleTree

    root = tmp_path / "root"
    moddir = root / "lib" / "modules" / generic_tree.release
    (moddir / "kernel").mkdir(parents=True)
    for name in TREE_FILES:
        if (generic_tree.moddir / name).exists():
            shutil.copy(generic_tree.moddir / name, moddir / name)
    for sub in ("net", "crypto", "lib"):
        (moddir / "kernel" / sub).symlink_to(generic_tree.moddir / "kernel" / sub)
    extra_src = next(p for p in generic_tree.modules() if p.name == "dummy.ko")
    extra = moddir / "extra" / "dummy.ko"
    env = kmodkit_env(tmp_path)
    out = tmp_path / "out"

    def run(target: Path, *flags: str) -> list[str]:
        return [sys.executable, "-m", "kmodkit", "index", "-j", "2", "-b", str(root), "-o", str(target),
                *flags, generic_tree.release]

    def set_extra(present: bool) -> None:
        if present:
            extra.parent.mkdir(exist_ok=True)
            shutil.copy(extra_src, extra)
        else:
            shutil.rmtree(extra.parent, ignore_errors=True)

    refs = {}
    for present in (False, True):
        set_extra(present)
        subprocess.run(run(tmp_path / f"ref-{present}", "--no-cache"), env=env, check=True, capture_output=True)
        refs[present] = index_set(tmp_path / f"ref-{present}")
    differ = [n for n, a, b in zip(INDEX_FILES, refs[False], refs[True]) if a != b]
    assert {"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin"} <= set(differ)
    start = time.monotonic()
    subprocess.run(run(out), env=env, check=True, capture_output=True)  # out now holds the set with extra/
    full = time.monotonic() - start
    present = True

    rng = random.Random(int(os.environ.get("KMODKIT_KILL_SEED", "10")))
    seen = {"old": 0, "new": 0, "mixed on disk, whole when read": 0}
    for i in range(KILLS):
        present = not present
        set_extra(present)
        first = (out / INDEX_FILES[0]).stat().st_ino
        proc = subprocess.Popen(run(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 2:
            time.sleep(rng.uniform(0.2, 1.1) * full)
        else:  # the moment the first file is renamed in
            while proc.poll() is None and (out / INDEX_FILES[0]).stat().st_ino == first:
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = wait_until_gone(str(out))
        kill_all(left)
        assert not left, f"{len(left)} worker(s) outlived the killed index"
        raw = index_set(out)
        journal = (out / JOURNAL_NAME).exists()
        ModuleTree(str(out))  # what every reader does first
        now = index_set(out)
        assert now in (refs[not present], refs[present]), "a reader sees old and new index files mixed"
        if raw not in (refs[not present], refs[present]):
            assert journal and now == refs[present]
            seen["mixed on disk, whole when read"] += 1
        else:
            seen["new" if now == refs[present] else "old"] += 1
        subprocess.run(run(out), env=env, check=True, capture_output=True)
        assert index_set(out) == refs[present]
        assert temps_under(out) == [] and not (out / JOURNAL_NAME).exists()
    print(f"{KILLS} kills of index: {seen}")
