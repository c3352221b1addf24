"""Crashes in a booted guest are results: ``kmodkit vm run`` decodes the guest kernel's reports into
result.json and a summary, a panicked guest has its own exit status (5) with its kernel log kept, and
``health`` / ``status`` inside the guest name the module the kernel warned or died in.

Two boots of the generic kernel with test_oops_decode's crash module (WARN_ON, NULL dereference):
one where the kernel survives both (Debian does not panic on oops) and health is asked after each,
one with ``--panic-on-oops`` where the NULL dereference panics the guest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kmodkit
from conftest import KernelTree, discover_trees, need
from test_oops_decode import build_crashy

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.kernel]

SRC = str(Path(kmodkit.__file__).resolve().parent.parent)

#: the guest's script: insmod the WARN module, ask health and status, insmod the NULL-dereference module
#: (its insmod dies in the oops), ask health again; each answer on one marked line
GUEST = """#!/bin/sh
export PYTHONPATH={src}
insmod {d}/crashy_warn.ko; echo "INSMOD-WARN $?"
h=$({py} -m kmodkit health --manifest {d}/kmodkit.toml --json); echo "HEALTH-WARN $? $(echo "$h" | tr -d '\\n')"
s=$({py} -m kmodkit status --json crashy_warn); echo "STATUS-WARN $? $(echo "$s" | tr -d '\\n')"
insmod {d}/crashy_null.ko; echo "INSMOD-NULL $?"
h=$({py} -m kmodkit health --manifest {d}/kmodkit.toml --json); echo "HEALTH-NULL $? $(echo "$h" | tr -d '\\n')"
echo done
"""


def _generic_tree() -> KernelTree:
    if shutil.which("qemu-system-x86_64") is None:
        need("qemu-system-x86")
    tree = next((t for t in discover_trees() if t.flavour == "amd64" and t.headers and t.vmlinuz), None)
    if tree is None:
        need("a Debian generic amd64 kernel with its headers")
    assert tree is not None and tree.headers is not None
    return tree


@pytest.fixture(scope="module")
def crashy(tmp_path_factory: pytest.TempPathFactory) -> tuple[KernelTree, Path]:
    tree = _generic_tree()
    d = tmp_path_factory.mktemp("vmcrash")
    assert tree.headers is not None
    build_crashy(d, tree.headers, ("warn", "null"))
    (d / "kmodkit.toml").write_text('[[health.modules]]\nname = "crashy_warn"\n[[health.modules]]\nname = "crashy_null"\n')
    (d / "guest.sh").write_text(GUEST.format(src=SRC, d=d, py=sys.executable))
    (d / "guest.sh").chmod(0o755)
    return tree, d


def _vm_run(tree: KernelTree, d: Path, name: str, *options: str, command: tuple[str, ...] = ()
            ) -> tuple[subprocess.CompletedProcess[str], dict[str, object], Path]:
    runs = d / f"runs-{name}"
    done = subprocess.run([sys.executable, "-m", "kmodkit", "vm", "run", "-k", tree.release, "--runs-dir", str(runs),
                           "--timeout", "600", "--module-path", str(d), *options, "--",
                           *(command or (str(d / "guest.sh"),))], capture_output=True, text=True, cwd="/")
    (run_dir,) = runs.iterdir()
    record = json.loads((run_dir / "result.json").read_text())
    return done, record, run_dir


@pytest.fixture(scope="module")
def survived(crashy: tuple[KernelTree, Path]) -> tuple[subprocess.CompletedProcess[str], dict[str, object], Path]:
    tree, d = crashy
    return _vm_run(tree, d, "survived")


@pytest.fixture(scope="module")
def panicked(crashy: tuple[KernelTree, Path]) -> tuple[subprocess.CompletedProcess[str], dict[str, object], Path]:
    tree, d = crashy
    script = d / "panic.sh"
    script.write_text(f"#!/bin/sh\ninsmod {d}/crashy_warn.ko\ninsmod {d}/crashy_null.ko\necho survived\n")
    script.chmod(0o755)
    return _vm_run(tree, d, "panicked", "--panic-on-oops", "--append", "kmodkit_no_such_param=1",
                   command=(str(script),))


def _marked(out: str, mark: str) -> tuple[int, dict[str, object]]:
    line = next(l for l in out.splitlines() if l.startswith(mark + " "))
    _, rc, doc = line.split(" ", 2)
    return int(rc), json.loads(doc)


def _guilty_source(report: dict[str, object]) -> tuple[str, str, int]:
    g = report["guilty"]
    assert isinstance(g, dict)
    src = g["source"][0]
    return str(g["symbol"]), Path(src["file"]).name, int(src["line"])


def test_reports_of_a_surviving_guest_are_decoded_into_the_record(
        survived: tuple[subprocess.CompletedProcess[str], dict[str, object], Path]) -> None:
    done, record, _run_dir = survived
    assert done.returncode == 0, done.stderr[-3000:]
    assert record["panicked"] is False and record["exit_status"] == 0
    reports = record["reports"]
    assert isinstance(reports, list)
    assert [r["kind"] for r in reports] == ["warning", "null-deref"]
    assert _guilty_source(reports[0])[:2] == ("crashy_warn", "crashy_common.h")
    assert _guilty_source(reports[1])[1] == "crashy_common.h"
    summary = [l for l in done.stderr.splitlines() if l.startswith("kmodkit vm: warning: WARNING in crashy_warn at ")]
    assert summary and summary[0].endswith(f"crashy_common.h:{_guilty_source(reports[0])[2]}"), done.stderr[-2000:]


def test_health_in_the_guest_names_the_warning_then_the_oops(
        survived: tuple[subprocess.CompletedProcess[str], dict[str, object], Path]) -> None:
    done, _record, _run_dir = survived
    assert "INSMOD-WARN 0" in done.stdout
    rc, doc = _marked(done.stdout, "HEALTH-WARN")
    assert rc == 1 and doc["healthy"] is False
    problems = {m["module"]: m["problems"] for m in doc["modules"]}  # type: ignore[attr-defined]
    assert problems["crashy_warn"] == ["the kernel warned in its code (taint W) at " +
                                       problems["crashy_warn"][0].split(" at ", 1)[1]]
    assert problems["crashy_warn"][0].endswith(": WARNING in crashy_warn")
    assert problems["crashy_null"] == ["not loaded"]
    rc, status = _marked(done.stdout, "STATUS-WARN")
    assert rc == 0
    (mod,) = status["modules"]  # type: ignore[misc]
    assert mod["name"] == "crashy_warn" and mod["crashes"] == problems["crashy_warn"]
    assert "INSMOD-NULL 0" not in done.stdout  # the oops killed insmod
    rc, doc = _marked(done.stdout, "HEALTH-NULL")
    problems = {m["module"]: m["problems"] for m in doc["modules"]}  # type: ignore[attr-defined]
    assert rc == 1
    assert any(p.startswith("the kernel died in its code (taint D)") and "NULL pointer dereference" in p
               for p in problems["crashy_null"]), problems
    assert len(problems["crashy_warn"]) == 1  # the oops was not in crashy_warn's code


def test_a_panicked_guest_exits_5_and_keeps_its_log_and_record(
        panicked: tuple[subprocess.CompletedProcess[str], dict[str, object], Path]) -> None:
    done, record, run_dir = panicked
    assert done.returncode == 5, done.stderr[-3000:]
    assert record["panicked"] is True and record["exit_status"] == 5
    assert "survived" not in done.stdout
    assert "oops=panic" in record["append"]  # type: ignore[operator]
    kernel_log = (run_dir / "kernel.log").read_text()
    assert kernel_log.startswith("[    0.000000] Linux version ")
    assert kernel_log.count("Kernel panic - not syncing") == 1  # the replay only, not the console's first print
    reports = record["reports"]
    assert isinstance(reports, list)
    # klog ends the oops at its end-of-trace marker: the panic that follows is a report of its own
    assert [r["kind"] for r in reports] == ["warning", "null-deref", "panic"]
    assert _guilty_source(reports[1])[1] == "crashy_common.h"
    assert reports[2]["panic"] == "Fatal exception"
    assert "the guest kernel panicked" in done.stderr
    assert any(l.startswith("kmodkit vm: null-deref: BUG: kernel NULL pointer dereference") and "crashy_common.h:" in l
               for l in done.stderr.splitlines()), done.stderr[-2000:]


def test_the_kernels_complaint_about_the_command_line_is_relayed(
        panicked: tuple[subprocess.CompletedProcess[str], dict[str, object], Path]) -> None:
    done, record, _run_dir = panicked
    (complaint,) = record["cmdline_complaints"]  # type: ignore[misc]
    assert 'Unknown kernel command line parameters "kmodkit_no_such_param=1' in complaint
    assert f"kmodkit vm: warning: the guest kernel says: {complaint}" in done.stderr
