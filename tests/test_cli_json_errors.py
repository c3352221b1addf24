"""--json errors: one schema (src/kmodkit/cli/error.schema.json) for every command that takes --json.

0.1 wrote every error as a plain ``error:`` line on stderr even with --json, so a script reading stdout got
nothing (or half a document).  Each test feeds a command a bad input and validates what stdout holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kmodkit.cli.main import full_parser

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "src/kmodkit/cli/error.schema.json").read_text())
MISSING = "/nonexistent/kmodkit-test/x.ko"
GOOD = str(next((Path(__file__).resolve().parent / "data/modules/amd64").glob("*.ko")))

#: a bad input for every command (path of subcommands) that takes --json; the test below fails when a
#: command gains --json without an entry here
BAD: dict[str, list[str]] = {
    "info": ["info", "--json", MISSING],
    "abi diff": ["abi", "diff", "--json", "no-such-kernel-1", "no-such-kernel-2"],
    "check": ["check", "--json", MISSING, "-k", "no-such-kernel"],
    "keys new": ["keys", "new", "--json", "--out", "{tmp}/k", "--passphrase-file", MISSING],
    "keys extract": ["keys", "extract", "--json", "--vmlinuz", MISSING, "--out", "{tmp}/x"],
    "keys show": ["keys", "show", "--json", MISSING],
    "sign": ["sign", "--json", "--key", MISSING, "--cert", MISSING, MISSING],
    "verify": ["verify", "--json", MISSING],
    "index": ["index", "--json", "no-such-kernel", "-b", "{tmp}"],
    "deps": ["deps", "--json", "-b", "{tmp}", "-k", "no-such-kernel", "af_key"],
    "doctor": ["doctor", "--json", "--root", MISSING],
    "install": ["install", "--json", MISSING],
    "uninstall": ["uninstall", "--json", MISSING],
    "hook": ["hook", "run", "--json"],
    "build": ["build", "--json", MISSING],
    "lint": ["lint", "--json", MISSING],
    "vm run": ["vm", "run", "--json", "-k", "no-such-kernel", "--", "true"],
    "load": ["load", "--json", "--dry-run", "-k", "no-such-kernel", "x"],
    "unload": ["unload", "--json", "no_such_module_kmodkit"],
    "status": ["status", "--json", "--built", MISSING],
    "health": ["health", "--json", "--manifest", MISSING],
    "oops": ["oops", "--json", MISSING],
    "trace": ["trace", "no_such_module_kmodkit", "--json", "--", "true"],
    "profile": ["profile", "no_such_module_kmodkit", "--json", "--", "true"],
    "report": ["report", "--json", MISSING],
    "kmm": ["kmm", "--json", MISSING, "--image", "registry.example.com/x"],
    "dkms export": ["dkms", "export", "--json", MISSING],
    "package deb": ["package", "deb", "--json", MISSING],
    "test": ["test", "--json", MISSING],
    "kernels list": ["kernels", "list", "--json", "--flavour", "no such flavour"],
    "kernels fetch": ["kernels", "fetch", "--json", "no/such/kernel"],
    "kernels prune": ["kernels", "prune", "--json", "no/such/kernel"],
}


def _json_commands(parser: argparse.ArgumentParser, path: str = "") -> list[str]:
    found = [path.strip()] if "--json" in parser._option_string_actions else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _json_commands(child, f"{path} {name}")
    return found


def _records(doc: Any) -> list[dict[str, Any]]:
    """Every error record in a document: the failure document itself, list elements, an object's "errors"."""
    if isinstance(doc, list):
        return [x for x in doc if isinstance(x, dict) and "error" in x]
    if isinstance(doc, dict):
        return ([doc] if "error" in doc else []) + [x for x in doc.get("errors", []) if isinstance(x, dict)]
    return []


