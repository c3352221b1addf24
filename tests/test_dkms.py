"""The DKMS bridge (issue 15, item 3): ``kmodkit dkms export`` writes a DKMS source tree, and ``kmodkit build``
reads one (its dkms.conf as data, never through a shell).

The proof runs Debian's real dkms (3.0.x): the example and the two-module fleetmon core are exported, then
``dkms add/build/install`` build and install them for two installed kernels with ``--dkmstree``,
``--sourcetree`` and ``--installtree`` in a temp directory and ``--no-depmod`` (nothing touches
/var/lib/dkms or /lib/modules); DKMS signs with the key the export's framework.conf.d snippet names.  Oracle:
kmod's modinfo — DKMS's modules equal ``kmodkit build``'s in vermagic and srcversion.  The dkms.conf parser
tests use small dkms.conf texts written here (real trees' forms) and a DKMS tree shaped like a vendor's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need

from kmodkit.errors import ConfigError, UserError
from kmodkit.kbuild.builder import Build
from kmodkit.kbuild.dkms import SIGNING_CONF, DkmsExport
from kmodkit.kbuild.dkmsconf import parse_conf, read_conf, read_tree
from kmodkit.kbuild.manifest import Manifest

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "example" / "hello"
#: the example as committed: not the out/ and .kmodkit/ a demo run leaves in the checkout
SOURCES_ONLY = shutil.ignore_patterns("out", ".kmodkit")
CORE = Path(__file__).parent / "data" / "projects" / "core"
PROBE = Path(__file__).parent / "data" / "projects" / "probe"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True)


def _modinfo(path: Path, field: str) -> str:
    return subprocess.run(["modinfo", "-F", field, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


# --- dkms.conf read as data ------------------------------------------------------------------------------

def test_the_common_forms_of_dkms_conf_are_read_as_bash_assigns_them() -> None:
    text = (
        '# a vendor dkms.conf\n'
        'PACKAGE_NAME="fleetmon"\n'
        "ver='1.2.3'\n"
        'PACKAGE_VERSION=$ver\n'
        'BUILT_MODULE_NAME[0]="$PACKAGE_NAME"\n'
        'BUILT_MODULE_NAME[1]=${PACKAGE_NAME}_jiffies   # the second module\n'
        'BUILT_MODULE_LOCATION[1]=jiffies/\n'
        'DEST_MODULE_LOCATION[0]="/updates/dkms" DEST_MODULE_LOCATION[1]="/updates/dkms"\n'
        'MAKE[0]="make -C ${kernel_source_dir} \\\n'
        '  M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"\n'
        'CLEAN="make clean"; AUTOINSTALL=yes\n'
        'DESC="say \\"hi\\" for \\$5"\n'
    )
    conf = parse_conf(text, Path("dkms.conf"))
    got = {(a.name, a.index): (a.value, a.line, a.runtime) for a in conf.assignments}
    assert got[("PACKAGE_VERSION", None)] == ("1.2.3", 4, False)
    assert got[("BUILT_MODULE_NAME", 0)] == ("fleetmon", 5, False)
    assert got[("BUILT_MODULE_NAME", 1)] == ("fleetmon_jiffies", 6, False)
    assert got[("BUILT_MODULE_LOCATION", 1)] == ("jiffies/", 7, False)
    assert got[("DEST_MODULE_LOCATION", 1)] == ("/updates/dkms", 8, False)
    # DKMS's per-kernel variables are kept as written; the package's own are expanded
    assert got[("MAKE", 0)] == ("make -C ${kernel_source_dir}   M=${dkms_tree}/fleetmon/1.2.3/build", 9, True)
    assert got[("AUTOINSTALL", None)] == ("yes", 11, False)
    assert got[("DESC", None)] == ('say "hi" for $5', 12, False)
    # bash agrees on every value it can expand by itself
    for name, want in (("PACKAGE_VERSION", "1.2.3"), ("BUILT_MODULE_NAME[1]", "fleetmon_jiffies"),
                       ("DESC", 'say "hi" for $5')):
        out = subprocess.run(["bash", "-c", text + f'\nprintf %s "${{{name}}}"'], capture_output=True, text=True)
        assert out.stdout == want


@pytest.mark.parametrize("line, what", [
    ('if [ -x /usr/bin/lsb_release ]; then', "is a condition"),
    ('PACKAGE_VERSION=$(cat VERSION)', "command substitution"),
    ('PACKAGE_VERSION=`cat VERSION`', "command substitution"),
    ('PACKAGE_VERSION="${ver:-1.0}"', "parameter expansion"),
    ('BUILT_MODULE_NAME=(a b)', "an array"),
    ('PACKAGE_VERSION="$undefined"', "never sets"),
    ('PACKAGE_VERSION=1.0 make', "a command"),
    ('build() { make; }', "a function"),
    ('export PACKAGE_VERSION=1.0', "an export"),
    ('PACKAGE_VERSION="1.0', "never closed"),
    ('PACKAGE_VERSION="$1"', "special parameter"),
])
def test_shell_code_is_refused_naming_its_line(line: str, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_conf(f'PACKAGE_NAME="hello"\n# the line kmodkit cannot read:\n{line}\n', Path("t/dkms.conf"))
    assert err.value.subject == "t/dkms.conf:3"
    assert what in err.value.problem
    assert "never runs it through a shell" in err.value.problem


def _vendor_tree(base: Path, conf: str) -> Path:
    """A DKMS tree as vendors ship them: the fleetmon core's sources and Kbuild files, and ``conf`` as dkms.conf."""
    tree = base / "fleetmon-1.0"
    shutil.copytree(CORE, tree, ignore=shutil.ignore_patterns("kmodkit.toml"))
    # vendors keep their flags in the Kbuild (kmodkit.toml's cflags and include are not there)
    with open(tree / "Kbuild", "a") as f:
        f.write("ccflags-y += -I$(src) -DFLEETMON_MAX_SOURCES=4\n")
    with open(tree / "jiffies" / "Kbuild", "a") as f:
        f.write("ccflags-y += -I$(src)/..\n")
    (tree / "dkms.conf").write_text(conf)
    return tree


