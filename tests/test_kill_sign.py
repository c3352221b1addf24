"""``kmodkit sign`` killed with SIGKILL at random moments, many times (issue 10, item 5).

Only the main process is killed, as an operator's ``kill -9`` does.  After
each kill: no process of the run is left (the workers held the forked
private key and went on renaming files in), nothing changes any more, and
every module is either its old bytes or exactly the bytes a complete run
writes.  The next run then finishes the job and leaves no temp file behind.
Real Debian modules are copied to a temp dir; the key is made by openssl.
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
from kmodkit.fileio import is_temp_name
from test_signing_sign_file import openssl_key, signer_for

KILLS = int(os.environ.get("KMODKIT_KILLS", "12"))


def processes_mentioning(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``marker`` (a test's unique temp dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def wait_until_gone(marker: str, seconds: float = 3.0) -> list[int]:
    """The processes still mentioning ``marker`` after waiting up to ``seconds`` for them to end."""
    deadline = time.monotonic() + seconds
    while (left := processes_mentioning(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill_all(pids: list[int]) -> None:
    """SIGKILL ``pids`` (what a failed check leaves must not outlive the test)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def temps_under(root: Path) -> list[Path]:
    """Every kmodkit temp file under ``root``."""
    return [p for p in root.rglob("*") if is_temp_name(p.name)]


def kmodkit_env(tmp: Path) -> dict[str, str]:
    """The environment a kmodkit subprocess runs in: this source tree first, a private cache."""
    src = str(Path(__file__).parent.parent / "src")
    return dict(os.environ, PYTHONPATH=src, XDG_CACHE_HOME=str(tmp / "cache"))


@pytest.mark.slow
@pytest.mark.kernel
def test_killed_sign_leaves_no_worker_no_late_rename_and_no_stale_temp(generic_tree: KernelTree,
                                                                       tmp_path: Path) -> None:
    key, cert = openssl_key(tmp_path, "kill", ["-newkey", "rsa:4096"], "kmodkit kill test")
    small = [p for p in generic_tree.modules() if p.stat().st_size < 150_000]
    originals: dict[str, bytes] = {}
    for i, mod in enumerate(small[::max(1, len(small) // 48)][:48]):
        originals[f"d{i % 3}/{mod.name}"] = mod.read_bytes()
    signer = signer_for(key, cert, replace=True)
    expected = {rel: signer.sign_bytes(data, rel)[0] for rel, data in originals.items()}
    work = tmp_path / "modules"
    cmd = [sys.executable, "-m", "kmodkit", "sign", "--key", str(key), "--cert", str(cert), "--replace",
           "-j", "2", str(work)]
    env = kmodkit_env(tmp_path)

    def restore() -> None:
        shutil.rmtree(work, ignore_errors=True)
        for rel, data in originals.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_bytes(data)

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(work)): p.read_bytes() for p in work.rglob("*.ko")}

    restore()
    start = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    full = time.monotonic() - start
    assert snapshot() == expected

    rng = random.Random(int(os.environ.get("KMODKIT_KILL_SEED", "10")))
    outcomes = {"old": 0, "new": 0, "temps left": 0}
    for _ in range(KILLS):
        restore()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = wait_until_gone(str(work))
        kill_all(left)
        assert not left, f"{len(left)} worker(s) outlived the killed sign"
        before = snapshot()
        time.sleep(0.3)
        assert snapshot() == before, "files were renamed in after the run was killed"
        for rel, data in before.items():
            assert data in (originals[rel], expected[rel]), f"{rel} is neither old nor new"
            outcomes["new" if data == expected[rel] else "old"] += 1
        outcomes["temps left"] += len(temps_under(work))
        # the next run: completes the job and sweeps what the killed one left
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        assert snapshot() == expected
        assert temps_under(work) == [], "the next run left the killed run's temp files behind"
    print(f"{KILLS} kills of sign over {len(originals)} modules: {outcomes}")
