"""Colour on a terminal: doctor, lint, verify and check colour their statuses (cli/output.py's one table);
NO_COLOR (https://no-color.org) and a pipe get plain text.  0.1 had no colour at all.

The terminal is a real pseudo-terminal (python's pty module): the command sees isatty() true.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree
from terminal import on_terminal

ESC = "\x1b["
DATA = Path(__file__).resolve().parent / "data" / "modules" / "amd64"


def _on_terminal(argv: list[str], **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return on_terminal(argv, {**base, "TERM": "xterm", **env})[1]


def _piped(argv: list[str]) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return subprocess.run([sys.executable, "-m", "kmodkit", *argv], capture_output=True, text=True, env=env).stdout


def _lint_source(tmp_path: Path) -> str:
    from kmodkit.lint.rules import rules

    bad = next(iter(rules().values()))  # any rule's bad example has a finding
    path = tmp_path / "bad.c"
    path.write_text(bad.bad)
    return str(path)


def _cert(tmp_path: Path) -> str:
    cert = tmp_path / "c.der"
    subprocess.run(["openssl", "req", "-new", "-nodes", "-batch", "-x509", "-subj", "/CN=colour/", "-newkey",
                    "rsa:2048", "-keyout", str(tmp_path / "k.pem"), "-outform", "DER", "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert)


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    return {
        "doctor": ["doctor"],
        "lint": ["lint", _lint_source(tmp_path)],
        "verify": ["verify", "--cert", _cert(tmp_path), *sorted(str(p) for p in DATA.glob("*.ko"))],
    }


@pytest.mark.parametrize("name", ["doctor", "lint", "verify"])
def test_statuses_are_coloured_on_a_terminal_only(name: str, tmp_path: Path) -> None:
    argv = _commands(tmp_path)[name]
    assert ESC + "3" in _on_terminal(argv) or ESC + "1;31m" in _on_terminal(argv)
    assert ESC not in _on_terminal(argv, NO_COLOR="1")
    piped = _piped(argv)
    assert piped and ESC not in piped


def test_an_empty_no_color_does_not_turn_colour_off(tmp_path: Path) -> None:
    """no-color.org: NO_COLOR counts when it is present and not empty."""
    assert ESC in _on_terminal(["doctor"], NO_COLOR="")


@pytest.mark.kernel
def test_check_colours_its_verdicts(sample_module: Path, generic_tree: KernelTree) -> None:
    argv = ["check", str(sample_module), "-k", generic_tree.release]
    assert f"{ESC}32mloads{ESC}0m" in _on_terminal(argv, NO_COLOR="") or f"{ESC}33mloads, taints" in \
        _on_terminal(argv)
    assert ESC not in _on_terminal(argv, NO_COLOR="1") and ESC not in _piped(argv)
