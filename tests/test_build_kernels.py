"""``kmodkit build`` for real: every installed kernel's headers, real make and gcc, modinfo as the oracle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need

from kmodkit.cli.main import main
from kmodkit.errors import ConfigError, UserError
from kmodkit.kbuild import kernels as kern
from kmodkit.kbuild.builder import Build, KernelBuild, State
from kmodkit.kbuild.project import NewProject
from kmodkit.modfile import ModuleFile
from kmodkit.sysroot import Root

pytestmark = [pytest.mark.kernel, pytest.mark.slow]


def _modinfo(path: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def built_everywhere(tmp_path_factory: pytest.TempPathFactory, kernel_trees: list) -> tuple[Path, list]:
    """The bundled example built once for every installed kernel (real make, 2 workers)."""
    with_headers = [t for t in kernel_trees if t.headers]
    if not with_headers:
        need("no kernel headers installed")
    base = tmp_path_factory.mktemp("everywhere")
    NewProject("hello", base / "hello").create()
    build = Build(base / "hello", all_installed=True, workdir=base / "work")
    report = build.run()
    return base / "hello", list(report.results)


def test_every_installed_kernel_gets_a_module_with_its_vermagic(built_everywhere: tuple[Path, list],
                                                                 kernel_trees: list) -> None:
    project, results = built_everywhere
    assert {r.kernel for r in results} == {t.release for t in kernel_trees}
    without_headers = {t.release for t in kernel_trees if not t.headers}
    assert {r.kernel for r in results if r.state is State.BLOCKED} == without_headers
    for r in results:
        if r.kernel in without_headers:
            continue
        assert r.state is State.BUILT, (r.kernel, r.problem)
        assert r.module == project / "out" / r.kernel / "hello.ko"
        # the oracle: kmod's modinfo on the file we wrote
        assert _modinfo(r.module, "vermagic").split()[0] == r.kernel
        assert _modinfo(r.module, "srcversion") == r.srcversion
        with ModuleFile.open(r.module) as mod:
            assert mod.vermagic == r.vermagic
        rec = json.loads((project / "out" / r.kernel / "build.json").read_text())
        assert rec["kernel"] == r.kernel and rec["vermagic"] == r.vermagic and rec["srcversion"] == r.srcversion
        assert rec["duration"] > 0 and rec["warnings"] == [] and Path(rec["log"]).is_file()
        # make was a client of kmodkit's jobserver: no -j of its own, and the pipe reached it
        log = Path(rec["log"]).read_text()
        assert "--jobserver-auth=" in log.splitlines()[1] and " -j" not in log.splitlines()[0]
        assert "jobserver unavailable" not in log and "resetting jobserver mode" not in log
        # the compiler named in the headers' .config, exactly
        headers = kern.kernel(r.kernel).headers
        assert headers is not None
        wanted = kern.parse_config((headers / ".config").read_text())["CONFIG_CC_VERSION_TEXT"]
        assert rec["compiler"] == wanted.split()[0] and rec["compiler_version"].split()[-1] == wanted.split()[-1]


def test_cli_info_shows_the_right_vermagic(built_everywhere: tuple[Path, list],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, results = built_everywhere
    for r in results:
        if r.module is None:
            continue
        assert main(["info", "-F", "vermagic", str(r.module)]) == 0
        assert capsys.readouterr().out.split()[0] == r.kernel


def test_nothing_changed_nothing_rebuilt(built_everywhere: tuple[Path, list], tmp_path: Path) -> None:
    project, results = built_everywhere
    stamps = {r.kernel: r.module.stat().st_mtime_ns for r in results if r.module}
    report = Build(project, all_installed=True, workdir=project.parent / "work").run()
    assert {r.state for r in report.results if r.kernel in stamps and r.module} <= {State.CACHED}
    assert sum(r.state is State.CACHED for r in report.results) == sum(1 for r in results if r.ok)
    assert {r.kernel: r.module.stat().st_mtime_ns for r in report.results if r.module} == stamps
    assert [r.vermagic for r in report.results] == [r.vermagic for r in results]


def test_reading_a_few_config_options_agrees_with_the_whole_config(kernel_trees: list, tmp_path: Path) -> None:
    names = ("CONFIG_CC_VERSION_TEXT", "CONFIG_MODULE_SIG", "CONFIG_MODULE_SIG_HASH", "CONFIG_EXT4_FS",
             "CONFIG_MODULE_SIG_FORCE", "CONFIG_NO_SUCH_OPTION")
    trees = [t for t in kernel_trees if t.headers]
    if not trees:
        need("no kernel headers installed")
    for t in trees:
        headers = kern.kernel(t.release).headers
        assert headers is not None
        whole = kern.kernel_config(headers)
        assert kern.kernel_config(headers, only=names) == {n: whole[n] for n in names if n in whole}
    # a tree with only autoconf.h (no .config, no auto.conf): a module option comes back as 'm'
    fake = tmp_path / "headers" / "include" / "generated"
    fake.mkdir(parents=True)
    (fake / "autoconf.h").write_text('#define CONFIG_EXT4_FS_MODULE 1\n#define CONFIG_MODULE_SIG 1\n'
                                     '#define CONFIG_MODULE_SIG_HASH "sha512"\n')
    assert kern.kernel_config(tmp_path / "headers", only=names) == {
        "CONFIG_EXT4_FS": "m", "CONFIG_MODULE_SIG": "y", "CONFIG_MODULE_SIG_HASH": "sha512"}


def _one(tmp_path: Path, tree, name: str = "demo", **kw) -> tuple[Path, Build]:
    NewProject(name, tmp_path / "p").create()
    return tmp_path / "p", Build(tmp_path / "p", kernels=[tree.release], workdir=tmp_path / "work", **kw)


def test_a_changed_source_is_rebuilt(tmp_path: Path, cloud_tree) -> None:
    project, build = _one(tmp_path, cloud_tree)
    first = build.run().results[0]
    assert first.state is State.BUILT
    src = project / "demo.c"
    src.write_text(src.read_text().replace('MODULE_VERSION("0.1.0")', 'MODULE_VERSION("0.2.0")'))
    second = Build(project, kernels=[cloud_tree.release], workdir=tmp_path / "work").run().results[0]
    assert second.state is State.BUILT and second.module is not None
    assert _modinfo(second.module, "version") == "0.2.0"
    assert second.srcversion != first.srcversion


def test_compile_error_is_summarised_with_file_line_and_log(tmp_path: Path, cloud_tree,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    project, _ = _one(tmp_path, cloud_tree)
    src = project / "demo.c"
    lines = src.read_text().splitlines()
    bad_line = next(i for i, line in enumerate(lines, 1) if "return demo_greetings;" in line)
    lines[bad_line - 1] = "\treturn demo_greetings + undeclared_thing;"
    src.write_text("\n".join(lines) + "\n")
    rc = main(["build", str(project), "-k", cloud_tree.release, "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert rc == 1
    assert f"demo.c:{bad_line}: error: 'undeclared_thing' undeclared" in out
    log_line = next(line for line in out.splitlines() if "full log:" in line)
    log = Path(log_line.split("full log:", 1)[1].strip())
    assert log.is_file() and "undeclared_thing" in log.read_text()
    assert not (project / "out" / cloud_tree.release / "demo.ko").exists()


def test_warnings_land_in_the_build_record(tmp_path: Path, cloud_tree) -> None:
    project, build = _one(tmp_path, cloud_tree)
    src = project / "demo.c"
    src.write_text(src.read_text().replace("\tint i;\n", "\tint i;\n\tint unused_here;\n"))
    r = build.run().results[0]
    assert r.state is State.BUILT
    rec = json.loads((project / "out" / cloud_tree.release / "build.json").read_text())
    assert any(w.startswith("demo.c:") and "unused variable 'unused_here'" in w for w in rec["warnings"])


def test_a_mistyped_kernel_is_refused_with_close_installed_names(tmp_path: Path, cloud_tree) -> None:
    """0.1 built nothing, exited 1 and suggested installing linux-headers-TYPO, a package that does not exist."""
    NewProject("demo", tmp_path / "p").create()
    typo = cloud_tree.release[:-1]
    with pytest.raises(UserError) as exc:
        Build(tmp_path / "p", kernels=[typo, cloud_tree.release], workdir=tmp_path / "work")
    assert exc.value.subject == f"-k {typo}" and "is not an installed kernel" in exc.value.problem
    assert exc.value.fix is not None and cloud_tree.release in exc.value.fix and "apt" not in exc.value.fix
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "build", str(tmp_path / "p"), "-k", typo],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and f"did you mean {cloud_tree.release}" in proc.stderr


def _root_with(tmp_path: Path, real: str, headerless: str) -> Path:
    """A fake machine: this one's /usr and /etc, the real kernel ``real``, and ``headerless`` with no headers."""
    root = tmp_path / "root"
    (root / "lib" / "modules" / headerless).mkdir(parents=True)
    (root / "lib" / "modules" / real).symlink_to(f"/lib/modules/{real}")
    for d in ("usr", "etc"):
        (root / d).symlink_to(f"/{d}")
    return root


