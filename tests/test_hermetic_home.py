"""Every test has its own HOME and XDG_CACHE_HOME, subprocesses see them, and a run that writes into
the user's real cache fails (conftest.py's ``home`` fixture and its session-finish check)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REAL_CACHE

HERE = Path(__file__).parent
MODULE = HERE / "data" / "modules" / "i386" / "stp.ko"


def test_home_and_cache_are_the_tests_own(home: Path) -> None:
    assert os.environ["HOME"] == str(home) and Path.home() == home
    assert os.environ["XDG_CACHE_HOME"] == str(home / ".cache")
    assert not str(REAL_CACHE).startswith(str(home))
    # a subprocess inherits them
    seen = subprocess.run([sys.executable, "-c", "import os; print(os.environ['HOME'], os.environ['XDG_CACHE_HOME'])"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert seen == [str(home), str(home / ".cache")]


@pytest.mark.parametrize("turn", [1, 2])
def test_no_test_sees_another_tests_home(home: Path, turn: int) -> None:
    assert list(home.iterdir()) == []  # the other turn wrote here if the home were shared
    (home / "written-by-a-test").write_text(str(turn))


def test_kmodkit_caches_into_the_tests_home(home: Path) -> None:
    # two files: kmodkit 0.1 bypasses the cache for a single one
    done = subprocess.run([sys.executable, "-m", "kmodkit", "info", "--json", str(MODULE), str(MODULE)],
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert list((home / ".cache" / "kmodkit").glob("info-*.sqlite"))


INNER_CLEAN = '''
import os, subprocess, sys
from pathlib import Path
import pytest

MODULE = {module!r}

def _info():
    subprocess.run([sys.executable, "-m", "kmodkit", "info", "--json", MODULE, MODULE], check=True, capture_output=True)

@pytest.fixture(scope="session")
def described_once():
    _info()  # a session-scoped fixture runs before any per-test home: it must be isolated as well
    return os.environ["XDG_CACHE_HOME"]

def test_uses_the_cache(described_once, home):
    _info()
    assert list(Path(described_once, "kmodkit").glob("info-*.sqlite"))
    assert list((home / ".cache" / "kmodkit").glob("info-*.sqlite"))
'''

INNER_LEAK = '''
from conftest import REAL_CACHE

def test_writes_the_real_cache_on_purpose():
    REAL_CACHE.mkdir(parents=True, exist_ok=True)
    (REAL_CACHE / "leaked").write_text("a test that bypassed the home fixture")
'''


def _inner_run(tmp_path: Path, test_source: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run a small test file under our conftest.py in a fresh pytest, with a made-up real HOME."""
    suite, real_home = tmp_path / "suite", tmp_path / "real-home"
    suite.mkdir()
    real_home.mkdir()
    shutil.copy(HERE / "conftest.py", suite / "conftest.py")
    (suite / "test_inner.py").write_text(test_source)
    (suite / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "KMODKIT_TEST_REAL_CACHE")}
    env["HOME"] = str(real_home)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-c", str(suite / "pytest.ini"), str(suite)], cwd=suite, env=env, capture_output=True, text=True, check=False, timeout=120)
    return done, real_home


def test_session_fixtures_and_subprocesses_stay_out_of_the_real_cache_made_in_test(tmp_path: Path) -> None:
    done, real_home = _inner_run(tmp_path, INNER_CLEAN.format(module=str(MODULE)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert not (real_home / ".cache").exists()


def test_a_run_that_writes_the_real_cache_fails_made_in_test(tmp_path: Path) -> None:
    done, real_home = _inner_run(tmp_path, INNER_LEAK)
    assert "1 passed" in done.stdout  # the test itself passes: the session check catches it
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert f"error: the tests wrote into the real cache {real_home}/.cache/kmodkit: " in done.stdout
    assert "leaked" in done.stdout
