"""``kmodkit build`` of real projects (issue 12): every module make builds lands in out/KVER/ with
Module.symvers, the manifest and make must agree, debug info names the project's own files, a second project
builds against the first's header and exports, and a signed module is never silently made unsigned.

Real make and gcc against an installed kernel's headers; oracles: kmod's modinfo, binutils' readelf, the
kernel's sign-file.  The projects are tests/data/projects (core: two modules, one in a subdirectory; probe:
a second project using core's exports)."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need

from kmodkit.errors import UserError
from kmodkit.kbuild.builder import Build, State
from kmodkit.kbuild.project import NewProject

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

PROJECTS = Path(__file__).parent / "data" / "projects"


def _modinfo(path: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True, check=True).stdout.strip()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, cloud_tree) -> tuple[Path, str]:
    """core and probe copied to a temp directory, core built for the cloud kernel."""
    if cloud_tree.headers is None:
        need("no headers for the cloud kernel")
    base = tmp_path_factory.mktemp("projects")
    for name in ("core", "probe"):
        shutil.copytree(PROJECTS / name, base / name)
    report = Build(base / "core", kernels=[cloud_tree.release], workdir=base / "work").run()
    assert report.ok, report.results[0].problem
    return base, cloud_tree.release


def test_every_module_make_built_lands_in_out_with_module_symvers(built: tuple[Path, str]) -> None:
    """0.1 kept only NAME.ko (fleetmon.ko), dropped fleetmon_jiffies.ko and Module.symvers, and said "built"."""
    base, kver = built
    out = base / "core" / "out" / kver
    assert sorted(p.name for p in out.glob("*.ko")) == ["fleetmon.ko", "fleetmon_jiffies.ko"]
    symvers = (out / "Module.symvers").read_text()
    assert re.search(rf"^0x[0-9a-f]{{8}}\tfleetmon_register\t{re.escape(str(base / 'core'))}/fleetmon\t"
                     r"EXPORT_SYMBOL_GPL\t", symvers, re.M)
    rec = json.loads((out / "build.json").read_text())
    assert [m["name"] for m in rec["modules"]] == ["fleetmon", "fleetmon_jiffies"]
    for m in rec["modules"]:
        ko = Path(m["file"])
        assert _modinfo(ko, "vermagic").split()[0] == kver and _modinfo(ko, "srcversion") == m["srcversion"]
    # modpost saw both in one run: the subdirectory's module depends on the core
    assert _modinfo(out / "fleetmon_jiffies.ko", "depends") == "fleetmon"
    assert _modinfo(out / "fleetmon.ko", "parm") == "interval:seconds between samples (default 5) (uint)"


def test_debug_info_names_the_project_files_not_the_cache_copy(built: tuple[Path, str]) -> None:
    """0.1's DW_AT_name were paths in the build cache: deleting it (which 'only costs time') broke gdb's listing."""
    base, kver = built
    for ko in ("fleetmon.ko", "fleetmon_jiffies.ko"):
        dump = subprocess.run(["readelf", "--debug-dump=info", str(base / "core" / "out" / kver / ko)],
                              capture_output=True, text=True, check=True).stdout
        names = set(re.findall(r"DW_AT_name\s*:.*?: (/\S+\.c)$", dump, re.M))
        assert names and all(n.startswith(f"{base / 'core'}/") for n in names), names
        assert str(base / "work") not in dump
    names = re.findall(r"DW_AT_name\s*:.*?: (/\S+\.c)$", subprocess.run(
        ["readelf", "--debug-dump=info", str(base / "core" / "out" / kver / "fleetmon.ko")],
        capture_output=True, text=True).stdout, re.M)
    assert {f"{base}/core/fleetmon_main.c", f"{base}/core/lib/ring.c"} <= set(names)
    assert all(Path(n).is_file() for n in names if not n.endswith(".mod.c"))


def test_a_second_project_builds_with_the_first_ones_header_and_exports(built: tuple[Path, str]) -> None:
    """#include "../core/core.h" from the build copy, and core's Module.symvers through KBUILD_EXTRA_SYMBOLS."""
    base, kver = built
    r = Build(base / "probe", kernels=[kver], workdir=base / "work").run().results[0]
    assert r.state is State.BUILT, r.problem
    assert _modinfo(base / "probe" / "out" / kver / "fleetmon_probe.ko", "depends") == "fleetmon"


def test_an_undefined_export_names_the_project_to_depend_on(built: tuple[Path, str], tmp_path: Path) -> None:
    """0.1 passed modpost's "undefined!" on with no hint."""
    base, kver = built
    alone = base / "alone"
    shutil.copytree(base / "probe", alone, ignore=shutil.ignore_patterns("out"))
    manifest = alone / "kmodkit.toml"
    manifest.write_text(manifest.read_text().replace('depends = ["../core"]', "depends = []"))
    proc = _cli("build", str(alone), "-k", kver, "--workdir", str(tmp_path / "work"))
    assert proc.returncode == 1
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert '"fleetmon_register" [fleetmon_probe.ko] undefined!' in error
    assert f'exported by the project {base / "core"}: add depends = ["../core"] under [project]' in error