def _run(argv: list[str], tmp_path: Path) -> tuple[int, Any, str]:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run([sys.executable, "-m", "kmodkit", *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    return done.returncode, json.loads(done.stdout), done.stderr


def _validate(doc: Any) -> list[dict[str, Any]]:
    records = _records(doc)
    assert records, f"no error in {doc}"
    for r in records:
        jsonschema.validate(r["error"], SCHEMA["$defs"]["error"])
        jsonschema.validate(r, {**SCHEMA["$defs"]["record"], "$defs": SCHEMA["$defs"]})
    if isinstance(doc, dict) and "error" in doc and set(doc) <= {"error", "errors"}:
        jsonschema.validate(doc, SCHEMA)
    return records


def test_every_json_command_has_a_bad_input_here() -> None:
    assert sorted(_json_commands(full_parser())) == sorted(BAD)


@pytest.mark.parametrize("command", sorted(BAD))
def test_a_bad_input_is_a_json_error_on_stdout(command: str, tmp_path: Path) -> None:
    """0.1: `error: ...` on stderr and nothing on stdout; now the schema's document, and stderr holds no error."""
    status, doc, err = _run(BAD[command], tmp_path)
    records = _validate(doc)
    assert status in (1, 2, 3), (status, doc)
    assert max(int(r["error"]["exit"]) for r in records) == status or command == "check", (status, doc)
    assert "error:" not in err and "Traceback" not in err, err


def test_a_usage_error_is_a_json_error_too(tmp_path: Path) -> None:
    """0.1: argparse's usage text on stderr."""
    status, doc, err = _run(["info", "--json", "--no-such-option", GOOD], tmp_path)
    jsonschema.validate(doc, SCHEMA)
    assert status == 2 and doc["error"]["why"] == "unrecognized arguments: --no-such-option" and not err


def test_a_batchs_item_errors_are_in_its_document(tmp_path: Path) -> None:
    """info of a good module between two missing ones: the list holds the good module and two records."""
    status, doc, err = _run(["info", "--json", MISSING, GOOD, MISSING + "2"], tmp_path)
    assert status == 2 and not err
    assert [sorted(x)[:2] for x in doc if "error" in x] == [["error", "path"]] * 2
    assert [x["name"] for x in doc if "error" not in x] == [Path(GOOD).name.split(".")[0].replace("-", "_")]
    assert [r["error"]["what"] for r in _validate(doc)] == [MISSING, MISSING + "2"]


def test_a_batch_that_fails_as_a_whole_lists_every_item(tmp_path: Path) -> None:
    """sign with two missing targets signs nothing: the worst error, and the other item in "errors"."""
    status, doc, _ = _run(["sign", "--json", "--key", MISSING, "--cert", MISSING, MISSING, MISSING + "2"],
                          tmp_path)
    jsonschema.validate(doc, SCHEMA)
    assert status == 2
    assert doc["error"]["what"] == MISSING and [r["path"] for r in doc["errors"]] == [MISSING + "2"]


@pytest.mark.kernel
def test_a_kernel_that_failed_to_build_is_a_record_in_builds_document(tmp_path: Path, cloud_tree) -> None:
    """0.1's build --json said "failed" and a problem in its own words; now the kernel's record carries the
    error object too (and the succeeded ones "error": null)."""
    from kmodkit.kbuild.project import NewProject

    NewProject("demo", tmp_path / "p").create()
    src = tmp_path / "p" / "demo.c"
    src.write_text(src.read_text().replace("return demo_greetings;", "return demo_greetings + undeclared_thing;"))
    status, doc, err = _run(["build", str(tmp_path / "p"), "-k", cloud_tree.release, "--workdir",
                             str(tmp_path / "work"), "--json"], tmp_path)
    assert status == 1 and doc["ok"] is False and not err
    (record,) = _validate(doc["kernels"])
    assert record["kernel"] == cloud_tree.release and record["error"]["what"] == cloud_tree.release
    assert record["error"]["exit"] == 1
