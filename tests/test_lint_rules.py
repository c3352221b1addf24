"""Every lint rule against its own bad and good example (rules.toml), the output format, and real inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit.cli.main import main
from kmodkit.errors import NotFoundError, UserError
from kmodkit.lint.checks import CHECKS
from kmodkit.lint.linter import Linter
from kmodkit.lint.rules import Rule, rules
from conftest import need

EXAMPLE = Path(__file__).parent.parent / "example" / "hello"


def _symvers(kernel_trees: list) -> Path:
    for t in kernel_trees:
        if t.headers and (t.headers / "Module.symvers").is_file():
            return t.headers / "Module.symvers"
    need("a kernel's headers with Module.symvers")
    raise AssertionError


def _lint(tmp_path: Path, text: str, symvers: Path) -> list:
    src = tmp_path / "demo.c"
    src.write_text(text)
    return list(Linter(src, symvers=symvers).run().findings)


def test_every_rule_has_a_check_and_every_check_a_rule() -> None:
    assert list(rules()) == list(CHECKS)
    for r in rules().values():
        assert r.summary and r.why and r.bad.strip() and r.good.strip() and r.bad != r.good


@pytest.mark.parametrize("rule", list(rules().values()), ids=lambda r: r.id)
def test_bad_example_breaks_the_rule(rule: Rule, tmp_path: Path, kernel_trees: list) -> None:
    found = [f for f in _lint(tmp_path, rule.bad, _symvers(kernel_trees)) if f.rule == rule.id]
    assert found, rule.id
    for f in found:
        assert f.file == str(tmp_path / "demo.c") and 1 <= f.line <= len(rule.bad.splitlines())


@pytest.mark.parametrize("rule", list(rules().values()), ids=lambda r: r.id)
def test_good_example_keeps_the_rule(rule: Rule, tmp_path: Path, kernel_trees: list) -> None:
    assert not [f for f in _lint(tmp_path, rule.good, _symvers(kernel_trees)) if f.rule == rule.id]


def test_findings_point_at_the_offending_line(tmp_path: Path, kernel_trees: list) -> None:
    text = "\n".join([
        "#include <linux/module.h>",                      # 1
        "#ifdef CONFIG_DEMO",                             # 2
        "int demo_hidden;",                               # 3: inside #ifdef still file scope
        "#endif",                                         # 4
        "static int lvl;",                                # 5
        "module_param_named(level, lvl, int, S_IRUGO | S_IWUGO);",  # 6: 0666
        "extern int other_count;",                        # 7: extern: fine
        "int demo_proto(void);",                          # 8: prototype: fine
        'MODULE_LICENSE("GPL");',                         # 9
        'MODULE_VERSION("1");',                           # 10
    ]) + "\n"
    found = {(f.rule, f.line) for f in _lint(tmp_path, text, _symvers(kernel_trees))}
    assert found == {("non-static-global", 3), ("param-writable-by-others", 6), ("param-no-desc", 6)}


def test_gpl_only_checked_against_the_real_symvers(tmp_path: Path, kernel_trees: list) -> None:
    symvers = _symvers(kernel_trees)
    # the oracle: the kernel's own Module.symvers, read here with plain string splitting
    kinds = {p[1]: p[3] for p in (line.split("\t") for line in symvers.read_text().splitlines()) if len(p) > 3}
    gpl = next(s for s in ("debugfs_create_dir", "kobject_uevent") if kinds.get(s) == "EXPORT_SYMBOL_GPL")
    plain = next(s for s in ("kthread_create_on_node", "printk", "_printk") if kinds.get(s) == "EXPORT_SYMBOL")
    text = (f'#include <linux/module.h>\nstatic void demo_f(void) {{ {gpl}(0, 0); {plain}(0); }}\n'
            'MODULE_LICENSE("Dual BSD");\nMODULE_VERSION("1");\n')
    hits = [f for f in _lint(tmp_path, text, symvers) if f.rule == "gpl-only-symbol"]
    assert [(f.line, gpl in f.message) for f in hits] == [(2, True)]


def test_gpl_rule_is_skipped_without_symvers_and_says_so(tmp_path: Path) -> None:
    src = tmp_path / "demo.c"
    src.write_text(rules()["gpl-only-symbol"].bad)
    linter = Linter(src, only=["gpl-only-symbol"])
    linter.symvers = None  # as on a machine with no headers at all
    report = linter.run()
    assert report.findings == () and report.skipped and "Module.symvers" in report.skipped[0]


def test_the_bundled_example_and_new_projects_lint_clean(kernel_trees: list) -> None:
    report = Linter(EXAMPLE, symvers=_symvers(kernel_trees)).run()
    assert report.module == "hello" and report.files and report.findings == ()


def test_cli_prints_file_line_rule_message(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           kernel_trees: list) -> None:
    src = tmp_path / "demo.c"
    src.write_text(rules()["old-entry-points"].bad)
    assert main(["lint", str(src), "--symvers", str(_symvers(kernel_trees))]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{src}:2: old-entry-points: 'init_module' is the old entry point; use a static function and module_init()" \
        in lines
    for line in lines:
        file, lineno, rule, message = line.split(":", 3)
        assert file == str(src) and lineno.isdigit() and rule.strip() in rules() and message.strip()
    assert main(["lint", str(src), "--json", "--symvers", str(_symvers(kernel_trees))]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert {f["rule"] for f in doc["findings"]} >= {"old-entry-points", "missing-version"}
    assert main(["lint", str(EXAMPLE), "--symvers", str(_symvers(kernel_trees))]) == 0


def test_list_rules_shows_each_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--list-rules"]) == 0
    out = capsys.readouterr().out
    for r in rules().values():
        assert f"{r.id}: {r.summary}" in out


def test_bad_input_is_one_error_line(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Linter(tmp_path / "absent.c")
    with pytest.raises(UserError):
        Linter(tmp_path, only=["no-such-rule"])
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "lint", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_a_dashed_file_name_is_the_module_name_kbuild_makes(tmp_path: Path) -> None:
    """my-mod.c builds KBUILD_MODNAME my_mod: its exports are prefixed my_mod_ (one name rule, modfile's)."""
    src = tmp_path / "my-mod.c"
    src.write_text('#include <linux/module.h>\nint my_mod_count(void) { return 0; }\nEXPORT_SYMBOL(my_mod_count);\n'
                   'MODULE_LICENSE("GPL");\nMODULE_VERSION("1");\n')
    report = Linter(src, only=["export-prefix"]).run()
    assert report.module == "my_mod" and report.findings == ()


def test_kbuild_and_lint_records_have_names_of_their_own() -> None:
    """Finding, Module and Parameter each name one record in the whole package (lint's and doctor's were renamed)."""
    import ast

    defined: dict[str, list[str]] = {}
    for path in (Path(__file__).parent.parent / "src" / "kmodkit").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, []).append(str(path))
    for name in ("Finding", "Module", "Parameter", "LintFinding", "DoctorFinding", "ModuleSources", "ParameterSpec"):
        assert len(defined.get(name, [])) <= 1, (name, defined[name])