def test_manifest_and_make_disagreeing_fail_loudly(built: tuple[Path, str], tmp_path: Path) -> None:
    base, kver = built
    project = tmp_path / "core"
    shutil.copytree(base / "core", project, ignore=shutil.ignore_patterns("out"))
    manifest = project / "kmodkit.toml"
    text = manifest.read_text()
    manifest.write_text(text[:text.index('[[module]]\nname = "fleetmon_jiffies"')])
    proc = _cli("build", str(project), "-k", kver, "--workdir", str(tmp_path / "work"))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {kver}: make built fleetmon_jiffies.ko, which kmodkit.toml does not name "
                      '(add a [[module]] with name = "fleetmon_jiffies")']
    assert not list((project / "out" / kver).glob("*.ko"))
    (project / "ghost.c").write_text("")
    manifest.write_text(text + '\n[[module]]\nname = "ghost"\n')
    r = Build(project, kernels=[kver], workdir=tmp_path / "work").run().results[0]
    assert r.state is State.FAILED and r.problem == ("kmodkit.toml names ghost, which make did not build (add it to "
                                                     "obj-m in the Kbuild, or remove its [[module]])")


def test_without_sources_the_missing_default_source_is_named_as_the_default(tmp_path: Path) -> None:
    """0.1 said "a source the manifest lists does not exist" of a manifest that lists none."""
    (tmp_path / "kmodkit.toml").write_text('[module]\nname = "demo"\n')
    with pytest.raises(UserError) as exc:
        Build(tmp_path, kernels=["x"])
    assert exc.value.subject == str(tmp_path / "demo.c")
    assert "without sources = [...]" in exc.value.problem and "lists" not in exc.value.problem


@pytest.fixture()
def key_pair(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "signing.pem", tmp_path / "signing.crt"
    old = os.umask(0o077)
    try:
        subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "30", "-batch", "-x509",
                        "-subj", "/CN=kmodkit rebuild test", "-newkey", "rsa:2048", "-keyout", str(key),
                        "-outform", "PEM", "-out", str(cert)], check=True, capture_output=True)
    finally:
        os.umask(old)
    return key, cert


def test_a_signed_module_is_not_silently_replaced_by_an_unsigned_build(tmp_path: Path, cloud_tree,
                                                                        key_pair: tuple[Path, Path]) -> None:
    """0.1: sign out/KVER/demo.ko, build again: the signed module was rebuilt and replaced, unsigned, silently."""
    tools = sorted(glob.glob("/usr/lib/linux-kbuild-*/scripts/sign-file"))
    if not tools:
        need("Debian's sign-file is not installed")
    NewProject("demo", tmp_path / "p").create()
    args = ("build", str(tmp_path / "p"), "-k", cloud_tree.release, "--workdir", str(tmp_path / "work"))
    assert _cli(*args).returncode == 0
    module = tmp_path / "p" / "out" / cloud_tree.release / "demo.ko"
    subprocess.run([tools[0], "sha256", str(key_pair[0]), str(key_pair[1]), str(module)], check=True)
    again = _cli(*args, "--json")
    # up to date: the signed module is the build's own, with a signature appended
    assert json.loads(again.stdout)["kernels"][0]["state"] == "up to date"
    assert _modinfo(module, "signer") == "kmodkit rebuild test"
    src = tmp_path / "p" / "demo.c"
    src.write_text(src.read_text().replace('MODULE_VERSION("0.1.0")', 'MODULE_VERSION("0.2.0")'))
    rebuilt = _cli(*args)
    assert rebuilt.returncode == 0
    assert f"  note: {module} was signed; the new build is not (the manifest names no key): sign it again" \
        in rebuilt.stdout
    assert _modinfo(module, "version") == "0.2.0" and _modinfo(module, "signer") == ""


def test_the_json_says_up_to_date_where_the_text_does(tmp_path: Path, cloud_tree) -> None:
    """0.1's JSON said "cached" where its text said "up to date"."""
    NewProject("demo", tmp_path / "p").create()
    args = ("build", str(tmp_path / "p"), "-k", cloud_tree.release, "--workdir", str(tmp_path / "work"))
    assert _cli(*args).returncode == 0
    text, doc = _cli(*args).stdout, json.loads(_cli(*args, "--json").stdout)
    assert "(up to date)" in text and doc["kernels"][0]["state"] == "up to date"


def _screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: lines, with rich's cursor-up (ESC[1A) and erase-line (ESC[2K) applied."""
    import re as _re

    lines, row = [""], 0
    for token in _re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r\n|\n|\r|[^\x1b\r\n]+|\x1b", raw):
        if token in ("\n", "\r\n"):
            row += 1
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            lines[row] = ""
        elif token.startswith("\x1b["):
            if token.endswith("A"):
                row = max(0, row - int(token[2:-1] or 1))
            elif token == "\x1b[2K":
                lines[row] = ""
        elif not token.startswith("\x1b"):
            lines[row] += token
    return [line for line in lines if line.strip()]


def test_on_a_terminal_each_kernel_is_shown_once(tmp_path: Path, cloud_tree) -> None:
    """0.1 left its live table on the screen and printed the summary under it: every kernel twice."""
    from terminal import on_terminal

    NewProject("demo", tmp_path / "p").create()
    status, raw = on_terminal(["build", str(tmp_path / "p"), "-k", cloud_tree.release, "--workdir",
                               str(tmp_path / "work")], dict(os.environ, TERM="xterm", COLUMNS="200"))
    assert status == 0
    screen = _screen(raw)
    assert len([line for line in screen if cloud_tree.release in line]) == 1, screen
    assert screen[-1].startswith("1 of 1 kernels built")
