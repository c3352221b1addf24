"""The ``kmodkit oops`` seam: logs from files, stdin and a stream; exit statuses; text and JSON; the
library object it drives.  Inputs are satyr's real reports (../shared/oops-corpus) and junk."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_oops_corpus import _corpus
from test_oops_logs import OOPS_61, WARN_61

from kmodkit.errors import UserError
from kmodkit.klog.diagnose import OopsQuery

KMODKIT = [sys.executable, "-m", "kmodkit", "oops"]


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KMODKIT, *args], input=stdin, capture_output=True, text=True, timeout=120)


def test_no_report_exits_zero(tmp_path: Path) -> None:
    log = tmp_path / "quiet.log"
    log.write_text("[    1.000000] Linux version 6.1.0\n[    2.000000] systemd[1]: Started foo.\n")
    r = _run(str(log))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_reports_exit_one_with_titles_and_line_numbers() -> None:
    r = _run(str(_corpus() / "rhbz-865695-2"), str(_corpus() / "gitlog-01"))
    assert r.returncode == 1, r.stderr
    titles = [line for line in r.stdout.splitlines() if line.startswith("== ")]
    assert titles == [
        f"== kernel BUG in wdev_priv.part.8  [bug, {_corpus() / 'rhbz-865695-2'}:1]",
        f"== possible recursive locking detected in mxs_mmc_enable_sdio_irq  [lockdep, {_corpus() / 'gitlog-01'}:2]",
        # the log ends right after the trace: it may have gone on
        f"== BUG: spinlock lockup suspected on CPU#0, ksdioirqd/mmc0/73  [bug, {_corpus() / 'gitlog-01'}:35, "
        "truncated]",
    ]
    assert "  => " in r.stdout and "ud2" in r.stdout  # the Code: line disassembled, the fault marked


def test_a_missing_log_is_reported_and_the_others_still_read(tmp_path: Path) -> None:
    r = _run(str(tmp_path / "nope.log"), str(_corpus() / "rhbz-1518943"))
    assert r.returncode == 2
    assert r.stderr == f"error: {tmp_path / 'nope.log'}: no such file or directory\n"
    assert "== BUG: kernel NULL pointer dereference in amdgpu_vm_sdma_commit" in r.stdout


def test_a_directory_is_not_a_log(tmp_path: Path) -> None:
    r = _run(str(tmp_path))
    assert r.returncode == 2 and r.stderr == f"error: {tmp_path}: is a directory, expected a kernel log\n"


def test_json_from_stdin() -> None:
    r = _run("--json", stdin=(_corpus() / "rhbz-1518943").read_text())
    assert r.returncode == 1, r.stderr
    (doc,) = json.loads(r.stdout)
    assert doc["kind"] == "null-deref" and doc["source"] == "<stdin>" and doc["line"] is None
    assert doc["rip"]["symbol"] == "amdgpu_vm_sdma_commit" and doc["rip"]["source"] == []
    assert doc["guilty"]["module"] == "amdgpu" and len(doc["frames"]) == 17
    assert doc["release"] == "5.3.6-300.fc31.x86_64"


def test_bad_module_path_is_a_usage_error(tmp_path: Path) -> None:
    r = _run("--module-path", str(tmp_path / "none"), str(_corpus() / "gitlog-01"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {tmp_path / 'none'}: no such directory; pass a directory")
    with pytest.raises(UserError):
        OopsQuery(logs=("x",), module_paths=(str(tmp_path / "none"),))


def test_follow_prints_each_report_while_the_stream_is_still_open() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*KMODKIT, "--follow", "--json"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write((OOPS_61 + "[ 9.0] an unrelated line\n").encode())
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no report while the stream is open"
        first = json.loads(proc.stdout.readline())
        assert first["kind"] == "null-deref"
        proc.stdin.write(WARN_61.encode())
        proc.stdin.flush()
        start = time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # ended: printed after the idle second
        assert ready and time.monotonic() - start < 30
        assert json.loads(proc.stdout.readline())["kind"] == "warning"
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 1


def test_follow_reads_stdin_only() -> None:
    r = _run("--follow", str(_corpus() / "gitlog-01"))
    assert r.returncode == 2 and "dmesg -w | kmodkit oops --follow" in r.stderr


def test_no_log_on_a_terminal_is_a_usage_error() -> None:
    import pty

    master, slave = pty.openpty()
    try:
        r = subprocess.run(KMODKIT, stdin=slave, capture_output=True, text=True, timeout=120)
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 2
    assert r.stderr == "error: oops: no log given; name log files, or pipe one in: dmesg | kmodkit oops\n"
