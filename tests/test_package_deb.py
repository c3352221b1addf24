"""``kmodkit package deb`` (issue 15, item 4): the example and the fleetmon core built for real Debian kernels,
packaged, judged by Debian's own tools.

Oracles: ``lintian`` (no error; the warnings it may give are listed in ACCEPTED with why); ``dpkg --root``
installing into a throwaway root (a hard-linked copy of the kernel's tree, and a dpkg database holding the
host's real status entries of the kernel's image package and kmod, so the package's Depends are met as on a
machine), with the maintainer scripts run outside a chroot (``--force-script-chrootless``, which hands them
$DPKG_ROOT); kmod's ``depmod`` (run by postinst), ``modinfo -b`` and ``modprobe -d`` reading that root; and in a
booted kernel, dpkg installing the package into the guest's own module tree and ``modprobe`` loading it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree, discover_trees, need

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

EXAMPLE = Path(__file__).parent.parent / "example" / "hello"
PROJECTS = Path(__file__).parent / "data" / "projects"

#: lintian warnings a package of ours may carry, and why they are right for it
ACCEPTED = {
    # the changelog is the package's own, not an upload to Debian's archive: there is no bug to close
    "initial-upload-closes-no-bugs",
}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True, cwd=cwd)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        need(name)
    assert path is not None
    return path


def _need_root() -> None:
    if os.geteuid() != 0:
        need("root (dpkg --root installs as root)")


def _build(project: Path, *kernels: str) -> None:
    args = [a for k in kernels for a in ("-k", k)]
    done = _cli("build", str(project), *args, "--workdir", str(project.parent / "work"))
    assert done.returncode == 0, done.stdout + done.stderr


def _generic() -> KernelTree:
    tree = next((t for t in discover_trees() if t.flavour == "amd64" and t.headers and t.vmlinuz), None)
    if tree is None:
        need("a Debian generic amd64 kernel with its headers")
    assert tree is not None
    return tree


def _cloud() -> KernelTree:
    tree = next((t for t in discover_trees() if t.flavour == "cloud-amd64" and t.headers), None)
    if tree is None:
        need("a Debian cloud-amd64 kernel with its headers")
    assert tree is not None
    return tree


def _sign_with_new_key(project: Path) -> None:
    """Give the project a key of its own (openssl) in its manifest's [signing] table."""
    keys = project / "keys"
    keys.mkdir()
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "30", "-batch", "-x509",
                    "-subj", "/CN=kmodkit package test", "-newkey", "rsa:2048", "-keyout", str(keys / "signing.pem"),
                    "-outform", "PEM", "-out", str(keys / "signing.crt")], check=True, capture_output=True)
    manifest = project / "kmodkit.toml"
    text = manifest.read_text()
    if re.search(r'^key = ""$', text, re.M):  # the example's [signing] table, empty
        text = re.sub(r'^key = ""$', 'key = "keys/signing.pem"', text, flags=re.M)
        text = re.sub(r'^cert = ""$', 'cert = "keys/signing.crt"', text, flags=re.M)
    else:
        text += '\n[signing]\nkey = "keys/signing.pem"\ncert = "keys/signing.crt"\n'
    manifest.write_text(text)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The example built for the generic and a cloud kernel (unsigned), and the core built (and signed by the
    build) for the generic kernel; then the example's manifest names a key too, so packaging must sign."""
    _tool("dpkg-deb")
    generic, cloud = _generic(), _cloud()
    base = tmp_path_factory.mktemp("deb")
    hello, core = base / "hello", base / "core"
    shutil.copytree(EXAMPLE, hello, ignore=shutil.ignore_patterns("out"))
    shutil.copytree(PROJECTS / "core", core)
    _sign_with_new_key(core)
    _build(hello, generic.release, cloud.release)
    _build(core, generic.release)
    _sign_with_new_key(hello)
    return {"base": base, "hello": hello, "core": core, "generic": generic.release, "cloud": cloud.release}


