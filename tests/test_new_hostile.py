"""``kmodkit new`` with hostile values: each enters its template quoted for where it lands (C string, C comment,
TOML, shell), names that cannot build are refused with one line, and the projects still build (real headers,
make, modinfo as the oracle; the VM script runs with stand-ins for insmod/rmmod/dmesg/cat, never loading)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kmodkit.cli.main import main
from kmodkit.errors import UserError
from kmodkit.kbuild.manifest import Manifest
from kmodkit.kbuild.names import name_problem, taken_names
from kmodkit.kbuild.project import NewProject

#: a description that ends the source's header comment and defines a symbol, if pasted verbatim
COMMENT_BREAKER = '*/ int kmodkit_pwned = 1; /* "quoted" \\ back??/slash'
#: a version that runs a command, if pasted verbatim into the shell script
SHELL_PAYLOAD = "1.0$(touch PWNED)`touch PWNED2`'\"x"


def test_hostile_description_and_version_stay_text_and_the_project_builds(tmp_path: Path, cloud_tree) -> None:
    project = tmp_path / "p"
    NewProject("demo", project, version=SHELL_PAYLOAD, description=COMMENT_BREAKER, author='Eve "x" \\ <e@x>').create()
    proc = subprocess.run(["make", f"KDIR={cloud_tree.headers}"], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning:" not in proc.stdout + proc.stderr
    ko = project / "demo.ko"
    # the oracle: kmod's modinfo reads back exactly what was asked for
    for field, want in (("description", COMMENT_BREAKER), ("version", SHELL_PAYLOAD), ("author", 'Eve "x" \\ <e@x>')):
        got = subprocess.run(["modinfo", "-F", field, str(ko)], capture_output=True, text=True, check=True).stdout
        assert got == want + "\n", field
    symbols = subprocess.run(["nm", str(ko)], capture_output=True, text=True, check=True).stdout
    assert "kmodkit_pwned" not in symbols
    # and the project's own manifest reads back the same values
    m = Manifest.load(project)
    assert (m.version, m.description) == (SHELL_PAYLOAD, COMMENT_BREAKER)


def _stand_ins(bindir: Path, version: str) -> None:
    """insmod/rmmod that load nothing, a tee that writes nowhere, and a cat and dmesg that answer as a guest with the
    module loaded would."""
    bindir.mkdir()
    scripts = {
        "insmod": "exit 0",
        "rmmod": "exit 0",
        "dmesg": 'printf "demo: hello from demo (1 of 2)\\ndemo: hello from demo (2 of 2)\\n'
                 'demo: goodbye after 2 greetings\\n"',
        "cat": 'case "$1" in */repeat) echo 2;; */version) printf "%s\\n" "$STAND_IN_VERSION";; *) exit 1;; esac',
        "tee": 'while read -r _; do :; done',  # the write to /proc/driver/NAME
    }
    for name, body in scripts.items():
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)


def test_vm_script_does_not_execute_a_version_payload(tmp_path: Path) -> None:
    project = tmp_path / "p"
    NewProject("demo", project, version=SHELL_PAYLOAD).create()
    _stand_ins(tmp_path / "bin", SHELL_PAYLOAD)
    run = tmp_path / "run"
    run.mkdir()
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin", STAND_IN_VERSION=SHELL_PAYLOAD)
    proc = subprocess.run(["sh", str(project / "tests/vm-test.sh"), "/nonexistent/demo.ko"], cwd=run, env=env,
                          capture_output=True, text=True, timeout=30)
    assert not (run / "PWNED").exists() and not (run / "PWNED2").exists()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "PASS: demo"


@pytest.mark.parametrize("what", ["version", "description", "author"])
@pytest.mark.parametrize("char", ["\x01", "\n", "\x7f", "\u202e", "\u2028", "\udcff"])
def test_control_and_invisible_characters_are_refused(tmp_path: Path, what: str, char: str) -> None:
    with pytest.raises(UserError, match="control or invisible|not UTF-8"):
        NewProject("demo", tmp_path / "p", **{what: f"a{char}b"})
    assert not (tmp_path / "p").exists()


def test_quotes_and_backslashes_are_carried_into_a_valid_manifest(tmp_path: Path) -> None:
    NewProject("demo", tmp_path / "p", version='1"2\\3', description='say "hi" \\ #not a comment').create()
    m = Manifest.load(tmp_path / "p")
    assert (m.version, m.description) == ('1"2\\3', 'say "hi" \\ #not a comment')


def test_cli_refuses_a_control_character_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new", "demo", "--dir", str(tmp_path / "p"), "--description", "a\x1b[31mred"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "U+001B" in err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("name,why", [
    ("module", "module_exit"),  # the kernel's module_init/module_exit macros
    ("_", "reserved"),  # _init, _exit -> __init, __exit
    ("cpu", "cpu_init"),  # declared in arch/x86/include/asm/cpu.h
    ("irq", "irq_count"),  # a macro of the kernel's headers
    ("int", "C keyword"),
])
def test_names_that_cannot_build_are_refused_with_why(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                                                      why: str) -> None:
    assert main(["new", name, "--dir", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {name}: is not a valid module name: ") and why in err and err.count("\n") == 1


def test_taken_names_table_entries_do_not_build(tmp_path: Path, cloud_tree) -> None:
    """Two refused names rendered anyway (bypassing the check) fail to compile against real headers."""
    for name in ("cpu", "module"):
        assert name_problem(name) is not None and name in taken_names()
        project = object.__new__(NewProject)
        for field, value in (("name", name), ("directory", tmp_path / name), ("version", "1"), ("description", ""),
                             ("author", "a")):
            object.__setattr__(project, field, value)
        project.create()
        proc = subprocess.run(["make", f"KDIR={cloud_tree.headers}"], cwd=tmp_path / name, capture_output=True,
                              text=True)
        assert proc.returncode != 0 and "error:" in proc.stdout + proc.stderr, name


def test_an_accepted_unusual_name_builds(tmp_path: Path, cloud_tree) -> None:
    NewProject("Kmk_2", tmp_path / "p").create()
    proc = subprocess.run(["make", f"KDIR={cloud_tree.headers}"], cwd=tmp_path / "p", capture_output=True, text=True)
    assert proc.returncode == 0 and "warning:" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr

