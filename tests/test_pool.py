"""One fan-out helper: job counts and thresholds in one place, forked workers that die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kmodkit._util.pool import MAX_JOBS, Cost, chunks, default_jobs, fan_out, jobs_for


def _square(x: int) -> int:
    return x * x


def _pid(_: object) -> int:
    return os.getpid()


def test_jobs_for_runs_small_batches_here_and_caps_the_default() -> None:
    assert jobs_for(Cost.SIGN.value - 1, Cost.SIGN, 4) == 0
    assert jobs_for(Cost.SIGN.value, Cost.SIGN, 4) == 4
    assert jobs_for(Cost.SCAN.value - 1, Cost.SCAN, 4) == 0
    assert jobs_for(10_000, Cost.READ, 1) == 0 and jobs_for(10_000, Cost.READ, 0) == 0
    assert jobs_for(10_000, Cost.READ) == (default_jobs() if default_jobs() > 1 else 0)
    assert 1 <= default_jobs() <= MAX_JOBS


def test_chunks_keep_order_and_bound_the_size() -> None:
    parts = chunks(list(range(1000)), 4, per_job=2, most=100)
    assert [x for p in parts for x in p] == list(range(1000))
    assert max(map(len, parts)) == 100
    assert chunks([], 4) == []


def test_fan_out_keeps_order_and_runs_in_forked_workers() -> None:
    assert list(fan_out(_square, range(50), 2)) == [x * x for x in range(50)]
    assert list(fan_out(_square, range(5), 1)) == [x * x for x in range(5)]
    assert os.getpid() not in set(fan_out(_pid, range(8), 2))


def test_no_other_module_makes_its_own_process_pool() -> None:
    src = Path(__file__).parent.parent / "src" / "kmodkit"
    users = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if "ProcessPoolExecutor(" in p.read_text())
    assert users == ["_util/pool.py"]


_ORPHAN_SCRIPT = """
import sys, time
from kmodkit._util.pool import fan_out
for _ in fan_out(time.sleep, [60] * 4, 2):
    pass
"""


def children_of(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_workers_die_when_the_parent_is_killed() -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent / "src"))
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], env=env)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = children_of(parent.pid)
        assert len(workers) >= 2, "the workers never started"
        time.sleep(0.5)  # past the initializer
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if alive(w)], "workers outlived their killed parent"
    finally:
        for w in set(workers + children_of(parent.pid)):
            if alive(w):
                os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
