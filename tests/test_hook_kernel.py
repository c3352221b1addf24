"""The kernel-upgrade hook (issue 12), end to end as a kernel package runs it: ``run-parts --arg=KVER
--arg=IMAGE ROOT/etc/kernel/postinst.d`` (Debian's linux-image postinst does exactly that) with KMODKIT_ROOT
naming a throwaway root.  The root holds copies (hard links) of two installed kernels' module trees, their
headers (links to the real ones) and this machine's /usr; "installing" the second kernel is copying its tree
in, as dpkg would unpack it.  Oracles: run-parts, kmod's modinfo (the signature) and modprobe -d (the index).

A real package would prove more (dpkg's own run of the hook, the removal of its files): that needs a Debian
root (debootstrap) with kmodkit installed in it and a kernel package that is not installed here, downloaded
(apt-get download linux-image-X linux-headers-X), then dpkg -i / dpkg -r inside a chroot; several hundred
MB and network, too heavy for this suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

PROJECTS = Path(__file__).parent / "data" / "projects"


def copy_tree(src: Path, dest: Path) -> None:
    """A copy of a kernel's module tree: hard links where the file system allows, else a plain copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["cp", "-al", str(src), str(dest)], capture_output=True).returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(src, dest, symlinks=True)


def _add_kernel(root: Path, release: str) -> None:
    """Put kernel ``release`` into ``root`` as its package would: the module tree, the headers it links to."""
    copy_tree(Path("/lib/modules") / release, root / "lib" / "modules" / release)
    headers = Path(os.readlink(f"/lib/modules/{release}/build"))
    if headers.is_absolute():
        (root / headers.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
        if not (root / headers.relative_to("/")).exists():
            (root / headers.relative_to("/")).symlink_to(headers)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True)


def _run_parts(root: Path, hook: str, release: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KMODKIT_ROOT=str(root))
    return subprocess.run(["run-parts", f"--arg={release}", f"--arg=/boot/vmlinuz-{release}",
                           str(root / "etc" / "kernel" / hook)], capture_output=True, text=True, env=env)


@pytest.fixture()
def machine(tmp_path: Path, kernel_trees: list) -> tuple[Path, Path, str, str]:
    """A root with an old kernel, core (signed) and probe installed for it; the new kernel not yet there."""
    if not shutil.which("run-parts"):
        need("run-parts is not installed")
    cloud = [t.release for t in kernel_trees if t.headers and t.series == "6.1" and t.flavour == "cloud-amd64"]
    if len(cloud) < 2:
        need("needs two 6.1 cloud kernels with headers")
    new, old = cloud[0], cloud[1]
    base = tmp_path / "projects"
    for name in ("core", "probe"):
        shutil.copytree(PROJECTS / name, base / name)
    keys = base / "core" / "keys"
    keys.mkdir()
    subprocess.run(["openssl", "req", "-new", "-nodes", "-utf8", "-sha256", "-days", "30", "-batch", "-x509",
                    "-subj", "/CN=kmodkit hook test", "-newkey", "rsa:2048", "-keyout", str(keys / "signing.pem"),
                    "-outform", "PEM", "-out", str(keys / "signing.crt")], check=True, capture_output=True)
    with open(base / "core" / "kmodkit.toml", "a") as f:
        f.write('\n[signing]\nkey = "keys/signing.pem"\ncert = "keys/signing.crt"\n')
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    shutil.copy("/etc/os-release", root / "etc" / "os-release")
    (root / "usr").mkdir()
    for d in ("bin", "lib", "libexec", "include", "share"):
        if Path("/usr", d).exists():
            (root / "usr" / d).symlink_to(f"/usr/{d}")
    _add_kernel(root, old)
    for name in ("core", "probe"):
        proc = _cli("build", str(base / name), "-k", old)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = _cli("install", str(base / name), "--root", str(root))
        assert proc.returncode == 0, proc.stderr
    return root, base, old, new


