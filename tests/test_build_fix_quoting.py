"""build's fix line for a kernel named by a manifest: quoted, so the command a user pastes installs a package
and runs nothing else (a real sh is the oracle); releases that cannot name a directory are refused."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit.errors import ConfigError, UserError
from kmodkit.kbuild.builder import Build, State
from kmodkit.kbuild.manifest import Manifest
from kmodkit.kbuild.platform import ShellText, detect_distro
from kmodkit.kbuild.project import NewProject
from kmodkit.sysroot import Root

ROOTS = Path(__file__).parent / "fixtures" / "roots"
#: a target that runs a command and ends a quote if pasted verbatim
HOSTILE = "6.1.0-99-cloud-amd64$(touch${IFS}PWNED)';touch${IFS}PWNED2;'"


def _project(tmp_path: Path, target: str) -> Path:
    project = tmp_path / "p"
    NewProject("demo", project).create()
    manifest = project / "kmodkit.toml"
    manifest.write_text(manifest.read_text().replace("targets = []", f"targets = [{json.dumps(target)}]"))
    return project


def test_fix_line_of_a_hostile_target_is_one_quoted_word(tmp_path: Path) -> None:
    project = _project(tmp_path, HOSTILE)
    assert Manifest.load(project).targets == (HOSTILE,)
    result = Build(project, workdir=tmp_path / "work", root=Root(ROOTS / "debian12-ec2")).run().results[0]
    assert result.state is State.BLOCKED and result.fix is not None
    run = tmp_path / "run"
    run.mkdir()
    # the shell a user pastes into, with the package manager replaced by printf: what would it be given?
    script = "apt_get() { printf '%s\\n' \"$@\"; }; " + result.fix.replace("apt-get", "apt_get", 1)
    proc = subprocess.run(["sh", "-c", script], cwd=run, capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines() == ["install", f"linux-headers-{HOSTILE}"]
    assert not (run / "PWNED").exists() and not (run / "PWNED2").exists()


def test_cli_summary_prints_the_quoted_fix(tmp_path: Path) -> None:
    project = _project(tmp_path, HOSTILE)
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "build", str(project), "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True)
    fix = next(line for line in proc.stdout.splitlines() if line.strip().startswith("fix:"))
    assert fix.strip() == f"fix: apt-get install linux-headers-{shlex.quote(HOSTILE)}"


def test_plain_release_stays_unquoted() -> None:
    distro = detect_distro(Root(ROOTS / "debian12-ec2"))
    plain = distro.command("headers", kver="6.1.0-18-cloud-amd64")
    assert plain == "apt-get install linux-headers-6.1.0-18-cloud-amd64"
    assert distro.command("headers", kver=ShellText("$(uname -r)")) == "apt-get install linux-headers-$(uname -r)"


@pytest.mark.parametrize("target", ["../../etc", "a b", "6.1\n", ""])
def test_targets_that_cannot_be_releases_are_refused(tmp_path: Path, target: str) -> None:
    project = _project(tmp_path, target)
    with pytest.raises(ConfigError, match=r"kmodkit.toml:\d+: kernels.targets: "):
        Manifest.load(project)


def test_a_kernel_argument_with_a_slash_is_refused(tmp_path: Path) -> None:
    NewProject("demo", tmp_path / "p").create()
    with pytest.raises(UserError, match="holds a /"):
        Build(tmp_path / "p", kernels=["../../../etc"], workdir=tmp_path / "work")
