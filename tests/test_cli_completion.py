"""Shell completion (bash, zsh) and the man page, both generated from the argument parser.

0.1 had neither.  bash is driven for real: the generated script is sourced and its function run on
COMP_WORDS as bash fills them for a TAB; zsh's file is parsed by zsh -n; the page is rendered by groff
(no warnings) and man, and every command and option must be in it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need
from kmodkit.cli.main import COMMANDS, full_parser
from kmodkit.cli.parsertree import command_tree

KMODKIT = [sys.executable, "-m", "kmodkit"]


def _generated(*args: str) -> str:
    return subprocess.run([*KMODKIT, *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "kmodkit.bash"
    path.write_text(_generated("completion", "bash"))
    return path


def _complete(script: Path, *words: str) -> list[str]:
    """What bash offers for a TAB after ``words`` (the last one being completed; "" for a new word)."""
    code = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _kmodkit; '
            'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", code, "bash", str(script), "kmodkit", *words],
                          capture_output=True, text=True, check=True)
    assert not done.stderr, done.stderr
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completes_commands_options_and_choices(bash_script: Path) -> None:
    assert _complete(bash_script, "inf") == ["info"]
    assert _complete(bash_script, "info", "--js") == ["--json"]
    assert _complete(bash_script, "--debug", "key") == ["keys"]  # a global option before the command
    assert _complete(bash_script, "vm", "r") == ["run"]
    assert _complete(bash_script, "keys", "new", "--ty") == ["--type"]
    assert _complete(bash_script, "check", "--enforce", "") == ["auto", "0", "1"]
    assert _complete(bash_script, "hook", "") == ["install", "remove", "run"]
    assert _complete(bash_script, "build", "--", "-") == []  # after --: a guest's command, the shell's default
    assert set(_complete(bash_script, "")) == set(COMMANDS)


def test_bash_completes_installed_kernels_for_kver(bash_script: Path) -> None:
    kernels = sorted(os.listdir("/lib/modules")) if os.path.isdir("/lib/modules") else []
    assert sorted(_complete(bash_script, "build", "-k", "")) == kernels


def test_bash_completes_every_option_of_every_command(bash_script: Path) -> None:
    for cmd in command_tree(full_parser()).walk():
        offered = set(_complete(bash_script, *cmd.path, "-"))
        assert {f for o in cmd.options for f in o.flags} == offered, cmd.path


def test_zsh_script_parses(tmp_path: Path) -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        need("zsh (apt-get install zsh)")
    path = tmp_path / "_kmodkit"
    path.write_text(_generated("completion", "zsh"))
    done = subprocess.run([zsh, "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr, done.stderr
    text = path.read_text()
    assert text.startswith("#compdef kmodkit\n")
    assert all(f"'{name}:" in text for name in COMMANDS)  # each command offered with its help


def _zsh_offers(script: Path, *words: str) -> list[str]:
    """What the zsh function hands to zsh's completion system for ``words``: _describe, compadd and _files are
    stood in for by functions that print what they were given (driving zsh's real completion needs a tty)."""
    zsh = shutil.which("zsh")
    if zsh is None:
        need("zsh (apt-get install zsh)")
    code = ('_describe() { print -rl -- ${(P)${@[-1]}} }; compadd() { shift; print -rl -- "$@" }; '
            '_files() { print FILES }; script=$1; shift; words=("$@"); CURRENT=$#; PREFIX=${words[-1]}; '
            'source $script')
    done = subprocess.run([zsh, "-f", "-c", code, "zsh", str(script), "kmodkit", *words], capture_output=True,
                          text=True, check=True)
    assert not done.stderr, done.stderr
    return done.stdout.splitlines()


def test_zsh_function_offers_commands_options_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "_kmodkit"
    path.write_text(_generated("completion", "zsh"))
    assert _zsh_offers(path, "vm", "") == ["run:boot KVER, run CMD inside, return its exit status"]
    assert _zsh_offers(path, "check", "--enforce", "") == ["auto", "0", "1"]
    assert "--json:print one JSON record per module" in _zsh_offers(path, "sign", "--")
    assert {w.split(":")[0] for w in _zsh_offers(path, "")} == set(COMMANDS)
    assert _zsh_offers(path, "vm", "run", "--", "") == ["FILES"]  # the guest's command line


@pytest.fixture(scope="module")
def man_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("man") / "kmodkit.1"
    path.write_text(_generated("man"))
    return path


def test_man_page_renders_without_warnings(man_page: Path) -> None:
    groff = shutil.which("groff")
    if groff is None:
        need("groff (apt-get install groff-base)")
    done = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(man_page)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_man_page_names_every_command_and_option(man_page: Path) -> None:
    man = shutil.which("man")
    if man is None:
        need("man (apt-get install man-db)")
    done = subprocess.run([man, "-l", str(man_page)], capture_output=True, text=True,
                          env=dict(os.environ, MANWIDTH="200", MANPAGER="cat", PAGER="cat"))
    assert done.returncode == 0, done.stderr
    text = done.stdout.replace("\u2010", "-").replace("\u2212", "-")
    for cmd in command_tree(full_parser()).walk()[1:]:
        assert f"kmodkit {' '.join(cmd.path)}\n" in text, cmd.path
        for opt in cmd.options:
            for flag in opt.flags:
                assert flag in text, (cmd.path, flag)
    assert "EXIT STATUS" in text and "NO_COLOR" in text
