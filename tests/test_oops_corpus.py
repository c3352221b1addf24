"""kmodkit.klog against real reports nobody here wrote: satyr's (ABRT's) 49 kernel oopses in
../shared/oops-corpus, read in place (see its NOTICE), with satyr's own expectations as the oracle.

Where we differ from satyr, and why (asserted below, not skipped):
* satyr treats a file as one oops and counts every frame line in it; we cut a file into reports
  (gitlog-01 holds a lockdep report and a spinlock lockup): the counts are compared over all reports.
* satyr counts an x86 RIP printed with its address (kernels before 4.x: ``RIP: 0010:[<...>]``,
  i386's ``EIP is at``) as the first frame; we keep it apart as ``rip``: the test adds it back.
* satyr expects no stack trace for gitlog-10 and 13..31 (lockdep and slab reports its parser does not
  read); we read their traces, so for those files only the kind and a clean parse are checked.
* gitlog-05/06/08/09/12 print "Tainted: G  W" in lockdep's header; satyr counts W only there.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from kmodkit.klog.kinds import Kind
from kmodkit.klog.logread import scan_bytes
from kmodkit.klog.report import Report

#: ../shared beside the repository (Path(__file__).parents[2]); a worktree one level deeper looks one up
CORPUS = next((p / "shared" / "oops-corpus" for p in Path(__file__).resolve().parents[2:4]
               if (p / "shared" / "oops-corpus").is_dir()), Path(__file__).resolve().parents[2] / "shared" / "oops-corpus")
FILES = CORPUS / "satyr-kerneloopses"

#: the kinds of the reports in each file, in order, as a kernel developer reads them
KINDS: dict[str, tuple[str, ...]] = {
    "arm-hung-task-oops": ('panic',),
    "arm-hung-task-oops-2": ('null-deref',),
    "github-102": ('warning',),
    "github-113": ('warning',),
    "github-73": ('warning',),
    "github-73-modified": ('warning',),
    "gitlog-01": ('lockdep', 'bug'),
    "gitlog-02": ('lockdep', 'bug'),
    "gitlog-03": ('lockdep',),
    "gitlog-04": ('lockdep',),
    "gitlog-05": ('lockdep',),
    "gitlog-06": ('lockdep',),
    "gitlog-07": ('bug',),
    "gitlog-08": ('lockdep',),
    "gitlog-09": ('lockdep',),
    "gitlog-10": ('lockdep',),
    "gitlog-11": ('lockdep',),
    "gitlog-12": ('lockdep',),
    "gitlog-13": ('lockdep',),
    "gitlog-14": ('lockdep',),
    "gitlog-15": ('lockdep',),
    "gitlog-16": ('lockdep',),
    "gitlog-17": ('lockdep',),
    "gitlog-18": ('lockdep',),
    "gitlog-19": ('bug',),
    "gitlog-20": ('lockdep',),
    "gitlog-21": ('lockdep',),
    "gitlog-22": ('lockdep',),
    "gitlog-23": ('lockdep',),
    "gitlog-24": ('lockdep',),
    "gitlog-25": ('lockdep',),
    "gitlog-26": ('lockdep',),
    "gitlog-27": ('lockdep',),
    "gitlog-28": ('lockdep',),
    "gitlog-29": ('bug',),
    "gitlog-30": ('bug',),
    "gitlog-31": ('lockdep',),
    "rhbz-1040900-ppc64-1": ('warning',),
    "rhbz-1040900-s390x-1": ('warning',),
    "rhbz-1040900-s390x-2": ('bug',),
    "rhbz-1140681": ('gpf',),
    "rhbz-1235021": ('soft-lockup',),
    "rhbz-1518943": ('null-deref',),
    "rhbz-827868": ('warning',),
    "rhbz-827868-modified": ('warning',),
    "rhbz-836206": ('atomic-sleep', 'atomic-sleep'),
    "rhbz-865695-0": ('bug',),
    "rhbz-865695-2": ('bug',),
    "rhbz-865695-2-notime": ('bug',),
}


def _corpus() -> Path:
    if not FILES.is_dir():
        pytest.fail(f"the shared corpus is missing: {FILES} (it lives beside the repository)")
    return FILES


def _reports(name: str) -> list[Report]:
    return scan_bytes((_corpus() / name).read_bytes(), name)


def _expectations() -> list[dict[str, str]]:
    with open(CORPUS / "satyr-expectations.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_every_file_is_known() -> None:
    assert sorted(p.name for p in _corpus().iterdir()) == sorted(KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_kinds(name: str) -> None:
    reports = _reports(name)
    assert tuple(r.kind.value for r in reports) == KINDS[name]
    for r in reports:
        assert r.title and "{" not in r.title


def _satyr_frames(reports: list[Report]) -> list[str]:
    names = []
    for r in reports:
        if r.rip is not None and r.rip.symbol is not None:
            rip_line = r.lines[r.rip.index]
            if rip_line.startswith("EIP is at") or (rip_line.startswith("RIP: ") and "[<" in rip_line):
                names.append(r.rip.symbol)
        names += [f.symbol or "" for f in r.frames]
    return names


@pytest.mark.parametrize("row", _expectations() if CORPUS.is_dir() else [], ids=lambda r: r["file"])
def test_frames_agree_with_satyr(row: dict[str, str]) -> None:
    reports = _reports(row["file"])
    count = int(row["frame_count"])
    if row["file"].startswith("gitlog-") and count == 0:
        return  # satyr reads no trace there; see the module docstring
    frames = _satyr_frames(reports)
    assert len(frames) == count
    if count:
        assert frames[0] == row["first_function"]
        assert frames[-1] == row["last_function"]
    assert max(len(r.modules) for r in reports) == int(row["module_count"])
    taint = len(reports[0].taint_flags)
    if row["file"] in ("gitlog-05", "gitlog-06", "gitlog-08", "gitlog-09", "gitlog-12"):
        assert [f.letter for f in reports[0].taint_flags] == ["W"]
    else:
        assert taint == int(row["taint_count"])


def test_structure_of_an_old_x86_bug() -> None:
    (r,) = _reports("rhbz-865695-2")
    assert r.kind is Kind.BUG
    assert r.title == "kernel BUG in wdev_priv.part.8"
    assert r.rip is not None and r.rip.symbol == "wdev_priv.part.8" and r.rip.module == "wl"
    assert r.guilty == r.rip
    assert (r.cpu, r.pid, r.comm, r.release) == (1, 802, "wpa_supplicant", "3.6.1-1.fc17.x86_64")
    assert [f.name for f in r.taint_flags] == ["PROPRIETARY_MODULE", "OOT_MODULE"]
    assert r.registers["RAX"] == 0 and r.registers["RBX"] == 0xFFFF880138E111E0
    assert r.code is not None and r.code.data[r.code.fault or 0:][:2] == b"\x0f\x0b"  # ud2
    assert [m.taint for m in r.modules if m.name == "wl"] == ["PO"]
    assert sum(not f.reliable for f in r.frames) == 8
    assert r.complete


def test_structure_of_a_modern_null_deref() -> None:
    (r,) = _reports("rhbz-1518943")
    assert r.kind is Kind.NULL_DEREF
    assert r.title == "BUG: kernel NULL pointer dereference in amdgpu_vm_sdma_commit"
    assert r.frames[1].symbol == "amdgpu_vm_num_entries" and not r.frames[1].reliable
    assert r.modules[-1].name == "pinctrl_amd"  # "Modules linked in" wrapped onto a second line