def _package(project: Path, out: Path, *args: str) -> list[dict[str, object]]:
    done = _cli("package", "deb", str(project), "--out", str(out), "--json", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    packages: list[dict[str, object]] = json.loads(done.stdout)["packages"]
    assert all(p["ok"] for p in packages) and all(Path(str(p["path"])).is_file() for p in packages)
    return packages


@pytest.fixture(scope="module")
def debs(built: dict[str, object]) -> dict[str, list[dict[str, object]]]:
    out = Path(str(built["base"])) / "debs"
    return {"hello": _package(Path(str(built["hello"])), out, "-k", str(built["generic"])),
            "core": _package(Path(str(built["core"])), out),
            "one": _package(Path(str(built["hello"])), out / "one", "--one")}


def _root(tmp: Path, kver: str) -> Path:
    """A throwaway machine: the kernel's module tree (hard links; depmod replaces files by rename, never writes
    into them) and a dpkg database holding the host's real entries of the kernel's image package and kmod."""
    root = tmp / "root"
    (root / "lib" / "modules").mkdir(parents=True)
    subprocess.run(["cp", "-al", f"/lib/modules/{kver}", str(root / "lib" / "modules" / kver)], check=True)
    admin = root / "var" / "lib" / "dpkg"
    for d in ("info", "updates", "triggers"):
        (admin / d).mkdir(parents=True)
    (root / "var" / "log").mkdir(parents=True)
    stanzas = []
    for pkg in (f"linux-image-{kver}", "kmod"):
        done = subprocess.run(["dpkg-query", "-s", pkg], capture_output=True, text=True)
        if done.returncode != 0:
            need(f"the Debian package {pkg}")
        stanzas.append(done.stdout.strip() + "\n")
        shutil.copy(f"/var/lib/dpkg/info/{pkg}.list", admin / "info")
    (admin / "status").write_text("\n".join(stanzas))
    (admin / "available").touch()
    return root


def _dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([_tool("dpkg"), f"--root={root}", "--force-script-chrootless", *args],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _tree(root: Path) -> dict[str, bytes]:
    """Every file of the root but dpkg's own database and log, with its content."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith("var/")}


def test_lintian_finds_no_error(debs: dict[str, list[dict[str, object]]]) -> None:
    paths = [str(p["path"]) for group in debs.values() for p in group]
    assert len(paths) == 4  # hello for one kernel, core's common and kernel packages, hello --one
    done = subprocess.run([_tool("lintian"), "--pedantic", "--display-info", *paths], capture_output=True, text=True)
    tags = [line for line in done.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
    assert not [t for t in tags if t.startswith("E: ")], tags
    assert {t.split()[2] for t in tags} <= ACCEPTED, tags


def test_package_contents_fields_and_signatures(built: dict[str, object],
                                                debs: dict[str, list[dict[str, object]]]) -> None:
    generic, cloud = str(built["generic"]), str(built["cloud"])

    def field(deb: object, name: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                              check=True).stdout.strip()

    hello = debs["hello"][0]
    assert hello["package"] == f"hello-modules-{generic}" and Path(str(hello["path"])).name == \
        f"hello-modules-{generic}_0.1.0-1_amd64.deb"
    assert field(hello["path"], "Depends") == f"kmod, linux-image-{generic} | linux-image-{generic}-unsigned"
    assert hello["files"] == [f"/lib/modules/{generic}/updates/hello.ko"]
    common, kernel = debs["core"]
    assert common["package"] == "fleetmon-modules-common" and field(common["path"], "Architecture") == "all"
    assert common["files"] == ["/etc/modprobe.d/kmodkit-fleetmon.conf", "/etc/modules-load.d/kmodkit-fleetmon.conf"]
    assert field(kernel["path"], "Depends") == (f"kmod, linux-image-{generic} | linux-image-{generic}-unsigned, "
                                                "fleetmon-modules-common (= 1.0.0-1)")
    control = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(common["path"])], capture_output=True, check=True)
    assert b"./conffiles" in subprocess.run(["tar", "t"], input=control.stdout, capture_output=True).stdout
    one = debs["one"][0]
    assert one["package"] == "hello-modules" and sorted(one["kernels"]) == sorted([generic, cloud])  # type: ignore
    assert field(one["path"], "Depends") == ("kmod, " + " | ".join(
        f"linux-image-{k} | linux-image-{k}-unsigned" for k in one["kernels"]))  # type: ignore[attr-defined]
    # every module shipped is signed: core's by its build, hello's (built before its key was named) by packaging
    for deb, name in ((hello["path"], "hello"), (kernel["path"], "fleetmon"), (one["path"], "hello")):
        x = Path(str(built["base"])) / "x" / Path(str(deb)).name
        x.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(x)], check=True)
        for ko in x.rglob(f"{name}.ko"):
            signer = subprocess.run(["modinfo", "-F", "signer", str(ko)], capture_output=True, text=True).stdout
            assert signer.strip() == "kmodkit package test", ko
    assert subprocess.run(["modinfo", "-F", "signer", str(Path(str(built["hello"])) / "out" / generic / "hello.ko")],
                          capture_output=True, text=True).stdout.strip() == ""  # the build itself is left as it was
    # packaging again gives the same bytes (one timestamp, deterministic signatures, dpkg-deb's SOURCE_DATE_EPOCH)
    again = _package(Path(str(built["hello"])), Path(str(built["base"])) / "again", "-k", generic)[0]
    assert Path(str(again["path"])).read_bytes() == Path(str(hello["path"])).read_bytes()


def test_dpkg_installs_indexes_and_purges_cleanly_in_a_throwaway_root(
        built: dict[str, object], debs: dict[str, list[dict[str, object]]], tmp_path: Path) -> None:
    _need_root()
    kver = str(built["generic"])
    root = _root(tmp_path, kver)
    moddir = root / "lib" / "modules" / kver
    before = _tree(root)
    _dpkg(root, "-i", str(debs["hello"][0]["path"]))
    # postinst ran depmod on the root: the index lists the module, and kmod's modinfo finds it by name
    assert "updates/hello.ko:\n" in (moddir / "modules.dep").read_text()
    found = subprocess.run(["modinfo", "-b", str(root), "-k", kver, "-n", "hello"], capture_output=True, text=True)
    assert found.stdout.strip() == f"{moddir}/updates/hello.ko", found.stderr
    # kmodkit's index of the root says what depmod said
    ours = _cli("index", "-n", "-b", str(root), kver)
    assert ours.returncode == 0 and ours.stdout == (moddir / "modules.dep").read_text()
    plan = _cli("deps", "-b", str(root), "-k", kver, "--show-depends", "hello")
    assert plan.stdout == f"insmod {moddir}/updates/hello.ko \n", plan.stderr
    _dpkg(root, "--purge", f"hello-modules-{kver}")
    after = _tree(root)
    assert after.keys() == before.keys()  # no updates/, no /usr/share/doc of it, nothing else left
    assert after[f"lib/modules/{kver}/modules.dep"] == before[f"lib/modules/{kver}/modules.dep"]
    assert after[f"lib/modules/{kver}/modules.alias.bin"] == before[f"lib/modules/{kver}/modules.alias.bin"]
    status = (root / "var/lib/dpkg/status").read_text()
    assert "hello-modules" not in status


def test_the_core_project_with_its_common_package_installs_and_purges(
        built: dict[str, object], debs: dict[str, list[dict[str, object]]], tmp_path: Path) -> None:
    _need_root()
    kver = str(built["generic"])
    root = _root(tmp_path, kver)
    common, kernel = (str(p["path"]) for p in debs["core"])
    before = _tree(root)
    _dpkg(root, "-i", common, kernel)
    moddir = root / "lib" / "modules" / kver
    # modprobe reads the root's modprobe.d (where the common package put the options) only when told
    deps = subprocess.run(["modprobe", "-d", str(root), "-S", kver, "-C", str(root / "etc/modprobe.d"),
                           "--show-depends", "fleetmon_jiffies"], capture_output=True, text=True)
    assert deps.stdout.splitlines() == [f"insmod {moddir}/updates/fleetmon/fleetmon.ko interval=10 ",
                                        f"insmod {moddir}/updates/fleetmon/fleetmon_jiffies.ko "], deps.stderr
    assert (root / "etc/modules-load.d/kmodkit-fleetmon.conf").read_text().splitlines()[1:] == ["fleetmon"]
    # removing keeps the conffiles, as dpkg does; purging removes them too
    _dpkg(root, "--remove", f"fleetmon-modules-{kver}", "fleetmon-modules-common")
    assert not (moddir / "updates").exists() and (root / "etc/modprobe.d/kmodkit-fleetmon.conf").is_file()
    _dpkg(root, "--purge", f"fleetmon-modules-{kver}", "fleetmon-modules-common")
    assert _tree(root).keys() == before.keys()


def test_one_package_for_two_kernels_reindexes_only_the_installed_one(
        built: dict[str, object], debs: dict[str, list[dict[str, object]]], tmp_path: Path) -> None:
    _need_root()
    generic, cloud = str(built["generic"]), str(built["cloud"])
    root = _root(tmp_path, generic)  # the cloud kernel is not installed here
    before = _tree(root)
    _dpkg(root, "-i", str(debs["one"][0]["path"]))  # Depends: met by the generic kernel's image alone
    assert "updates/hello.ko:\n" in (root / "lib/modules" / generic / "modules.dep").read_text()
    # the cloud kernel's modules were unpacked, but depmod was not run for a kernel that is not there
    assert [p.name for p in (root / "lib/modules" / cloud).iterdir()] == ["updates"]
    _dpkg(root, "--purge", "hello-modules")
    assert _tree(root).keys() == before.keys() and not (root / "lib/modules" / cloud).exists()


def test_a_kernel_without_a_build_is_one_error_line_with_the_fix(built: dict[str, object], tmp_path: Path) -> None:
    hello, kver = Path(str(built["hello"])), str(built["generic"])
    missing = "6.0.0-0-notbuilt-amd64"
    done = _cli("package", "deb", str(hello), "-k", missing, "-k", kver, "--out", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr == (f"error: {hello}/out/{missing}/hello.ko: is not built for {missing}; "
                           f"kmodkit build {hello} -k {missing}\n")
    assert [p.name for p in tmp_path.iterdir()] == [f"hello-modules-{kver}_0.1.0-1_amd64.deb"]  # the rest goes on
    # one package for every kernel is written whole or not at all
    done = _cli("package", "deb", str(hello), "-k", missing, "-k", kver, "--one", "--out", str(tmp_path / "one"))
    assert done.returncode == 2 and done.stderr.startswith(f"error: {hello}/out/{missing}/hello.ko: is not built")
    assert not any((tmp_path / "one").iterdir())


def test_what_cannot_name_a_package_is_one_error_line(tmp_path: Path) -> None:
    """No kernel needed: the manifest and the flags are refused before anything is built or written."""
    (tmp_path / "kmodkit.toml").write_text('[module]\nname = "x_y"\nversion = "v1.0"\n')
    done = _cli("package", "deb", str(tmp_path), "-k", "6.1.0-57-amd64")
    assert (done.returncode, done.stderr) == (2, f"error: {tmp_path}/kmodkit.toml: [module] version: 'v1.0' is not "
                                              "a Debian version; start it with a digit and use only letters, digits "
                                              "and . + ~ -\n")
    (tmp_path / "kmodkit.toml").write_text('[module]\nname = "x_y"\nversion = "1.0"\n')
    done = _cli("package", "deb", str(tmp_path))
    assert (done.returncode, done.stderr) == (2, f"error: {tmp_path}: is built for no kernel; run 'kmodkit build' "
                                              "first, or name kernels with -k\n")
    done = _cli("package", "deb", str(tmp_path), "-k", "6.1.0-57-amd64", "--maintainer", "bob")
    assert done.returncode == 2 and done.stderr.startswith("error: maintainer 'bob': is not 'Full Name <address>'")
    assert [p.name for p in tmp_path.iterdir()] == ["kmodkit.toml"]


def test_architecture_comes_from_the_modules_and_one_package_holds_one(tmp_path: Path) -> None:
    """No kernel needed: real Debian modules of other architectures (tests/data/modules) stand in as builds."""
    _tool("dpkg-deb")
    project = tmp_path / "dummy"
    project.mkdir()
    (project / "kmodkit.toml").write_text('[module]\nname = "dummy"\nversion = "1.0"\nlicense = "GPL"\n')
    modules = Path(__file__).parent / "data" / "modules"
    arches = {"6.1.0-0-arm64": "arm64", "6.1.0-0-armmp": "armhf", "6.1.0-0-s390x": "s390x", "6.1.0-0-686": "i386"}
    for kver, arch in zip(arches, ("arm64", "armhf", "s390x", "i386")):
        (project / "out" / kver).mkdir(parents=True)
        shutil.copy(modules / arch / "dummy.ko", project / "out" / kver / "dummy.ko")
    done = _cli("package", "deb", str(project), "--out", str(tmp_path / "debs"), "--json")
    assert done.returncode == 0, done.stderr
    for pkg in json.loads(done.stdout)["packages"]:
        (kver,) = pkg["kernels"]
        assert Path(pkg["path"]).name == f"dummy-modules-{kver}_1.0-1_{arches[kver]}.deb"
        arch = subprocess.run(["dpkg-deb", "-f", pkg["path"], "Architecture"], capture_output=True, text=True)
        assert arch.stdout.strip() == arches[kver]
    done = _cli("package", "deb", str(project), "--one", "-k", "6.1.0-0-arm64", "-k", "6.1.0-0-armmp",
                "--out", str(tmp_path / "one"))
    assert (done.returncode, done.stderr) == (2, f"error: {project}/out/6.1.0-0-armmp/dummy.ko: is built for armhf, "
                                              f"{project}/out/6.1.0-0-arm64/dummy.ko for arm64: one package holds one "
                                              "architecture; package each architecture's kernels on their own (-k)\n")
    assert not any((tmp_path / "one").iterdir())


@pytest.mark.vm
def test_dpkg_installs_it_in_a_booted_kernel_and_modprobe_loads_it(
        built: dict[str, object], debs: dict[str, list[dict[str, object]]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    _tool("qemu-system-x86_64")
    kver = str(built["generic"])
    base = tmp_path_factory.mktemp("debvm")  # under the host's /tmp, which the guest sees
    deb = base / Path(str(debs["hello"][0]["path"])).name
    shutil.copy(str(debs["hello"][0]["path"]), deb)
    script = base / "guest.sh"
    # the guest's /usr (so /lib/modules), dpkg's database and log are the host's, read-only: overlays with a
    # tmpfs upper layer make them writable inside, and dpkg installs into the guest's real module tree
    script.write_text(f"""
for d in /usr /var/lib/dpkg /var/log; do
    mkdir -p /run/ovl$d/u /run/ovl$d/w
    mount -t overlay overlay -o lowerdir=$d,upperdir=/run/ovl$d/u,workdir=/run/ovl$d/w $d || exit 10
done
dpkg -i {deb} || exit 11
echo "MODINFO $(modinfo -n hello)"
modprobe hello repeat=2 || exit 12
grep '^hello ' /proc/modules | sed 's/^/LOADED /'
modprobe -r hello || exit 13
dpkg --purge hello-modules-{kver} || exit 14
modinfo -n hello >/dev/null 2>&1 && exit 15
echo PACKAGE-VM-OK
""")
    done = subprocess.run([sys.executable, "-m", "kmodkit", "vm", "run", "-k", kver, "--runs-dir", str(base / "runs"),
                           "--timeout", "600", "--json", "--", "sh", str(script)], capture_output=True, text=True,
                          cwd="/")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PACKAGE-VM-OK" in done.stderr, done.stderr[-3000:]
    assert f"MODINFO /lib/modules/{kver}/updates/hello.ko" in done.stderr
    assert re.search(r"^LOADED hello \d+ 0 ", done.stderr, re.M), done.stderr[-3000:]
    log = Path(json.loads(done.stdout)["run_dir"], "kernel.log").read_text(errors="replace")
    # the parameter given to modprobe reached the module loaded from the package
    assert "hello from hello (2 of 2)" in log and "goodbye after" in log
