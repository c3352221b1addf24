"""``kmodkit new``: the project it writes, that it builds as it is, and that the bundled example is one."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit.cli.main import main
from kmodkit.errors import UserError
from kmodkit.kbuild.manifest import Manifest
from kmodkit.kbuild.project import NewProject

EXAMPLE = Path(__file__).parent.parent / "example" / "hello"


def test_files_and_manifest(tmp_path: Path) -> None:
    written = NewProject("demo_mod", tmp_path / "p").create()
    names = sorted(str(p.relative_to(tmp_path / "p")) for p in written)
    assert names == sorted(["demo_mod.c", "demo_mod.h", "Kbuild", "Makefile", "kmodkit.toml", "tests/vm-test.sh",
                            ".gitignore"])
    m = Manifest.load(tmp_path / "p")
    assert (m.name, m.version, m.sources, m.targets, m.signing) == ("demo_mod", "0.1.0", ("demo_mod.c",), (), None)
    assert [(p.name, p.type, p.default) for p in m.parameters] == [("repeat", "int", 1), ("loops", "int", 100),
                                                                  ("sleep_ms", "int", 0), ("spin_us", "int", 0),
                                                                  ("crash", "bool", False)]
    assert m.test_script == "tests/vm-test.sh"
    assert os.stat(tmp_path / "p/tests/vm-test.sh").st_mode & stat.S_IXUSR
    src = (tmp_path / "p/demo_mod.c").read_text()
    for needle in ("module_init(demo_mod_init);", "module_exit(demo_mod_exit);", "module_param(repeat, int, 0444);",
                   "MODULE_PARM_DESC(repeat,", 'MODULE_LICENSE("GPL");', 'MODULE_VERSION("0.1.0");',
                   "EXPORT_SYMBOL_GPL(demo_mod_count);"):
        assert needle in src
    assert "KDIR ?= /lib/modules/$(shell uname -r)/build" in (tmp_path / "p/Makefile").read_text()
    assert "obj-m := demo_mod.o" in (tmp_path / "p/Kbuild").read_text()


def test_vm_script_is_valid_sh(tmp_path: Path) -> None:
    NewProject("demo", tmp_path / "p").create()
    subprocess.run(["sh", "-n", str(tmp_path / "p/tests/vm-test.sh")], check=True)


def test_bundled_example_is_exactly_what_new_makes() -> None:
    rendered = NewProject("hello", Path("/nonexistent-new-dir")).render()
    for rel, (text, mode) in rendered.items():
        assert (EXAMPLE / rel).read_text() == text, rel
        assert bool(os.stat(EXAMPLE / rel).st_mode & stat.S_IXUSR) == bool(mode & stat.S_IXUSR), rel


@pytest.mark.parametrize("name", ["9lives", "has-dash", "x" * 56, "", "a b", "module", "_", "cpu", "int", "kernel"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError):
        NewProject(name, tmp_path / "p")


def test_a_file_new_would_overwrite_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "Kbuild").write_text("mine")
    with pytest.raises(UserError, match="exists; new never overwrites a file"):
        NewProject("demo", tmp_path / "p")
    assert (tmp_path / "p" / "Kbuild").read_text() == "mine"


def test_generated_makefile_builds_with_plain_make(tmp_path: Path, cloud_tree) -> None:
    """The project builds as it is, with the user's own `make KDIR=...` and no kmodkit involved."""
    NewProject("demo", tmp_path / "p").create()
    proc = subprocess.run(["make", f"KDIR={cloud_tree.headers}"], cwd=tmp_path / "p", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "p/demo.ko").is_file()
    assert "warning:" not in proc.stdout + proc.stderr
    info = subprocess.run(["modinfo", "-F", "vermagic", str(tmp_path / "p/demo.ko")], capture_output=True, text=True)
    assert info.stdout.split()[0] == cloud_tree.release


def test_cli_new_with_shell_metacharacters_in_the_path(tmp_path: Path) -> None:
    target = tmp_path / "my project;$(touch pwned)'\""
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "new", "demo", "--dir", str(target)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (target / "demo.c").is_file() and not (tmp_path / "pwned").exists()


def test_cli_new_refuses_a_bad_name_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["new", "bad-name", "--dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad-name: is not a valid module name: it is not a C identifier") \
        and err.count("\n") == 1