def test_kernel_without_headers_is_blocked_and_the_others_still_built(tmp_path: Path, cloud_tree) -> None:
    NewProject("demo", tmp_path / "p").create()
    root = _root_with(tmp_path, cloud_tree.release, "6.0.0-0-headerless-amd64")
    events: list[KernelBuild] = []
    report = Build(tmp_path / "p", kernels=["6.0.0-0-headerless-amd64", cloud_tree.release],
                   workdir=tmp_path / "work", root=Root(root)).run(events.append)
    missing, real = report.results
    assert missing.state is State.BLOCKED and missing.fix == "apt-get install linux-headers-6.0.0-0-headerless-amd64"
    assert real.state is State.BUILT and not report.ok
    assert [e.state for e in events if e.kernel == real.kernel] == [State.QUEUED, State.BUILDING, State.BUILT]
    skipping = Build(tmp_path / "p", all_installed=True, workdir=tmp_path / "work", root=Root(root),
                     skip_blocked=True).run()
    assert skipping.ok and [r.state for r in skipping.results] == [State.CACHED, State.BLOCKED][::1 if
                                                                   skipping.results[0].kernel == real.kernel else -1]


def test_project_path_with_spaces_and_shell_metacharacters(tmp_path: Path, cloud_tree) -> None:
    project = tmp_path / "my proj;$(touch PWNED) `id`"
    NewProject("demo", project).create()
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "build", str(project), "-k", cloud_tree.release,
                           "--workdir", str(tmp_path / "work"), "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["kernels"][0]["state"] == "built"
    assert _modinfo(Path(doc["kernels"][0]["module"]), "vermagic").split()[0] == cloud_tree.release
    assert not list(tmp_path.rglob("PWNED"))