VENDOR_CONF = """PACKAGE_NAME="fleetmon"
PACKAGE_VERSION="1.0"
BUILT_MODULE_NAME[0]="fleetmon"
DEST_MODULE_LOCATION[0]="/updates"
BUILT_MODULE_NAME[1]="fleetmon_jiffies"
BUILT_MODULE_LOCATION[1]="jiffies/"
DEST_MODULE_LOCATION[1]="/updates"
MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build"
CLEAN="make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/${PACKAGE_VERSION}/build clean"
AUTOINSTALL="yes"
"""


def test_a_dkms_tree_is_read_as_a_project_with_sources_from_its_kbuild(tmp_path: Path) -> None:
    tree = _vendor_tree(tmp_path, VENDOR_CONF)
    m = Manifest.load(tree)  # the one entry point every command reads projects through
    assert m.path == tree / "dkms.conf" and m.project == tree
    assert [(s.name, s.subdir, s.sources, s.version) for s in m.modules] == [
        ("fleetmon", "", ("fleetmon_main.c", "lib/ring.c"), "1.0"),
        ("fleetmon_jiffies", "jiffies", ("jiffies/fleetmon_jiffies.c",), "1.0")]
    assert m.install_location == "updates" and m.signing is None and m.depends == ()
    assert Manifest.load(tree / "dkms.conf") == m


@pytest.mark.parametrize("change, line, what", [
    ('PATCH[0]="fix.patch"\n', 11, "PATCH is refused"),
    ('BUILD_EXCLUSIVE_KERNEL="^6\\.1"\n', 11, "BUILD_EXCLUSIVE_KERNEL is refused"),
    ('DEST_MODULE_NAME[1]="fm_jiffies"\n', 11, "renames fleetmon_jiffies to fm_jiffies"),
    ('BUILT_MODULE_NAME[2]="fleetmon_extra"\nDEST_MODULE_LOCATION[2]="/updates"\n', 11, "no module 'fleetmon_extra'"),
    ('BUILT_MODULE_LOCATION[1]="$kernelver/"\n', 11, "depends on the kernel"),
    ('MAKE[0]="make -C src/ KVER=${kernelver}"\n', 11, "not in the kernel's build directory"),
    ('MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/x CONFIG_FLEETMON_X=m"\n', 11, "CONFIG_FLEETMON_X=m"),
    ('DEST_MODULE_LOCATION[1]="/extra"\n', 11, "into one directory"),
])
def test_what_kmodkit_does_not_do_in_a_dkms_tree_is_refused_naming_the_line(tmp_path: Path, change: str, line: int,
                                                                            what: str) -> None:
    tree = _vendor_tree(tmp_path, VENDOR_CONF + change)
    with pytest.raises(ConfigError) as err:
        read_tree(tree)
    assert err.value.subject == f"{tree / 'dkms.conf'}:{line}"
    assert what in err.value.problem


