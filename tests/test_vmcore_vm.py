"""Crash dumps for real: ``vm run --dump-on-panic`` dumps panicked 6.1 and 6.12 guests, and the kernel
log ``oops --vmcore --dmesg`` reads out of each dump through VMCOREINFO alone equals Debian's
``makedumpfile --dump-dmesg`` on the same file, byte for byte; ``oops --vmcore`` decodes the crash.

The 6.1 generic guest dies of test_oops_decode's NULL dereference (``--panic-on-oops``); the 6.12 cloud
guest of its soft lockup (``softlockup_panic=1``), booted with ``log_buf_len=1M`` so that its ring
buffer is allocated at boot and reached through the direct map: the page-table walk, not only the
kernel image's mapping."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree, discover_trees, need
from test_oops_decode import CRASHY_APPEND, build_crashy

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.kernel]

#: series -> (kernel flavour, crash mode, extra kernel command line)
GUESTS = {
    "6.1": ("amd64", "null", ()),
    "6.12": ("cloud-amd64", "lockup", ("softlockup_panic=1", "log_buf_len=1M")),
}


def _tree(series: str) -> KernelTree:
    if shutil.which("qemu-system-x86_64") is None:
        need("qemu-system-x86")
    if shutil.which("makedumpfile") is None:
        need("makedumpfile")
    flavour = GUESTS[series][0]
    tree = next((t for t in discover_trees() if t.series == series and t.flavour == flavour and t.headers
                 and t.vmlinuz), None)
    if tree is None:
        need(f"a Debian {series} {flavour} kernel with its headers")
    assert tree is not None
    return tree


@pytest.fixture(scope="module", params=sorted(GUESTS))
def dumped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[str, Path, dict[str, object], subprocess.CompletedProcess[str]]:
    series: str = request.param
    tree = _tree(series)
    _flavour, mode, append = GUESTS[series]
    d = tmp_path_factory.mktemp(f"vmcore-{series}")
    assert tree.headers is not None
    build_crashy(d, tree.headers, (mode,))
    options = [w for a in (*CRASHY_APPEND, *append) for w in ("--append", a)]
    done = subprocess.run([sys.executable, "-m", "kmodkit", "vm", "run", "-k", tree.release, "--runs-dir",
                           str(d / "runs"), "--timeout", "600", "--memory", "256", "--module-path", str(d),
                           "--panic-on-oops", "--dump-on-panic", *options, "--", "insmod",
                           str(d / f"crashy_{mode}.ko")],
                          capture_output=True, text=True, cwd="/")
    (run_dir,) = (d / "runs").iterdir()
    record = json.loads((run_dir / "result.json").read_text())
    return series, d, record, done


def test_a_panicked_guest_leaves_a_private_vmcore_named_in_its_record(
        dumped: tuple[str, Path, dict[str, object], subprocess.CompletedProcess[str]]) -> None:
    _series, _d, record, done = dumped
    assert done.returncode == 5, done.stderr[-3000:]
    vmcore = Path(str(record["vmcore"]))
    assert record["panicked"] is True and record["vmcore_error"] is None
    assert vmcore.name == "vmcore" and vmcore.parent == Path(str(record["run_dir"]))
    assert os.stat(vmcore).st_mode & 0o777 == 0o400  # the guest's whole memory
    assert not list(vmcore.parent.glob("*.part"))
    assert f"the guest's memory at panic is in {vmcore}" in done.stderr
    assert " panic=0 " in (vmcore.parent / "console.log").read_text(errors="replace")  # stayed for the dump


def test_the_dumps_kernel_log_equals_makedumpfiles(
        dumped: tuple[str, Path, dict[str, object], subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    series, _d, record, _done = dumped
    vmcore = str(record["vmcore"])
    oracle = subprocess.run(["makedumpfile", "--dump-dmesg", vmcore, str(tmp_path / "dmesg")],
                            capture_output=True, text=True)
    assert oracle.returncode == 0, oracle.stderr
    ours = subprocess.run([sys.executable, "-m", "kmodkit", "oops", "--vmcore", vmcore, "--dmesg"],
                          capture_output=True)
    assert ours.returncode == 0, ours.stderr
    expected = (tmp_path / "dmesg").read_bytes()
    assert ours.stdout == expected
    assert expected.startswith(b"[    0.000000] Linux version " + series.encode())
    assert b"---[ end Kernel panic - not syncing: " in expected.splitlines()[-1]
    if "log_buf_len=1M" in GUESTS[series][2]:  # the ring was allocated at boot, outside the kernel image
        assert b"log_buf_len: 1048576 bytes\n" in expected


def test_the_dumps_crash_is_decoded_to_the_module_source(
        dumped: tuple[str, Path, dict[str, object], subprocess.CompletedProcess[str]]) -> None:
    series, d, record, _done = dumped
    mode = GUESTS[series][1]
    done = subprocess.run([sys.executable, "-m", "kmodkit", "oops", "--json", "--module-path", str(d),
                           "--vmcore", str(record["vmcore"])], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr  # reports found
    reports = json.loads(done.stdout)
    kind, guilty = {"null": ("null-deref", {"crashy_null", "crashy_run"}),
                    "lockup": ("soft-lockup", {"crashy_spin"})}[mode]
    crash = next(r for r in reports if r["kind"] == kind)
    assert crash["guilty"]["symbol"].split(".")[0] in guilty
    assert crash["guilty"]["module"] == f"crashy_{mode}"
    (src, *_inlined) = crash["guilty"]["source"]
    assert Path(src["file"]).name == "crashy_common.h"
    # the console's copy of the log, decoded by vm run, names the same line
    from_console = next(r for r in record["reports"] if r["kind"] == kind)  # type: ignore[attr-defined]
    assert from_console["guilty"]["source"][0] == src
    assert reports[-1]["panic"] and reports[-1]["panic"] == record["reports"][-1]["panic"]  # type: ignore[index]


def test_a_truncated_dump_made_in_the_test_is_one_error_line(
        dumped: tuple[str, Path, dict[str, object], subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    _series, _d, record, _done = dumped
    cut = tmp_path / "vmcore.cut"
    with open(str(record["vmcore"]), "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(4 << 20))  # headers, notes and the first pages of memory: not the log
    for args in (["--dmesg"], ["--json"], []):
        done = subprocess.run([sys.executable, "-m", "kmodkit", "oops", "--vmcore", str(cut), *args],
                              capture_output=True, text=True)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr
        if args == ["--json"]:  # the dump's error record in oops's list on stdout, nothing on stderr
            [record_] = json.loads(done.stdout)
            assert done.stderr == "" and record_["error"]["what"] == str(cut), done.stdout
            assert record_["error"]["why"].startswith("truncated vmcore: "), record_
            continue
        assert done.stderr.startswith(f"error: {cut}: truncated vmcore: ") and done.stderr.count("\n") == 1, done.stderr