def test_shm_workdir(tmp_path: Path, cloud_tree) -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    NewProject("demo", tmp_path / "p").create()
    build = Build(tmp_path / "p", kernels=[cloud_tree.release], shm=True)
    assert str(build.work).startswith("/dev/shm/")
    try:
        assert build.run().results[0].state is State.BUILT
        assert (build.work / cloud_tree.release / "demo.c").is_file()
    finally:
        shutil.rmtree(build.work, ignore_errors=True)


def test_manifest_signing_key_signs_after_building(tmp_path: Path, cloud_tree) -> None:
    project, _ = _one(tmp_path, cloud_tree)
    keys = project / "keys"
    keys.mkdir()
    old = os.umask(0o077)
    try:
        subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "30", "-batch", "-x509",
                        "-subj", "/CN=kmodkit build test", "-newkey", "rsa:2048", "-keyout", str(keys / "signing.pem"),
                        "-outform", "PEM", "-out", str(keys / "signing.crt")], check=True, capture_output=True)
    finally:
        os.umask(old)
    manifest = project / "kmodkit.toml"
    manifest.write_text(manifest.read_text().replace('key = ""', 'key = "keys/signing.pem"')
                        .replace('cert = ""', 'cert = "keys/signing.crt"'))
    r = Build(project, kernels=[cloud_tree.release], workdir=tmp_path / "work").run().results[0]
    assert r.state is State.BUILT and r.signed is not None, r.problem
    if r.signed.state.value == "unavailable":
        need(f"the signing tools ({r.signed.detail})")
    assert r.signed.state.value == "signed", r.signed.detail
    assert r.module is not None
    # the oracle: kmod reads the appended signature
    assert _modinfo(r.module, "signer") == "kmodkit build test"
    assert _modinfo(r.module, "sig_hashalgo") == "sha256"
    again = Build(project, kernels=[cloud_tree.release], workdir=tmp_path / "work").run().results[0]
    assert again.state is State.CACHED


