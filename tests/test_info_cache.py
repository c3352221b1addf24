"""The cache of described files: same JSON cold and warm, a changed file is described afresh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree

KMODKIT = [sys.executable, "-m", "kmodkit"]


def _json(args: list[str], env: dict[str, str]) -> list[dict[str, object]]:
    r = subprocess.run([*KMODKIT, "info", "--json", *args], capture_output=True, check=True, env=env)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


@pytest.mark.kernel
def test_warm_equals_cold_and_changes_invalidate(tmp_path: Path, generic_tree: KernelTree) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    mods = tmp_path / "mods"
    mods.mkdir()
    for p in generic_tree.modules()[:150]:  # above the parallel threshold
        shutil.copy(p, mods / p.name)
    files = sorted(str(p) for p in mods.iterdir())
    nocache = _json(["--no-cache", *files], env)
    assert not (tmp_path / "cache").exists(), "--no-cache must not create the cache"
    cold = _json(files, env)
    assert list((tmp_path / "cache" / "kmodkit").glob("info-*.sqlite"))
    warm = _json(files, env)
    assert nocache == cold == warm
    # a different path to the same file reuses the entry but prints its own filename
    link = tmp_path / "link.ko"
    os.link(files[0], link)
    (via_link,) = _json([str(link), files[1]], env)[:1]
    assert via_link["filename"] == str(link) and {**via_link, "filename": files[0]} == warm[0]
    # rewrite a module with another module's bytes: the next run describes the new contents
    shutil.copy(files[1], files[0])
    again = _json(files, env)
    assert again[0]["name"] == warm[1]["name"] != warm[0]["name"]


def test_unwritable_cache_degrades_to_no_cache(tmp_path: Path) -> None:
    """A cache directory that cannot be created costs nothing but speed (module made in the test)."""
    from elfwriter import build, simple_module

    mod = tmp_path / "tiny.ko"
    mod.write_bytes(build(simple_module()))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    env = dict(os.environ, XDG_CACHE_HOME=str(blocker))
    r = subprocess.run([*KMODKIT, "info", "--json", str(mod), str(mod)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    docs = json.loads(r.stdout)
    assert len(docs) == 2 and docs[0]["modinfo"]["license"] == "GPL"


def test_cached_documents_are_keyed_on_the_format_and_one_target_reads_them_like_many(tmp_path: Path) -> None:
    """Entries planted in the cache (module made in the test): another format's is never served; one target
    and two targets print the same document."""
    import sqlite3

    from elfwriter import build, simple_module
    from kmodkit.modfile.cache import InfoCache, file_key
    from kmodkit.modfile.info import json_format

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    mod = tmp_path / "tiny.ko"
    mod.write_bytes(build(simple_module()))
    cold = _json([str(mod)], env)
    (db_path,) = (tmp_path / "cache" / "kmodkit").glob("info-*.sqlite")
    key = file_key(os.stat(mod))
    old = InfoCache(str(db_path), fmt="an older shape")
    old.put(key, {"name": "stale", "shape": "old"})
    old.close()
    assert _json([str(mod)], env) == _json([str(mod), str(mod)], env)[:1] == cold
    # an entry in the current format is what both read: it is data, rebuilt with the path asked for
    store = InfoCache(str(db_path), fmt=json_format())
    store.put(key, {**{k: v for k, v in cold[0].items() if k != "filename"}, "name": "from-cache"})
    store.close()
    one, two = _json([str(mod)], env), _json([str(mod), str(mod)], env)
    assert one[0]["name"] == two[0]["name"] == two[1]["name"] == "from-cache"
    assert one[0]["filename"] == str(mod) and list(one[0]) == list(cold[0])
    with sqlite3.connect(db_path) as db:
        formats = {row[0] for row in db.execute("SELECT format FROM docs")}
    assert formats == {"an older shape", json_format()}
