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


# --- issue 10 item 7: a non-ASCII alias or file name -------------------------------------


def test_non_ascii_alias_made_in_test_is_indexed_as_depmod_does_with_a_warning_naming_the_file(
        tmp_path: Path) -> None:
    tree = {"plain_mod": (("alias", b"plain-alias"),), "odd_mod": (("alias", "caf\u00e9".encode()),)}
    ref = make_tree(tmp_path / "ref", tree)
    mine = make_tree(tmp_path / "mine", tree)
    make_module(ref, "n\u00e4me", filename="n\u00e4me.ko")
    make_module(mine, "n\u00e4me", filename="n\u00e4me.ko")
    assert subprocess.run(["depmod", "-b", str(tmp_path / "ref"), KVER], capture_output=True).returncode == 0
    proc = kmodkit("index", "--kmod-compat", "30", "-b", str(tmp_path / "mine"), KVER)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stderr.splitlines()) == sorted([
        f"warning: {mine}/kernel/odd_mod.ko: alias 'caf\u00e9' is not 7-bit ASCII (kmod's index format); "
        "indexed as it is",
        f"warning: {mine}/kernel/n\u00e4me.ko: module file name is not 7-bit ASCII (kmod's index format); "
        "indexed as it is"])
    for name in ("modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin"):
        assert (mine / name).read_bytes() == (ref / name).read_bytes(), name
    found = kmodkit("deps", "--no-cmdline", "-C", str(tmp_path / "none"), "-b", str(tmp_path / "mine"), "-k", KVER,
                    "caf\u00e9")
    assert found.stdout == f"insmod {mine}/kernel/odd_mod.ko \n"


# --- issue 9: modprobe's answers where a name leads nowhere ------------------------------


def _modprobe(root: Path, conf: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["modprobe", "-C", str(conf), "-d", str(root), "-S", KVER, "--show-depends", name],
                          capture_output=True, text=True)


def _deps(root: Path, conf: Path, name: str) -> subprocess.CompletedProcess[str]:
    return kmodkit("deps", "--no-cmdline", "-C", str(conf), "-b", str(root), "-k", KVER, name)


def test_alias_to_a_module_that_does_not_exist_shows_nothing_and_succeeds_as_modprobe(tmp_path: Path) -> None:
    """The tree made in the test has no modules.builtin, so depmod writes the built-in indexes empty."""
    root = tmp_path / "root"
    make_tree(root, {"solo": ()})
    assert subprocess.run(["depmod", "-b", str(root), KVER], capture_output=True).returncode == 0
    conf = tmp_path / "ghost.conf"
    conf.write_text("alias ghost nothere\n")
    ref = _modprobe(root, conf, "ghost")
    mine = _deps(root, conf, "ghost")
    assert (ref.stdout, ref.returncode) == ("", 0)
    assert (mine.stdout, mine.returncode, mine.stderr) == ("", 0, "")


def test_missing_module_files_made_in_test_keep_modprobe_stdout_and_status(tmp_path: Path) -> None:
    root = tmp_path / "root"
    moddir = root / "lib" / "modules" / KVER
    make_module(moddir, "base", exports=("base_fn",))
    make_module(moddir, "user", needs=("base_fn",))
    make_module(moddir, "other", needs=("base_fn",))
    assert subprocess.run(["depmod", "-b", str(root), KVER], capture_output=True).returncode == 0
    assert (moddir / "modules.dep").read_text().count("kernel/base.ko") == 3
    (moddir / "kernel" / "user.ko").unlink()  # its own file missing: modprobe lists it all the same
    conf = tmp_path / "none"
    ref, mine = _modprobe(root, conf, "user"), _deps(root, conf, "user")
    assert ref.stdout == f"insmod {moddir}/kernel/base.ko \ninsmod {moddir}/kernel/user.ko \n"
    assert (mine.stdout, mine.returncode) == (ref.stdout, ref.returncode) == (ref.stdout, 0)
    assert mine.stderr == (f"warning: {moddir}/kernel/user.ko: listed in modules.dep but missing; "
                           "reinstall the module or rerun kmodkit index\n")
    (moddir / "kernel" / "base.ko").unlink()  # a dependency missing: libkmod drops the module's dependencies
    ref, mine = _modprobe(root, conf, "other"), _deps(root, conf, "other")
    assert ref.stdout == f"insmod {moddir}/kernel/other.ko \n"
    assert (mine.stdout, mine.returncode) == (ref.stdout, ref.returncode) == (ref.stdout, 0)
    assert f"warning: {moddir}/kernel/base.ko: listed in modules.dep but missing" in mine.stderr


# --- issue 9: dependency cycles, reported as depmod reports them ---------------------------


def test_cycles_sharing_a_module_made_in_test_are_all_reported_as_depmod_does(tmp_path: Path) -> None:
    root = tmp_path / "root"
    moddir = root / "lib" / "modules" / KVER
    make_module(moddir, "cy_a", needs=("cy_b_fn",), exports=("cy_a_fn",))
    make_module(moddir, "cy_b", needs=("cy_a_fn", "cy_c_fn"), exports=("cy_b_fn",))  # in both loops
    make_module(moddir, "cy_c", needs=("cy_b_fn",), exports=("cy_c_fn",))
    make_module(moddir, "cy_d", needs=("cy_a_fn",))  # uses a loop, is not in one
    make_module(moddir, "cy_e", exports=("cy_e_fn",))
    ref = subprocess.run(["depmod", "-b", str(root), KVER], capture_output=True, text=True)
    ref_lines = [line.removeprefix("depmod: ERROR: ") for line in ref.stderr.splitlines() if "ERROR" in line]
    assert ref_lines[-1] == "Found 3 modules in dependency cycles!" and len(ref_lines) == 3
    proc = kmodkit("index", "-b", str(root), KVER)
    assert proc.returncode == ref.returncode == 1
    assert proc.stderr.splitlines() == [f"error: {line}" for line in ref_lines]
    assert not (moddir / "modules.dep").exists()


def test_softdep_loop_in_deps_tree_made_in_test_is_a_warning_when_the_exit_is_0(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root, {"loop_a": (), "loop_b": ()})
    assert kmodkit("index", "-b", str(root), KVER).returncode == 0
    conf = tmp_path / "loop.conf"
    conf.write_text("softdep loop_a pre: loop_b\nsoftdep loop_b post: loop_a\n")
    proc = kmodkit("deps", "--tree", "--no-cmdline", "-C", str(conf), "-b", str(root), "-k", KVER, "loop_a")
    assert proc.returncode == 0 and proc.stdout == "loop_a\n"
    assert proc.stderr == "warning: loop_a: cycle: loop_a -> loop_b -> loop_a\n"
