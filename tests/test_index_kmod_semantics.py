"""Where kmod's tools and kmodkit must agree on odd trees: small module trees made in the tests.

Each tree is made of minimal modules written by tests/elfwriter.py (a
``.modinfo`` and a symbol table, enough for depmod and modprobe), and the
real ``depmod`` / ``modprobe`` of Debian 12 (kmod 30) run on the same tree
as the oracle.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from elfwriter import Sec, build, simple_module

KMODKIT = [sys.executable, "-m", "kmodkit"]
KVER = "6.1.0-kmodkit-test"


def make_module(moddir: Path, name: str, *modinfo: tuple[str, bytes], needs: tuple[str, ...] = (),
                exports: tuple[str, ...] = (), filename: str | None = None) -> Path:
    """``moddir/kernel/NAME.ko``: a module made in the test with ``modinfo`` pairs, needing and exporting symbols."""
    info = b"".join(k.encode() + b"=" + v + b"\0" for k, v in
                    (("license", b"GPL"), ("name", name.encode()), *modinfo, ("vermagic", KVER.encode() + b" SMP")))
    spec = simple_module(info, symbols=[(s, 0) for s in needs] + [(s, 1) for s in exports] or None)
    if exports:
        spec.sections.append(Sec("__ksymtab_strings", b"".join(s.encode() + b"\0" for s in exports)))
    path = moddir / "kernel" / (filename or f"{name}.ko")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build(spec))
    return path


def make_tree(root: Path, modules: dict[str, tuple[tuple[str, bytes], ...]]) -> Path:
    """``root/lib/modules/KVER`` with one made-in-test module per entry (name -> modinfo pairs)."""
    moddir = root / "lib" / "modules" / KVER
    for name, pairs in modules.items():
        make_module(moddir, name, *pairs)
    return moddir


def kmodkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(KMODKIT + list(args), capture_output=True, text=True)


def pem_key(path: Path) -> str:
    """A real private key written by openssl into ``path``; its base64 body, for checking it is never echoed."""
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                    str(path)], check=True, capture_output=True)
    return path.read_text().splitlines()[1]


# --- issue 10 item 10: key material given as a config file -------------------------------


def test_private_key_given_as_modprobe_d_file_is_named_once_and_never_echoed(tmp_path: Path) -> None:
    moddir = make_tree(tmp_path / "root", {"solo": ()})
    assert kmodkit("index", "-b", str(tmp_path / "root"), KVER).returncode == 0
    body = pem_key(tmp_path / "key.conf")
    proc = kmodkit("deps", "-C", str(tmp_path / "key.conf"), "-b", str(tmp_path / "root"), "-k", KVER,
                   "--no-cmdline", "solo")
    assert proc.returncode == 0
    assert proc.stdout == f"insmod {moddir}/kernel/solo.ko \n"
    assert proc.stderr.splitlines() == [
        f"warning: {tmp_path}/key.conf: looks like a PEM private key/certificate, not a modprobe.d file; "
        "file ignored"]
    assert body[:20] not in proc.stderr


def test_private_key_given_as_depmod_d_file_is_a_warning_not_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path / "root", {"solo": ()})
    body = pem_key(tmp_path / "key.conf")
    proc = kmodkit("index", "-C", str(tmp_path / "key.conf"), "-b", str(tmp_path / "root"), KVER)
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == [
        f"warning: {tmp_path}/key.conf: looks like a PEM private key/certificate, not a depmod.d file; "
        "file ignored"]
    assert body[:20] not in proc.stderr
