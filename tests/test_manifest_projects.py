"""kmodkit.toml for real projects (issue 12): several modules, subdirectories, include paths, cflags, per-module
parameters, other projects as dependencies; and strict reading: every unknown key is one error line with its
FILE:LINE and the close known key.  The manifests are the proof projects' (tests/data/projects) and small ones
written here (0.1 accepted each of these silently)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kmodkit.errors import ConfigError
from kmodkit.kbuild.manifest import Manifest, load_expectations

PROJECTS = Path(__file__).parent / "data" / "projects"


def test_the_proof_projects_manifests_describe_two_modules_and_a_dependency() -> None:
    core = Manifest.load(PROJECTS / "core")
    assert [m.name for m in core.modules] == ["fleetmon", "fleetmon_jiffies"]
    main, jiffies = core.modules
    assert main.sources == ("fleetmon_main.c", "lib/ring.c") and main.subdir == ""
    assert main.objects() == ["fleetmon_main.o", "lib/ring.o"]
    assert main.include == (".",) and main.cflags == ("-DFLEETMON_MAX_SOURCES=4",)
    assert [(p.name, p.type, p.default) for p in main.parameters] == [("interval", "uint", 5)]
    assert main.load_at_boot and main.options == "interval=10"
    assert jiffies.subdir == "jiffies" and jiffies.objects() == ["fleetmon_jiffies.o"] and not jiffies.parameters
    assert core.install_location == "updates/fleetmon" and core.depends == ()
    assert core.name == "fleetmon" and core.sources == ("fleetmon_main.c", "lib/ring.c", "jiffies/fleetmon_jiffies.c")
    probe = Manifest.load(PROJECTS / "probe")
    assert probe.depends == ("../core",) and probe.dependency_paths() == [PROJECTS / "core"]
    assert probe.modules[0].sources == ("fleetmon_probe.c",) and probe.install_location == "updates"
    assert [e.name for e in load_expectations(PROJECTS / "core")] == ["fleetmon", "fleetmon_jiffies"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kmodkit.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,line,problem,fix", [
    # 0.1 ignored modules = [...] and built one module
    ('modules = ["a", "b"]\n[module]\nname = "a"\n', 1, "unknown key 'modules'", "did you mean 'module'?"),
    ('[module]\nname = "a"\n\n[signin]\nkey = "k.pem"\n', 4, "unknown key 'signin'", "did you mean 'signing'?"),
    ('[[module]]\nname = "a"\n\n[[module]]\nname = "b"\nsorces = ["b.c"]\n', 6,
     "unknown key 'sorces' in [module]", "did you mean 'sources'?"),
    ('[[module]]\nname = "a"\n[module.parameters.level]\ntype = "int"\ndefualt = 3\n', 5,
     "unknown key 'defualt' in [module.parameters.level]", "did you mean 'default'?"),
    ('[module]\nname = "a"\n[kernels]\ntarget = ["6.1.0-57-amd64"]\n', 4, "unknown key 'target' in [kernels]",
     "did you mean 'targets'?"),
    ('[module]\nname = "a"\n[health]\nzzz = 1\n', 4, "unknown key 'zzz' in [health]",
     "the keys under [health] are: allow_taint, modules"),
])
def test_an_unknown_key_is_one_error_with_its_line_and_the_close_key(tmp_path: Path, text: str, line: int,
                                                                      problem: str, fix: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        Manifest.load(tmp_path)
    assert (exc.value.subject, exc.value.problem) == (f"{path}:{line}", problem)
    assert exc.value.fix is not None and exc.value.fix.startswith(fix)


def test_the_cli_prints_the_unknown_key_as_the_issue_asks(tmp_path: Path) -> None:
    path = _write(tmp_path, '[module]\nname = "a"\n\n[signing]\nkey = "k.pem"\nhsah = "sha256"\n')
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "build", str(tmp_path), "-k", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {path}:6: unknown key 'hsah' in [signing]; did you mean 'hash'?\n"


@pytest.mark.parametrize("text,line,words", [
    ('[[module]]\nname = "a"\n[[module]]\nname = "a"\n', 4, "'a' is named twice"),
    ('[[module]]\nname = "a"\ncflags = ["-DX=$(shell touch PWNED)"]\n', 3, "is not a -D/-U/-I/-W"),
    ('[[module]]\nname = "a"\ncflags = ["-o /etc/passwd"]\n', 3, "is not a -D/-U/-I/-W"),
    ('[[module]]\nname = "a"\nsources = ["../x.c"]\n', 3, "'../x.c' is outside the project"),
    ('[[module]]\nname = "a"\nsubdir = "sub"\nsources = ["a.c"]\n', 4, "'a.c' is not in the module's subdir"),
    ('[[module]]\nname = "a"\nsources = ["a.h"]\n', 3, "'a.h' is not a .c file"),
    ('[[module]]\nname = "a"\nload_at_boot = "yes"\n', 3, "must be a boolean, not str"),
    ('[[module]]\nname = "a"\n[[module]]\nname = "b"\n[parameters.x]\ntype = "int"\n', 5, "belongs to one module"),
    ('[project]\ndepends = ["/abs/core"]\n[module]\nname = "a"\n', 2, "is not a path relative to the project"),
    ('[module]\nname = "a"\n[install]\nlocation = "../../etc"\n', 4, "is not a directory below /lib/modules/KVER"),
    ('[kernels]\ntargets = []\n', 1, "names no module"),
])
def test_bad_project_values_point_at_their_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        Manifest.load(tmp_path)
    assert exc.value.subject == f"{path}:{line}" and words in exc.value.problem


def test_a_subdir_module_defaults_to_its_own_source(tmp_path: Path) -> None:
    _write(tmp_path, '[[module]]\nname = "a"\n[[module]]\nname = "b"\nsubdir = "sub/dir"\n')
    a, b = Manifest.load(tmp_path).modules
    assert (a.sources, b.sources, b.objects()) == (("a.c",), ("sub/dir/b.c",), ["b.o"])

