"""The CLI seam: global flags, dispatch, exit codes, the error boundary, typing of the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit import __version__
from kmodkit.cli.main import COMMANDS, main

KMODKIT = [sys.executable, "-m", "kmodkit"]
ROOT = Path(__file__).resolve().parent.parent


def test_version_prints_and_exits_zero() -> None:
    r = subprocess.run([*KMODKIT, "--version"], capture_output=True, text=True, check=True)
    assert r.stdout == f"kmodkit {__version__}\n"


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "kmodkit"
    assert exe.exists(), "pip install -e . should install the kmodkit console script"
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.startswith("kmodkit ")


def test_help_lists_every_command_without_importing_them() -> None:
    code = (
        "import sys, io; from kmodkit.cli.main import main\n"
        "sys.stdout = io.StringIO()\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "loaded = [m for m in sys.modules if m.startswith('kmodkit.') and m not in "
        "('kmodkit.cli', 'kmodkit.cli.main')]\n"
        "sys.__stdout__.write(repr(loaded) + '\\n' + sys.stdout.getvalue())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, _, text = r.stdout.partition("\n")
    assert loaded == "[]", f"--help imported {loaded}"
    for name in COMMANDS:
        assert f"    {name}" in text


def test_no_command_prints_help() -> None:
    r = subprocess.run(KMODKIT, capture_output=True, text=True)
    assert r.returncode == 0 and "COMMAND" in r.stdout


def test_unknown_option_is_a_usage_error() -> None:
    r = subprocess.run([*KMODKIT, "info", "--no-such-flag", "x.ko"], capture_output=True, text=True)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_error_boundary_maps_library_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """main() returns the error's exit status and prints one line; the library raised, it did not exit."""
    status = main(["info", str(tmp_path / "missing.ko")])
    err = capsys.readouterr().err
    assert status == 2
    assert err == f"error: {tmp_path / 'missing.ko'}: no such file or directory\n"


@pytest.mark.kernel
def test_closed_pipe_is_quiet(sample_module: Path) -> None:
    """`kmodkit info many | head -1` ends quietly, without a BrokenPipe traceback."""
    args = [*KMODKIT, "info"] + [str(sample_module)] * 2000
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    status = p.wait()
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert status in (0, 141)


def test_mypy_strict_on_the_package() -> None:
    """The package is typed: mypy --strict (configured in pyproject.toml) finds nothing."""
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    if mypy is None:
        pytest.fail("mypy is not installed in the test environment (pip install -e .[dev])")
    r = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("argv", [["lint", "{missing}", "--debug"], ["keys", "show", "{missing}", "--debug"],
                                  ["--debug", "lint", "{missing}"]])
def test_debug_is_taken_anywhere_on_the_line(argv: list[str], tmp_path: Path) -> None:
    """0.1: `kmodkit info X --debug` was 'unrecognized arguments: --debug' (exit 2, no traceback)."""
    argv = [a.replace("{missing}", str(tmp_path / "missing.ko")) for a in argv]
    r = subprocess.run([*KMODKIT, *argv], capture_output=True, text=True)
    assert r.returncode == 2 and "unrecognized" not in r.stderr
    assert "Traceback" in r.stderr and r.stderr.splitlines()[-1].startswith(f"error: {tmp_path / 'missing.ko'}: ")


def test_verbose_after_the_command_turns_on_progress_logs(tmp_path: Path) -> None:
    """0.1: `kmodkit build -v` was refused; now -v and --verbose are read after the command, nested ones too."""
    from kmodkit.cli.main import _build_parser

    assert _build_parser("build").parse_args(["build", "-v"]).verbose is True
    assert _build_parser("keys").parse_args(["keys", "show", "c.pem", "--verbose"]).verbose is True
    assert _build_parser("build").parse_args(["-v", "build"]).verbose is True  # not reset by the command's parser
    assert _build_parser("build").parse_args(["build"]).verbose is False


def test_words_after_the_separator_belong_to_the_guest_or_workload() -> None:
    """`vm run -- CMD --debug` and `trace M -- W -v` hand the flags to the command, not to kmodkit."""
    from kmodkit.cli.main import _build_parser
    from kmodkit.cli.trace import options, workload_of

    vm = _build_parser("vm").parse_args(["vm", "run", "-k", "K", "--", "ls", "--debug", "-v"])
    assert vm.guest_command[-3:] == ["ls", "--debug", "-v"] and vm.debug is False and vm.verbose is False
    trace = _build_parser("trace").parse_args(["trace", "hello", "--debug", "--", "sh", "-c", "x", "-v"])
    assert workload_of(trace, options) == ("sh", "-c", "x", "-v")
    assert trace.debug is True and trace.verbose is False


def test_a_usage_error_is_one_error_line(tmp_path: Path) -> None:
    r = subprocess.run([*KMODKIT, "info", "--no-such-flag", "x.ko"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == "error: kmodkit info: unrecognized arguments: --no-such-flag; see 'kmodkit info --help'\n"


def test_the_readme_documents_every_exit_status() -> None:
    """main.EXIT_STATUSES (which the man page prints) and the README's table list the same statuses."""
    import re

    from kmodkit.cli.main import EXIT_STATUSES

    section = (ROOT / "README.md").read_text().split("## Exit status", 1)[1].split("\n## ", 1)[0]
    assert [int(n) for n in re.findall(r"^\| (\d+) \|", section, re.M)] == [n for n, _ in EXIT_STATUSES]


def test_an_unknown_command_names_the_close_ones() -> None:
    """0.1 printed argparse's usage and the list of all commands."""
    r = subprocess.run([*KMODKIT, "--debug", "verfy", "x.ko"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == "error: verfy: is not a kmodkit command; did you mean 'verify'? see 'kmodkit --help'"


def test_version_imports_no_library_code() -> None:
    """The fast path of `kmodkit --version`: no argparse, no JSON, no rich, no kmodkit module past cli.main
    (a guard on what is imported, not a timing: the timing is a benchmark's)."""
    r = subprocess.run([*KMODKIT, "--version"], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    modules = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert {m for m in modules if m.startswith("kmodkit")} <= {"kmodkit", "kmodkit.cli", "kmodkit.cli.main",
                                                                 "kmodkit.__main__"}
    assert not modules & {"argparse", "json", "rich", "logging"}
