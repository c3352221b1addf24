"""``kmodkit keys new --force`` killed with SIGKILL, many times: the key and certificate still match (issue 10, item 5).

0.1 wrote the key and the two certificates one by one, so a kill between
the renames left a new key with the old certificate.  keys.py now writes
the three through :func:`kmodkit.fileio.commit_files`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmodkit.fileio import finish_commit
from test_kill_sign import kill_all, kmodkit_env, temps_under, wait_until_gone

KILLS = int(os.environ.get("KMODKIT_KILLS", "12"))


@pytest.mark.slow
def test_killed_keys_new_force_leaves_a_key_that_matches_its_certificate(tmp_path: Path) -> None:
    from kmodkit.signing.keys import CERT_DER_FILE, CERT_PEM_FILE, KEY_FILE, load_certificate, load_private_key
    from kmodkit.signing.keys import public_keys_match

    out = tmp_path / "keys"
    cmd = [sys.executable, "-m", "kmodkit", "keys", "new", "--out", str(out), "--bits", "2048", "--force"]
    env = kmodkit_env(tmp_path)
    start = time.monotonic()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    full = time.monotonic() - start
    rng = random.Random(int(os.environ.get("KMODKIT_KILL_SEED", "10")))
    for i in range(KILLS):
        first = (out / KEY_FILE).stat().st_ino
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 2:
            time.sleep(rng.uniform(0.3, 1.1) * full)
        else:
            while proc.poll() is None and (out / KEY_FILE).stat().st_ino == first:
                pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = wait_until_gone(str(out))
        kill_all(left)
        assert not left
        finish_commit(str(out))  # what the next run, or a reader of the pair, does first
        key = load_private_key(str(out / KEY_FILE), None)
        der = load_certificate(str(out / CERT_DER_FILE))
        pem = load_certificate(str(out / CERT_PEM_FILE))
        assert der == pem and public_keys_match(key.public_key(), der.public_key()), "key and certificate differ"
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        assert temps_under(out) == []
