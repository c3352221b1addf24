"""The read-only view virtiofsd exports, checked on the host without a boot (the boot in test_vm_guest.py
tries the same from inside a guest).  Needs root and mount namespaces, as virtiofsd does."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kmodkit.vm.readonly import readonly_command

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root (as virtiofsd does)")


def test_writes_through_the_view_fail_with_erofs_and_the_host_file_is_unchanged(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("host original\n")
    view = tmp_path / "view"
    view.mkdir()
    inside = f"{view}{victim}"  # the host file as the daemon sees it through the view
    script = 'echo changed > "$1" && echo wrote; echo new > "$1.new" && echo created; echo done'
    done = subprocess.run(readonly_command(str(view), ["/bin/sh", "-c", script, "sh", inside]),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["done"], done.stdout + done.stderr
    assert "Read-only file system" in done.stderr
    assert victim.read_text() == "host original\n"
    assert not (tmp_path / "victim.new").exists()
    # outside the daemon's namespace the view is an empty directory: nothing leaked into the host's mounts
    assert list(view.iterdir()) == []
    with open("/proc/self/mountinfo") as f:
        assert str(view) not in f.read()


def test_the_wrapper_reports_a_refused_step_on_one_line(tmp_path: Path) -> None:
    done = subprocess.run(readonly_command(str(tmp_path / "absent"), ["/bin/true"]),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: binding / at ") and "ENOENT" in lines[0]