def test_build_of_a_dkms_tree_with_shell_code_is_one_error_line(tmp_path: Path) -> None:
    tree = _vendor_tree(tmp_path, VENDOR_CONF + 'if [ "$(uname -m)" = x86_64 ]; then STRIP[0]=no; fi\n')
    proc = _cli("build", str(tree), "--no-check")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {tree}/dkms.conf:11: 'if [ \"$(uname -m)\" = x86_64 ]; then STRIP[0]=no; fi' is a condition: "
        "kmodkit reads dkms.conf as data and never runs it through a shell; write it as NAME=\"value\" or "
        "NAME[N]=\"value\" assignments"]
    assert proc.stdout == ""


# --- export ------------------------------------------------------------------------------------------------

def _signed_copy(base: Path, project: Path) -> Path:
    """``project`` copied with a real key (openssl) in its keys/ and [signing] naming it."""
    copy = base / project.name
    shutil.copytree(project, copy)
    (copy / "keys").mkdir()
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "30", "-batch", "-x509",
                    "-subj", "/CN=dkms export proof", "-newkey", "rsa:2048", "-keyout", str(copy / "keys" / "k.pem"),
                    "-outform", "DER", "-out", str(copy / "keys" / "k.der")], check=True, capture_output=True)
    text = (copy / "kmodkit.toml").read_text()
    if "[signing]" in text:
        text = text[:text.index("[signing]")] + text[text.index("[test]"):]
    (copy / "kmodkit.toml").write_text(text + '\n[signing]\nkey = "keys/k.pem"\ncert = "keys/k.der"\n')
    return copy


def test_export_writes_a_tree_kmodkit_reads_back_as_the_same_modules(tmp_path: Path) -> None:
    result = DkmsExport(CORE, tmp_path / "src").write()
    tree = tmp_path / "src" / "fleetmon-1.0.0"
    assert result.tree == tree and result.written and result.signing_conf is None
    assert "kmodkit.toml" not in result.files and "dkms.conf" in result.files
    back = Manifest.load(tree)
    want = Manifest.load(CORE)
    assert [(m.name, m.subdir, m.sources) for m in back.modules] == \
        [(m.name, m.subdir, m.sources) for m in want.modules]
    assert back.install_location == "updates/fleetmon"
    conf = {(a.name, a.index): a.value for a in read_conf(tree / "dkms.conf").assignments}
    assert conf[("PACKAGE_NAME", None)] == "fleetmon" and conf[("PACKAGE_VERSION", None)] == "1.0.0"
    assert conf[("BUILT_MODULE_LOCATION", 1)] == "jiffies/" and conf[("DEST_MODULE_LOCATION", 0)] == "/updates/fleetmon"
    assert conf[("AUTOINSTALL", None)] == "yes" and conf[("STRIP", 0)] == "no"
    # the manifest's include and cflags are in the Kbuild files, spelled from $(src) so the tree can move
    assert "CFLAGS_lib/ring.o += -I$(src) -DFLEETMON_MAX_SOURCES=4" in (tree / "Kbuild").read_text()
    assert "CFLAGS_fleetmon_jiffies.o += -I$(src)/.." in (tree / "jiffies" / "Kbuild").read_text()
    # bash, as DKMS reads it, agrees
    out = subprocess.run(["bash", "-c", f'. {tree}/dkms.conf; kernel_source_dir=K; dkms_tree=D; eval "echo $MAKE"; '
                          'echo "${BUILT_MODULE_NAME[1]} ${DEST_MODULE_LOCATION[1]}"'], capture_output=True, text=True)
    assert out.stdout.splitlines()[1] == "fleetmon_jiffies /updates/fleetmon"


def test_export_leaves_an_identical_tree_and_refuses_a_different_one(tmp_path: Path) -> None:
    project = tmp_path / "hello"
    shutil.copytree(EXAMPLE, project, ignore=SOURCES_ONLY)
    first = DkmsExport(project, tmp_path / "src").write()
    stamp = (first.tree / "hello.c").stat().st_mtime_ns
    again = DkmsExport(project, tmp_path / "src").write()
    assert first.written and not again.written and (first.tree / "hello.c").stat().st_mtime_ns == stamp
    with open(project / "hello.c", "a") as f:
        f.write("/* changed */\n")
    with pytest.raises(UserError) as err:
        DkmsExport(project, tmp_path / "src").write()
    assert err.value.subject == str(first.tree) and "hello.c differs" in err.value.problem
    assert not (first.tree / "hello.c").read_text().endswith("/* changed */\n")
    assert [p.name for p in (tmp_path / "src").iterdir()] == ["hello-0.1.0"]  # no temp directory left
    assert DkmsExport(project, tmp_path / "src", version="0.1.1").write().tree.name == "hello-0.1.1"


