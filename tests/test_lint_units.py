"""lint reads a module as its translation units: names shared through the project's own headers or used by
another file of the same module are not "make it static"; the oracle is make, which builds the module."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kmodkit.lint.checks import CHECKS
from kmodkit.lint.linter import Linter
from conftest import need

HEADER = """\
/* demo.h: what demo_main.c and demo_util.c share */
#ifndef DEMO_H
#define DEMO_H
extern unsigned int demo_calls;
int demo_util_count(void);
#endif
"""
MAIN = """\
#include <linux/module.h>
#include "demo.h"

unsigned int demo_calls;
int demo_orphan;
int demo_helper(void);

int demo_helper(void)
{
	return 1;
}

static int __init demo_init(void)
{
	demo_calls++;
	return demo_util_count() > 100 ? -EINVAL : 0;
}
static void __exit demo_exit(void) { }
module_init(demo_init);
module_exit(demo_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
"""
UTIL = """\
#include "demo.h"

int demo_helper(void);

int demo_util_count(void)
{
	return demo_calls + demo_helper();
}
"""


def _two_file_module(top: Path, manifest: bool) -> Path:
    top.mkdir()
    (top / "demo.h").write_text(HEADER)
    (top / "demo_main.c").write_text(MAIN)
    (top / "demo_util.c").write_text(UTIL)
    (top / "Kbuild").write_text("obj-m := demo.o\ndemo-y := demo_main.o demo_util.o\n")
    if manifest:
        (top / "kmodkit.toml").write_text('[module]\nname = "demo"\nsources = ["demo_main.c", "demo_util.c"]\n')
    return top


def _static_findings(path: Path) -> set[tuple[str, int, str]]:
    report = Linter(path, only=["non-static-global"]).run()
    return {(Path(f.file).name, f.line, f.message.split("'")[1]) for f in report.findings}


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "kbuild"])
def test_names_shared_between_a_modules_files_stay_global(tmp_path: Path, manifest: bool) -> None:
    """demo_calls and demo_util_count are declared in demo.h, demo_helper is used by demo_util.c: only the
    orphan is reported (0.1 reported all four, and making them static breaks the link)."""
    top = _two_file_module(tmp_path / "demo", manifest)
    assert _static_findings(top) == {("demo_main.c", 5, "demo_orphan")}


def test_one_file_alone_still_sees_its_own_header(tmp_path: Path) -> None:
    """Linting demo_util.c alone: demo_util_count is declared in the header it includes."""
    top = _two_file_module(tmp_path / "demo", manifest=False)
    assert _static_findings(top / "demo_util.c") == set()
    # demo_helper is used by demo_util.c, but that file is not part of what was asked for
    assert ("demo_main.c", 8, "demo_helper") in _static_findings(top / "demo_main.c")


def test_another_modules_use_does_not_count(tmp_path: Path) -> None:
    """Two modules in one Kbuild: a name one module's file uses from the other is not the first one's to share
    (modpost would call it undefined unless exported), so it is still reported."""
    top = tmp_path / "pair"
    top.mkdir()
    (top / "one.c").write_text('#include <linux/module.h>\nint one_value;\nMODULE_LICENSE("GPL");\n')
    (top / "two.c").write_text('#include <linux/module.h>\nextern int one_value;\n'
                               'static int two_get(void) { return one_value; }\nMODULE_LICENSE("GPL");\n')
    (top / "Kbuild").write_text("obj-m += one.o two.o\n")
    linter = Linter(top, only=["non-static-global"])
    assert [u.name for u in linter.units] == ["one", "two"]
    assert _static_findings(top) == {("one.c", 2, "one_value")}


def test_a_header_found_through_the_manifests_include_path(tmp_path: Path) -> None:
    top = tmp_path / "inc"
    (top / "include").mkdir(parents=True)
    (top / "include" / "inc.h").write_text("int inc_shared(void);\n")
    (top / "inc.c").write_text('#include <linux/module.h>\n#include "inc.h"\nint inc_shared(void) { return 0; }\n'
                               'int inc_private(void) { return 0; }\nMODULE_LICENSE("GPL");\n')
    (top / "kmodkit.toml").write_text('[module]\nname = "inc"\nsources = ["inc.c"]\ninclude = ["include"]\n')
    assert _static_findings(top) == {("inc.c", 4, "inc_private")}


def test_the_two_file_module_builds_as_lint_leaves_it(tmp_path: Path, kernel_trees: list) -> None:
    """The oracle: make builds the module with the shared names global, as lint leaves them."""
    tree = next((t for t in kernel_trees if t.headers is not None), None)
    if tree is None or shutil.which("make") is None:
        need("kernel headers and make")
    top = _two_file_module(tmp_path / "demo", manifest=True)
    proc = subprocess.run(["make", "-C", str(tree.headers), f"M={top}", "modules"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (top / "demo.ko").is_file()
    assert _static_findings(top) == {("demo_main.c", 5, "demo_orphan")}


def test_a_kbuild_module_without_c_sources_falls_back_to_the_directorys_files(tmp_path: Path) -> None:
    """A made-up tree whose only module is built from assembly: no unit without files, the .c files still linted."""
    top = tmp_path / "asm"
    top.mkdir()
    (top / "Kbuild").write_text("obj-m := fast.o\nfast-y := entry.o\n")
    (top / "entry.S").write_text("/* assembly */\n")
    (top / "tool.c").write_text("int tool_value;\n")
    linter = Linter(top, only=["non-static-global"])
    assert [u.name for u in linter.units] == ["asm"]
    assert _static_findings(top) == {("tool.c", 1, "tool_value")}


def test_the_vendor_driver_project_lints_clean() -> None:
    """tests/data/projects (issue 12's proof project): core's lib/ring.c functions are declared in core.h and
    used by fleetmon_main.c; 0.1 told to make them static, which breaks the link.  Every rule stays quiet."""
    projects = Path(__file__).parent / "data" / "projects"
    for name in ("core", "probe"):
        report = Linter(projects / name, only=[r for r in CHECKS if r != "gpl-only-symbol"]).run()
        assert report.files and report.findings == (), (name, report.findings)