def test_a_newly_installed_kernel_gets_the_registered_projects_built_signed_installed(
        machine: tuple[Path, Path, str, str]) -> None:
    root, base, old, new = machine
    proc = _cli("hook", "install", "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    for hook in ("postinst.d", "header_postinst.d", "prerm.d"):
        script = root / "etc" / "kernel" / hook / "kmodkit"
        assert os.access(script, os.X_OK)
        subprocess.run(["sh", "-n", str(script)], check=True)
    _add_kernel(root, new)  # the package unpacks the new kernel, then runs the hook
    ran = _run_parts(root, "postinst.d", new)
    assert ran.returncode == 0 and ran.stderr == "", ran.stderr
    moddir = root / "lib" / "modules" / new
    core = moddir / "updates" / "fleetmon" / "fleetmon.ko"
    assert subprocess.run(["modinfo", "-F", "signer", str(core)], capture_output=True, text=True,
                          check=True).stdout.strip() == "kmodkit hook test"
    assert subprocess.run(["modinfo", "-F", "vermagic", str(core)], capture_output=True, text=True,
                          check=True).stdout.split()[0] == new
    deps = subprocess.run(["modprobe", "-d", str(root), "-S", new, "--show-depends", "fleetmon_probe"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert deps == [f"insmod {core} ", f"insmod {moddir}/updates/fleetmon_probe.ko "]
    log = (root / "var" / "log" / "kmodkit" / "hook.log").read_text()
    assert f"postinst.d/kmodkit {new}" in log and f"{base / 'probe'}: built" in log
    # the kernel package is being removed: prerm.d takes out what kmodkit put in, the old kernel keeps its modules
    ran = _run_parts(root, "prerm.d", new)
    assert ran.returncode == 0 and ran.stderr == "", ran.stderr
    assert not (moddir / "updates").exists()
    state = json.loads((root / "var" / "lib" / "kmodkit" / "installed.json").read_text())
    assert {k for e in state["projects"].values() for k in e["kernels"]} == {old}
    assert (root / "lib" / "modules" / old / "updates" / "fleetmon_probe.ko").is_file()


def test_a_failing_build_is_logged_and_never_fails_the_package(machine: tuple[Path, Path, str, str]) -> None:
    root, _, _, _ = machine
    assert _cli("hook", "install", "--root", str(root)).returncode == 0
    broken = "6.0.0-0-noheaders-amd64"
    (root / "lib" / "modules" / broken).mkdir()
    ran = _run_parts(root, "postinst.d", broken)
    log = root / "var" / "log" / "kmodkit" / "hook.log"
    assert ran.returncode == 0
    assert ran.stderr == f"kmodkit: building registered modules for {broken} failed; see {root}{'/var/log/kmodkit/hook.log'}\n"
    assert f"build blocked: no headers for {broken}" in log.read_text()
    assert _cli("hook", "remove", "--root", str(root)).returncode == 0
    assert not (root / "etc" / "kernel" / "postinst.d" / "kmodkit").exists()


def test_hook_install_writes_dkms_three_scripts_and_drops_an_earlier_postrm_one(tmp_path: Path) -> None:
    # an earlier kmodkit's postrm.d script (it ran once dpkg had deleted the tree), made here as it wrote it
    legacy = tmp_path / "etc" / "kernel" / "postrm.d" / "kmodkit"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("#!/bin/sh\n# Written by 'kmodkit hook install'; 'kmodkit hook remove' removes it.\n")
    others = tmp_path / "etc" / "kernel" / "postrm.d" / "initramfs-tools"
    others.write_text("#!/bin/sh\n")
    proc = _cli("hook", "install", "--root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("etc/kernel/*/*")) == [
        "etc/kernel/header_postinst.d/kmodkit", "etc/kernel/postinst.d/kmodkit",
        "etc/kernel/postrm.d/initramfs-tools", "etc/kernel/prerm.d/kmodkit"]
    assert "hook run \"$version\" --removed" in (tmp_path / "etc" / "kernel" / "prerm.d" / "kmodkit").read_text()
