"""The doctor over fake roots (tests/fixtures/roots: each directory's ABOUT says what machine it stands for)
and over this machine for real."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need

from kmodkit.cli.main import main
from kmodkit.errors import UserError
from kmodkit.kbuild import kernels as kern
from kmodkit.kbuild import platform
from kmodkit.kbuild.doctor import Archive, Doctor, Status
from kmodkit.runtime.modules import KernelModules
from kmodkit.sysroot import Root

ROOTS = Path(__file__).parent / "fixtures" / "roots"

# root -> (family, cloud, ready, fixes that must be offered)
CASES = {
    "debian12-ec2": ("debian", "aws", False, ["apt-get install gcc-14"]),
    "ubuntu2204-gce": ("ubuntu", "gce", False, ["apt-get install linux-headers-5.15.0-1049-gcp"]),
    "rocky9-azure": ("rhel", "azure", True, ["dnf install kmod"]),
    "amzn2-ec2-xen": ("amzn", "aws", False, [
        "yum install make",
        "yum install kernel-devel-5.10.205-195.807.amzn2.x86_64 kernel-headers-5.10.205-195.807.amzn2.x86_64"]),
    "alinux3-ecs": ("alinux", "alibaba", False, [
        "dnf install kernel-devel-5.10.134-16.1.al8.x86_64 kernel-headers-5.10.134-16.1.al8.x86_64"]),
    "fedora40-kvm": ("fedora", None, True, ["dnf install dwarves"]),
    "opensuse-leap15-nodmi": ("suse", None, False, ["zypper install kernel-devel kernel-default-devel"]),
}


def test_every_fixture_root_is_covered_and_says_what_it_stands_for() -> None:
    roots = {p.name for p in ROOTS.iterdir() if p.is_dir()}
    assert roots == set(CASES)
    for name in roots:
        assert (ROOTS / name / "ABOUT").read_text().startswith("Stands for: ")


@pytest.mark.parametrize("name", sorted(CASES))
def test_family_cloud_readiness_and_fixes(name: str) -> None:
    family, cloud, ready, fixes = CASES[name]
    report = Doctor(root=ROOTS / name).run()
    assert report.platform.distro.family is not None
    assert report.platform.distro.family.key == family
    assert (report.platform.cloud.key if report.platform.cloud else None) == cloud
    assert report.ready is ready
    offered = [f.fix for f in report.findings if f.fix]
    for fix in fixes:
        assert fix in offered, (fix, offered)
    # every blocking finding says how to fix it
    assert all(f.fix for f in report.findings if f.status is Status.FAIL)


def test_compiler_of_another_major_blocks_only_that_kernel() -> None:
    report = Doctor(root=ROOTS / "debian12-ec2").run()
    by = {k.kernel.release: k for k in report.kernels}
    assert by["6.1.0-18-cloud-amd64"].ready
    assert by["6.1.0-18-cloud-amd64"].compiler is not None
    assert by["6.1.0-18-cloud-amd64"].compiler.program == "gcc-12"
    assert by["6.1.0-18-cloud-amd64"].compiler.match is kern.CompilerMatch.EXACT
    assert not by["6.12.9+bpo-cloud-amd64"].ready
    assert by["6.12.9+bpo-cloud-amd64"].compiler is not None
    assert by["6.12.9+bpo-cloud-amd64"].compiler.match is kern.CompilerMatch.MISSING


def test_secure_boot_lockdown_and_enforced_signing_are_warned() -> None:
    report = Doctor(root=ROOTS / "rocky9-azure").run()
    checks = {f.check: f for f in report.findings if not f.subject or f.check in ("signing",)}
    assert checks["secure-boot"].status is Status.WARN and "enabled" in checks["secure-boot"].message
    assert checks["lockdown"].status is Status.WARN and "integrity" in checks["lockdown"].message
    assert checks["sig-enforce"].status is Status.WARN
    assert "enforced" in checks["signing"].message


def test_no_dmi_means_no_cloud_detected() -> None:
    report = Doctor(root=ROOTS / "opensuse-leap15-nodmi").run()
    cloud = next(f for f in report.findings if f.check == "cloud")
    assert cloud.message == "no cloud detected (no DMI)"


def test_requested_kernel_not_installed_is_named_with_its_fix() -> None:
    report = Doctor(root=ROOTS / "debian12-ec2", kernels=["6.1.0-99-cloud-amd64"]).run()
    assert not report.ready
    fail = next(f for f in report.findings if f.status is Status.FAIL)
    assert "not installed" in fail.message
    assert fail.fix == "apt-get install linux-headers-6.1.0-99-cloud-amd64"


def test_root_that_is_not_a_directory_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        Doctor(root=tmp_path / "absent")


@pytest.mark.parametrize("family", platform.families(), ids=lambda f: f.key)
def test_each_distro_table_entry_matches_its_own_example(family: platform.Family) -> None:
    fields = dict(w.split("=", 1) for w in shlex.split(family.example.split("  (")[0]))
    assert platform.match_family(fields) == family


@pytest.mark.parametrize("cloud", platform.clouds(), ids=lambda c: c.key)
def test_each_cloud_table_entry_matches_its_own_example(cloud: platform.Cloud) -> None:
    first = cloud.example.split(";")[0]
    fields = dict(w.split("=", 1) for w in shlex.split(first.split(" (")[0]))
    assert platform.match_cloud(fields) == cloud


def test_os_release_parsing_strips_quotes_and_comments() -> None:
    rel = platform.parse_os_release('# comment\nID="rocky"\nID_LIKE="rhel centos fedora"\nBAD LINE\nVERSION_ID=9.3\n')
    assert rel == {"ID": "rocky", "ID_LIKE": "rhel centos fedora", "VERSION_ID": "9.3"}


def test_config_parsers_agree_on_a_real_kernel(kernel_trees: list) -> None:
    tree = next((t for t in kernel_trees if t.headers), None)
    if tree is None:
        need("no headers")
    config = kern.parse_config((tree.headers / ".config").read_text())
    auto = kern.parse_config((tree.headers / "include/config/auto.conf").read_text())
    header = kern.parse_autoconf((tree.headers / "include/generated/autoconf.h").read_text())
    for key in ("CONFIG_CC_VERSION_TEXT", "CONFIG_MODULE_SIG", "CONFIG_MODULE_SIG_HASH", "CONFIG_MODVERSIONS"):
        assert config[key] == auto[key] == header[key], key


@pytest.mark.parametrize("text,program,major", [
    ("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0", "gcc-12", 12),
    ("x86_64-linux-gnu-gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0", "x86_64-linux-gnu-gcc-12", 12),
    ("gcc (GCC) 11.4.1 20230605 (Red Hat 11.4.1-2)", "gcc", 11),
    ("Debian clang version 16.0.6 (15~deb12u1)", "", 16),
])
def test_compiler_version_texts(text: str, program: str, major: int) -> None:
    cid = kern.CompilerId.parse(text)
    assert (cid.program, cid.major) == (program, major)


# --- this machine, for real ---------------------------------------------------------------


def test_real_machine_compilers_match_each_kernels_config(kernel_trees: list) -> None:
    report = Doctor(probe_archive=False).run()
    releases = {k.kernel.release for k in report.kernels}
    assert {t.release for t in kernel_trees} <= releases
    for k in report.kernels:
        if not k.kernel.headers_complete:
            continue
        assert k.compiler is not None and k.compiler.found is not None
        # the oracle: the compiler named in the headers' own .config, run for its version
        text = kern.parse_config((k.kernel.headers / ".config").read_text())["CONFIG_CC_VERSION_TEXT"]
        out = subprocess.run([k.compiler.program, "--version"], capture_output=True, text=True, check=True)
        assert out.stdout.splitlines()[0].split()[-1] == text.split()[-1]


def test_real_machine_without_module_support_says_so(kernel_trees: list) -> None:
    report = Doctor(probe_archive=False).run()
    running = next(f for f in report.findings if f.check == "running-kernel")
    if Path("/proc/modules").exists():
        assert report.module_support
    else:
        assert not report.module_support
        assert "no module support" in running.message
        assert report.ready  # the installed kernels are still build targets


def test_running_kernel_headers_gone_from_the_archive() -> None:
    if Path("/proc/modules").exists() or not Path("/usr/bin/apt-cache").exists():
        pytest.skip("only meaningful where the running kernel is not a distro kernel")
    import os

    release = os.uname().release
    report = Doctor(kernels=[release]).run()
    assert report.kernels[0].archive is Archive.GONE
    fail = next(f for f in report.findings if f.status is Status.FAIL)
    assert "not in the archive" in fail.message and "apt-get install linux-image-" in (fail.fix or "")


def test_cli_json_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--root", str(ROOTS / "fedora40-kvm"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["distro"]["family"] == "fedora" and doc["cloud"] is None and doc["ready"] is True
    assert doc["kernels"][0]["compiler"]["match"] == "exact"
    assert main(["doctor", "--root", str(ROOTS / "ubuntu2204-gce")]) == 1
    out = capsys.readouterr().out
    assert "fix: apt-get install linux-headers-5.15.0-1049-gcp" in out
    assert "not ready" in out.splitlines()[-1]


def test_cli_bad_root_is_one_error_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "kmodkit", "doctor", "--root", "/nonexistent/root"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: /nonexistent/root: is not a directory")
    assert "Traceback" not in proc.stderr


# --- one way to point at another machine -------------------------------------------------


def test_one_root_serves_doctor_kernels_platform_and_runtime(tmp_path: Path) -> None:
    """A fake root standing for a Debian guest with hello loaded, sig_enforce on and a kernel whose build link is
    absolute (a path of that machine): doctor, kernels, platform and runtime all read it through one Root."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12"\n')
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/modules").write_text("hello 16384 0 - Live 0x0000000000000000 (OE)\n")
    (tmp_path / "proc/sys/kernel/osrelease").write_text("6.1.0-9-amd64\n")
    (tmp_path / "sys/module/module/parameters").mkdir(parents=True)
    (tmp_path / "sys/module/module/parameters/sig_enforce").write_text("Y\n")
    (tmp_path / "sys/module/hello").mkdir(parents=True)
    headers = tmp_path / "usr/src/linux-headers-6.1.0-9-amd64"
    headers.mkdir(parents=True)
    (tmp_path / "lib/modules/6.1.0-9-amd64").mkdir(parents=True)
    (tmp_path / "lib/modules/6.1.0-9-amd64/build").symlink_to("/usr/src/linux-headers-6.1.0-9-amd64")
    root = Root(tmp_path)

    assert kern.kernel("6.1.0-9-amd64", root).headers == headers  # the absolute link, re-rooted
    assert platform.detect(root).distro.family is not None
    assert [m.name for m in KernelModules.of(root).status()] == ["hello"]
    report = Doctor(root=root, probe_archive=False).run()
    assert report.running == "6.1.0-9-amd64" and report.module_support
    assert next(f for f in report.findings if f.check == "sig-enforce").status is Status.WARN
    assert root.join("/../../etc/os-release") == tmp_path / "etc/os-release"  # never above the root