def test_export_never_copies_a_private_key_and_names_it_for_dkms_signing(tmp_path: Path) -> None:
    project = _signed_copy(tmp_path, EXAMPLE)
    (project / "old.pem").write_bytes((project / "keys" / "k.pem").read_bytes())  # a stray key, named nowhere
    result = DkmsExport(project, tmp_path / "src").write()
    for path in result.tree.rglob("*"):
        assert not path.is_file() or b"PRIVATE KEY" not in path.read_bytes(), path
    assert "keys/k.der" in result.files  # the certificate is public
    assert result.signing_conf == result.tree / SIGNING_CONF
    snippet = {a.name: a.value for a in read_conf(result.tree / SIGNING_CONF).assignments}
    assert snippet == {"mok_signing_key": str(project / "keys" / "k.pem"),
                       "mok_certificate": str(project / "keys" / "k.der")}


@pytest.mark.parametrize("version", ["1.0 beta", "1.0$(id)", "", '1"0'])
def test_export_refuses_a_version_dkms_cannot_take(tmp_path: Path, version: str) -> None:
    with pytest.raises(UserError) as err:
        DkmsExport(EXAMPLE, tmp_path, version=version)
    assert "DKMS cannot take this version" in err.value.problem
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_project_that_needs_another_projects_exports(tmp_path: Path) -> None:
    proc = _cli("dkms", "export", str(PROBE), "--dest", str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and "[project] depends: a DKMS package builds alone" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# --- the proof: Debian's real dkms -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dkms_run(tmp_path_factory: pytest.TempPathFactory, cloud_tree, xz_tree) -> dict[str, object]:
    """hello and core (signed) exported, built by kmodkit and by dkms (add, build, install) for two kernels."""
    if shutil.which("dkms") is None:
        need("Debian's dkms")
    kernels = [cloud_tree.release, xz_tree.release]
    if cloud_tree.headers is None or xz_tree.headers is None:
        need("headers of the 6.1 cloud and 6.12 cloud kernels")
    base = tmp_path_factory.mktemp("dkms")
    projects = {"hello": base / "hello", "fleetmon": _signed_copy(base, CORE)}
    shutil.copytree(EXAMPLE, projects["hello"], ignore=SOURCES_ONLY)
    src, tree, inst = base / "src", base / "dkmstree", base / "installtree"
    tree.mkdir()
    for k in kernels:
        (inst / k).mkdir(parents=True)  # dkms install wants the kernel's directory there
    before = sorted(os.listdir("/var/lib/dkms")) if os.path.isdir("/var/lib/dkms") else None
    env = dict(os.environ)
    exported = {}
    for name, project in projects.items():
        proc = _cli("dkms", "export", str(project), "--dest", str(src))
        assert proc.returncode == 0, proc.stderr
        exported[name] = DkmsExport(project, src).tree
        report = Build(project, kernels=kernels, workdir=base / "work", check=False).run()
        assert report.ok, [(r.kernel, r.problem) for r in report.results]
    # DKMS reads mok_signing_key and mok_certificate from framework.conf, or from the environment it starts in
    # (the test must not write /etc/dkms): the export's snippet says what they are
    for a in read_conf(exported["fleetmon"] / SIGNING_CONF).assignments:
        env[a.name] = a.value
    common = ["--sourcetree", str(src), "--dkmstree", str(tree), "--installtree", str(inst)]
    logs = []
    for name, version in (("hello", "0.1.0"), ("fleetmon", "1.0.0")):
        for action in (["add"], *[["build", "-k", k] for k in kernels], *[["install", "--no-depmod", "-k", k]
                                                                           for k in kernels]):
            proc = subprocess.run(["dkms", action[0], "-m", name, "-v", version, *action[1:], *common],
                                  capture_output=True, text=True, env=env)
            logs.append(proc.stdout + proc.stderr)
            assert proc.returncode == 0, f"dkms {' '.join(action)} {name}: {proc.stdout}{proc.stderr}"
    after = sorted(os.listdir("/var/lib/dkms")) if os.path.isdir("/var/lib/dkms") else None
    return {"base": base, "kernels": kernels, "projects": projects, "exported": exported, "inst": inst,
            "before": before, "after": after, "logs": logs}


def _installed(inst: Path, kernel: str, module: str) -> Path:
    # Debian's DKMS installs into updates/dkms whatever DEST_MODULE_LOCATION says; 6.12's modules are .ko.xz
    hits = sorted((inst / kernel / "updates" / "dkms").glob(f"{module}.ko*"))
    assert len(hits) == 1, (kernel, module, hits)
    return hits[0]



@pytest.mark.kernel
@pytest.mark.slow
def test_dkms_builds_and_installs_the_export_with_kmodkits_vermagic_and_srcversion(
        dkms_run: dict[str, object]) -> None:
    inst, projects = dkms_run["inst"], dkms_run["projects"]
    assert isinstance(inst, Path) and isinstance(projects, dict)
    for kernel in dkms_run["kernels"]:  # type: ignore[attr-defined]
        for project, module in (("hello", "hello"), ("fleetmon", "fleetmon"), ("fleetmon", "fleetmon_jiffies")):
            theirs = _installed(inst, kernel, module)
            ours = projects[project] / "out" / kernel / f"{module}.ko"
            assert _modinfo(theirs, "vermagic") == _modinfo(ours, "vermagic")
            assert _modinfo(theirs, "vermagic").split()[0] == kernel
            assert _modinfo(theirs, "srcversion") == _modinfo(ours, "srcversion") != ""
            assert _modinfo(theirs, "depends") == _modinfo(ours, "depends")
        # DKMS signed with the project's key, named by the export's framework.conf.d snippet
        assert _modinfo(_installed(inst, kernel, "fleetmon"), "signer") == "dkms export proof"
        assert _modinfo(_installed(inst, kernel, "hello"), "signer") == "dkms export proof"


@pytest.mark.kernel
@pytest.mark.slow
def test_dkms_run_leaves_the_real_dkms_tree_alone(dkms_run: dict[str, object]) -> None:
    assert dkms_run["before"] == dkms_run["after"]  # no mok.key generated, no package added


@pytest.mark.kernel
@pytest.mark.slow
def test_kmodkit_builds_an_exported_dkms_tree_to_the_same_modules(dkms_run: dict[str, object],
                                                                  tmp_path: Path) -> None:
    exported, projects = dkms_run["exported"], dkms_run["projects"]
    assert isinstance(exported, dict) and isinstance(projects, dict)
    tree = tmp_path / "fleetmon-1.0.0"
    shutil.copytree(exported["fleetmon"], tree)  # a copy: DKMS's source link points at the export
    kernel = dkms_run["kernels"][0]  # type: ignore[index]
    proc = _cli("build", str(tree), "-k", kernel, "--workdir", str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr
    for module in ("fleetmon", "fleetmon_jiffies"):
        ours = tree / "out" / kernel / f"{module}.ko"
        built = projects["fleetmon"] / "out" / kernel / f"{module}.ko"
        assert _modinfo(ours, "srcversion") == _modinfo(built, "srcversion")
        assert _modinfo(ours, "vermagic") == _modinfo(built, "vermagic")


def test_export_cli_says_written_then_up_to_date_in_json(tmp_path: Path) -> None:
    import json

    project = tmp_path / "hello"
    shutil.copytree(EXAMPLE, project, ignore=SOURCES_ONLY)
    runs = [_cli("dkms", "export", str(project), "--dest", str(tmp_path / "src"), "--json") for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    first, second = (json.loads(r.stdout) for r in runs)
    assert first["state"] == "written" and second["state"] == "up to date"
    assert first["tree"] == str(tmp_path / "src" / "hello-0.1.0") and first["name"] == "hello"
    assert first["files"] == second["files"] and "dkms.conf" in first["files"] and "kmodkit.toml" not in first["files"]


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_dkms_conf_that_is_no_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    """A FIFO (made in the test) would block a plain open; a directory gave 'error: 3: is a directory'."""
    conf = tmp_path / "dkms.conf"
    os.mkfifo(conf) if kind == "fifo" else conf.mkdir()
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "build", str(tmp_path)], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    assert proc.stderr == f"error: {conf}: is not a regular file; name the DKMS tree's dkms.conf\n"


@pytest.mark.kernel
@pytest.mark.slow
def test_a_dkms_tree_whose_make_builds_a_module_dkms_conf_does_not_name_fails_saying_how_to_name_it(
        tmp_path: Path, cloud_tree) -> None:
    """The disagreement said "which kmodkit.toml does not name (add a [[module]] ...)" of a tree without one."""
    if cloud_tree.headers is None:
        need("headers for the cloud kernel")
    conf = "\n".join(line for line in VENDOR_CONF.splitlines() if "[1]" not in line) + "\n"
    tree = _vendor_tree(tmp_path, conf)
    report = Build(tree, kernels=[cloud_tree.release], workdir=tmp_path / "work", check=False).run()
    assert not report.ok
    assert report.results[0].problem == ('make built fleetmon_jiffies.ko, which dkms.conf does not name '
                                         '(add BUILT_MODULE_NAME[1]="fleetmon_jiffies")')
