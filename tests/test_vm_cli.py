"""`kmodkit vm run`'s arguments: what the kernel gets from --append, and bad values refused before qemu starts.

No boot here: every case below is refused while the run is being described, so no run directory is made.
The boots that show the kernel's own view of --append and --json's stdout are in test_vm_guest.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit.errors import UserError
from kmodkit.vm.machine import COMMAND_LINE_SIZE, VmSpec

KMODKIT = [sys.executable, "-m", "kmodkit"]


def _vm_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # a kernel release that need not exist: the arguments are checked before the kernel is looked for
    return subprocess.run([*KMODKIT, "vm", "run", "-k", "6.1.0-0-none", "--runs-dir", str(tmp_path / "runs"),
                           *args, "--", "true"], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "words"), [
    (["--append", 'x="a'], ["--append", "unbalanced double quote", "name=\"a b\""]),
    (["--append", "ok=1", "--append", 'y="b c" z="'], ["unbalanced double quote"]),
    (["--timeout", "nan"], ["--timeout nan", "positive"]),
    (["--timeout", "inf"], ["--timeout inf", "positive"]),
    (["--timeout", "-5"], ["--timeout -5", "positive"]),
    (["--timeout", "0"], ["--timeout 0", "positive"]),
    (["--append", "x" * COMMAND_LINE_SIZE], ["COMMAND_LINE_SIZE"]),
])
def test_bad_arguments_are_one_error_line_and_exit_2_before_qemu_starts(tmp_path: Path, args: list[str],
                                                                         words: list[str]) -> None:
    done = _vm_run(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert done.stdout == ""
    assert not (tmp_path / "runs").exists()  # no run was started


def test_append_text_is_kept_as_the_kernel_parses_it() -> None:
    spec = VmSpec("k", ("true",), append=('x="a b"', "y=1 z", "w='c d'"))
    # double quotes are the kernel's grouping; single quotes are not (next_arg() in lib/cmdline.c)
    assert spec.cmdline.endswith(' x="a b" y=1 z w=\'c d\'')


def test_a_balanced_append_is_accepted_and_an_unbalanced_one_is_a_user_error() -> None:
    assert VmSpec("k", ("true",), append=('dyndbg="file foo.c +p"',)).append == ('dyndbg="file foo.c +p"',)
    with pytest.raises(UserError, match="unbalanced double quote"):
        VmSpec("k", ("true",), append=('dyndbg="file foo.c +p',))
