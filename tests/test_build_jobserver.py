"""The jobserver every kernel's make shares, against real GNU make."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import need

from kmodkit.kbuild.jobserver import Jobserver

# two jobs that each say which jobs were running while they ran: a job's marker exists from its start
# to its end, and each job looks at the markers halfway through
MAKEFILE = """\
all: a b
a b:
\t@touch $@.run; sleep 0.3; ls *.run > $@.seen; sleep 0.3; rm $@.run
"""


def _make_under(js: Jobserver, workdir: Path) -> dict[str, list[str]]:
    if shutil.which("make") is None:
        need("no make")
    (workdir / "Makefile").write_text(MAKEFILE)
    env = dict(os.environ, MAKEFLAGS=js.makeflags())
    with js.slot():
        proc = subprocess.run(["make", "-s"], cwd=workdir, env=env, pass_fds=js.fds, capture_output=True,
                              text=True, timeout=30)
    assert proc.returncode == 0 and "jobserver" not in proc.stderr, proc.stderr
    return {job: (workdir / f"{job}.seen").read_text().split() for job in ("a", "b")}


def test_one_slot_runs_makes_jobs_one_at_a_time(tmp_path: Path) -> None:
    with Jobserver(1) as js:
        seen = _make_under(js, tmp_path)
    assert seen == {"a": ["a.run"], "b": ["b.run"]}


def test_a_second_slot_lets_make_run_two_jobs_at_once(tmp_path: Path) -> None:
    with Jobserver(2) as js:
        seen = _make_under(js, tmp_path)
        # make gave the token back: both are in the pipe again
        assert len(os.read(js.fds[0], 16)) == 2
    assert seen == {"a": ["a.run", "b.run"], "b": ["a.run", "b.run"]}


def test_no_flags_on_the_command_line_would_override_the_jobserver() -> None:
    with Jobserver(3) as js:
        r, w = js.fds
        assert js.makeflags() == f"-j3 --jobserver-auth={r},{w}"


def test_a_slot_waits_until_a_token_is_written_back() -> None:
    with Jobserver(1) as js:
        entered = threading.Event()

        def second() -> None:
            with js.slot():
                entered.set()

        with js.slot():
            t = threading.Thread(target=second)
            t.start()
            assert not entered.wait(0.3)
        assert entered.wait(5)
        t.join(5)


def test_a_token_taken_by_a_nonblocking_reader_race_made_in_test() -> None:
    # GNU make 4.3 turns the shared read end non-blocking; a slot must then wait, not fail
    with Jobserver(1) as js:
        os.set_blocking(js.fds[0], False)
        token = os.read(js.fds[0], 1)
        entered = threading.Event()

        def take() -> None:
            with js.slot():
                entered.set()

        t = threading.Thread(target=take)
        t.start()
        assert not entered.wait(0.2)
        os.write(js.fds[1], token)
        assert entered.wait(5)
        t.join(5)


def test_zero_slots_is_refused() -> None:
    with pytest.raises(ValueError):
        Jobserver(0)
