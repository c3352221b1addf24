"""Batches (run here or fanned out) report each failed item as one record, errors.ItemError, printed one way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit.errors import ItemError
from test_kill_sign import kmodkit_env
from test_signing_sign_file import openssl_key, signer_for


def bad_batch(sample_module: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A good module between an empty file and a text file (made in the test: reality has no such modules)."""
    (tmp_path / "empty.ko").write_bytes(b"")
    (tmp_path / "text.ko").write_bytes(b"not a module\n")
    (tmp_path / "good.ko").write_bytes(sample_module.read_bytes())
    return tmp_path / "good.ko", [tmp_path / "empty.ko", tmp_path / "text.ko"]


@pytest.mark.kernel
def test_fake_bad_items_of_sign_and_summary_are_the_same_record(sample_module: Path, tmp_path: Path) -> None:
    from kmodkit.modfile.summary import summarize

    key, cert = openssl_key(tmp_path, "k", ["-newkey", "rsa:2048"], "kmodkit batch test")
    mods = tmp_path / "mods"
    mods.mkdir()
    good, bad = bad_batch(sample_module, mods)
    paths = [str(bad[0]), str(good), str(bad[1])]
    summary = summarize(paths, jobs=1)
    signed = signer_for(key, cert, replace=True).sign_files(paths, jobs=1)
    assert signed[1].error is None and summary.modules == 1
    sign_errors = [r.error for r in signed if r.error is not None]
    for errors in (sign_errors, summary.errors):
        assert [type(e) for e in errors] == [ItemError, ItemError]
        assert [e.path for e in errors] == [str(p) for p in bad] and all(e.exit_status == 2 for e in errors)
        assert "empty" in errors[0].message

    env = kmodkit_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "sign", "--key", str(key), "--cert", str(cert),
                           "--replace", *paths], env=env, capture_output=True, text=True)
    assert proc.stderr.splitlines() == [f"error: {e}" for e in sign_errors]
    doc = json.loads(subprocess.run([sys.executable, "-m", "kmodkit", "info", "--summary", "--json", *paths],
                                    env=env, capture_output=True, text=True).stdout)
    assert doc["errors"] == [e.to_json() for e in summary.errors]


def test_info_and_index_report_bad_items_with_the_one_record() -> None:
    """Issue 9: five shapes of per-item error; info's results and the index's failures are ItemError now too."""
    import typing

    from kmodkit.errors import ItemError
    from kmodkit.index.depmod import DepmodResult
    from kmodkit.modfile.info import Rendered

    assert typing.get_type_hints(Rendered)["error"] == ItemError | None
    assert typing.get_type_hints(DepmodResult)["failures"] == list[ItemError]
