"""One cache-directory helper: every domain's cache lands under $XDG_CACHE_HOME/kmodkit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmodkit._util.cachedir import cache_dir


def test_cache_dir_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir("vm-runs") == str(tmp_path / "kmodkit" / "vm-runs")


@pytest.mark.parametrize("value", ["", "relative/cache"])
def test_cache_dir_ignores_an_empty_or_relative_xdg_cache_home(value: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # the XDG spec: a relative path is invalid and must be ignored (it would follow the working directory)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", value)
    assert cache_dir() == str(tmp_path / ".cache" / "kmodkit")


def test_every_domain_asks_the_one_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kmodkit.modfile.cache import default_path
    from kmodkit.signing.kernel import cache_dir as certs_dir
    from kmodkit.vm.kernel_image import _cache_dir as vmlinux_dir
    from kmodkit.vm.machine import _default_runs_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    base = str(tmp_path / ".cache" / "kmodkit") + os.sep
    for where in (default_path(), certs_dir(), vmlinux_dir(), _default_runs_dir()):
        assert where.startswith(base), where
    src = Path(__file__).parent.parent / "src" / "kmodkit"
    readers = [p for p in src.rglob("*.py") if 'environ.get("XDG_CACHE_HOME"' in p.read_text()]
    assert [p.name for p in readers] == ["cachedir.py"]