@pytest.mark.parametrize("text,line,words", [
    ('[module]\nname = "demo"\nversion = 0.1.0\n', 3, "not valid TOML"),
    ('[module]\nname = "demo"\nsources = "demo.c"\n', 3, "module.sources: must be a list of strings"),
    ('# top\n[module]\nversion = "1"\n', 2, "module.name: is missing"),
    ('[module]\nname = "my-mod"\n', 2, "module.name: 'my-mod' is not a C identifier"),
    ('[module]\nname = "demo"\n[parameters.level]\ntype = "float"\n', 4, "parameters.level.type"),
])
def test_broken_manifest_names_the_key_and_file_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    (tmp_path / "kmodkit.toml").write_text(text)
    (tmp_path / "demo.c").write_text("")
    with pytest.raises(ConfigError) as exc:
        Build(tmp_path, kernels=["x"])
    assert exc.value.subject == f"{tmp_path / 'kmodkit.toml'}:{line}"
    assert words in exc.value.problem


def test_cli_broken_manifest_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "kmodkit.toml").write_text('[module]\nname = 5\n')
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "build", str(tmp_path), "-k", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"error: {tmp_path}/kmodkit.toml:2: module.name: must be a string, not int; "
                           'quote it: name = "..."\n')


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    NewProject("demo", tmp_path / "p").create()
    with pytest.raises(UserError):
        Build(tmp_path / "p", kernels=["x"], jobs=0)
    with pytest.raises(UserError):
        Build(tmp_path / "p", kernels=["x"], workdir=tmp_path / "has space")
    (tmp_path / "p" / "demo.c").unlink()
    with pytest.raises(UserError, match="does not exist"):
        Build(tmp_path / "p", kernels=["x"])


def test_the_build_that_took_longest_last_time_starts_first(tmp_path: Path, kernel_trees: list) -> None:
    releases = [t.release for t in kernel_trees if t.headers][:2]
    if len(releases) < 2:
        need("needs two kernels with headers")
    NewProject("demo", tmp_path / "p").create()
    # earlier builds' records: the second kernel's make took longest (the inputs differ: both are rebuilt)
    for release, duration in zip(releases, (1.0, 9.0)):
        out = tmp_path / "p" / "out" / release
        out.mkdir(parents=True)
        (out / "build.json").write_text(json.dumps({"kernel": release, "duration": duration, "inputs": "old"}))
    events: list[KernelBuild] = []
    # one kernel at a time, so the order make starts in is the order asked for
    report = Build(tmp_path / "p", kernels=releases, jobs=1, workdir=tmp_path / "work").run(events.append)
    assert [e.kernel for e in events if e.state is State.BUILDING] == releases[::-1]
    assert [r.kernel for r in report.results] == releases and report.ok


def test_plain_progress_lines_when_not_a_terminal(tmp_path: Path, cloud_tree) -> None:
    NewProject("demo", tmp_path / "p").create()
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "build", str(tmp_path / "p"), "-k", cloud_tree.release,
                           "--workdir", str(tmp_path / "work")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"build: {cloud_tree.release}: building with " in proc.stderr
    assert f"build: {cloud_tree.release}: built in " in proc.stderr
    assert "\x1b[" not in proc.stderr + proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("1 of 1 kernels built")
