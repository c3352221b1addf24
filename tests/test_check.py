"""`kmodkit check` on the host: in-tree trees against their own and the other flavour, the kernel's ELF checks on
real modules with one header field changed in the test, and the CLI's seam (flags, JSON, exit status, errors).

The kernel's own judgement of the same cases is tests/test_check_vm.py.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KernelTree, discover_trees, need

pytestmark = [pytest.mark.kernel]


def _kmodkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True)


def _target(tree: KernelTree):  # type: ignore[no-untyped-def]
    from kmodkit.check.target import TargetKernel

    return TargetKernel.installed(tree.release)


@pytest.fixture(scope="module")
def new_tree() -> KernelTree:
    """A kernel with v6.11+'s ELF checks (6.12)."""
    for t in discover_trees():
        if t.series not in ("6.1", "") and t.headers is not None:
            return t
    need("a 6.12 kernel with headers")
    raise AssertionError("unreachable")


def test_vermagic_is_what_the_kernels_own_modules_carry(kernel_trees: list[KernelTree]) -> None:
    from kmodkit.modfile.module import ModuleFile

    for tree in kernel_trees:
        if tree.headers is None:
            continue
        with ModuleFile.open(tree.modules()[0]) as mod:
            assert _target(tree).vermagic == mod.vermagic, tree.release


def test_every_in_tree_module_loads_on_its_own_kernel(generic_tree: KernelTree) -> None:
    from kmodkit.check.checker import Checker

    checker = Checker(_target(generic_tree))
    refused = {}
    staging = 0
    for path in generic_tree.modules():
        p = checker.check(str(path))
        if not p.loads:
            refused[str(path)] = p.lines
        if p.taints:
            assert p.taints == "C" and "/staging/" in str(path), (path, p.taints)
            staging += 1
    assert refused == {}
    assert len(generic_tree.modules()) > 3000 and staging > 0


def test_the_other_flavours_modules_are_refused_with_the_module_layout_line(generic_tree: KernelTree,
                                                                            cloud_tree: KernelTree) -> None:
    from kmodkit.check.checker import Checker

    checker = Checker(_target(generic_tree))
    for path in cloud_tree.modules()[:200]:
        p = checker.check(str(path))
        assert not p.loads and p.refusal is not None and p.refusal.errno == 8
        assert [str(line) for line in p.lines] == [f"<4>{p.name}: disagrees about version of symbol module_layout"]
        assert p.refusal.fix is not None and f"kmodkit build -k {generic_tree.release}" in p.refusal.fix


def _unsigned(path: Path, tmp: Path) -> Path:
    from kmodkit.modfile.module import ModuleFile

    with ModuleFile.open(path) as mod:
        assert mod.trailer is not None
        body = bytes(mod.data[:mod.trailer.content_len])
    out = tmp / path.name
    out.write_bytes(body)
    return out


def _with(path: Path, tmp: Path, offset: int, fmt: str, value: int, name: str) -> Path:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    out = tmp / name
    out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize("offset,fmt,value,line", [
    (16, "<H", 2, "<3>Invalid ELF header type: 2 != 1"),
    (18, "<H", 3, "<3>Invalid architecture in ELF header: 3"),
    (58, "<H", 40, "<3>Invalid ELF section header size"),
    (0, "<I", 0x464c457e, "<3>Invalid ELF header magic: != \\x7fELF"),
])
def test_kernel_elf_checks_on_a_header_field_changed_in_test(sample_module: Path, generic_tree: KernelTree,
                                                             tmp_path: Path, offset: int, fmt: str, value: int,
                                                             line: str) -> None:
    from kmodkit.check.checker import Checker

    # an unsigned copy: a signed one would fail its signature first (the signature covers these bytes)
    bad = _with(_unsigned(sample_module, tmp_path), tmp_path, offset, fmt, value, "changed_made_in_test.ko")
    p = Checker(_target(generic_tree)).check(str(bad))
    assert p.refusal is not None and p.refusal.errno == 8 and p.refusal.check == "elf"
    assert [str(x) for x in p.lines] == [line]


def test_v611_refuses_a_6_1_module_for_struct_module_size(new_tree: KernelTree, generic_tree: KernelTree,
                                                           sample_module: Path) -> None:
    from kmodkit.check.checker import Checker

    target = _target(new_tree)
    assert target.new_elf_checks and target.struct_module_size and _target(generic_tree).struct_module_size
    assert target.struct_module_size != _target(generic_tree).struct_module_size
    p = Checker(target).check(str(sample_module))
    assert p.refusal is not None and p.refusal.check == "struct_module"
    assert [str(x) for x in p.lines] == [
        "<3>module af_key: .gnu.linkonce.this_module section size must match the kernel's built struct module size "
        "at run time"]


def test_cli_checks_every_pair_and_exits_1_when_any_is_refused(sample_module: Path, generic_tree: KernelTree,
                                                               cloud_tree: KernelTree) -> None:
    done = _kmodkit("check", str(sample_module), "-k", generic_tree.release, "-k", cloud_tree.release, "--json")
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert [(d["kernel"], d["outcome"]) for d in doc] == [(generic_tree.release, "loads"),
                                                         (cloud_tree.release, "refused")]
    assert doc[0]["needs"] == ["xfrm_algo"]  # af_key's symbols come from xfrm_algo, loaded first
    assert doc[1]["refusal"]["errno_name"] == "ENOEXEC"
    alone = _kmodkit("check", str(sample_module), "-k", generic_tree.release)
    assert alone.returncode == 0 and "loads" in alone.stdout and alone.stderr == ""


def test_cli_enforcement_and_lockdown_flags(sample_module: Path, generic_tree: KernelTree, tmp_path: Path) -> None:
    unsigned = _unsigned(sample_module, tmp_path)
    enforced = _kmodkit("check", str(unsigned), "-k", generic_tree.release, "--cmdline", "module.sig_enforce=1")
    assert enforced.returncode == 1
    assert "<5>Loading of unsigned module is rejected" in enforced.stdout and "EKEYREJECTED" in enforced.stdout
    locked = _kmodkit("check", str(unsigned), "-k", generic_tree.release, "--lockdown", "integrity", "--json")
    [doc] = json.loads(locked.stdout)
    assert doc["refusal"]["errno_name"] == "EPERM"
    assert doc["lines"] == ["<5>Lockdown: kmodkit: unsigned module loading is restricted; see man kernel_lockdown.7"]
    signed = _kmodkit("check", str(sample_module), "-k", generic_tree.release, "--enforce", "1")
    assert signed.returncode == 0  # Debian's signature, the kernel's own key


def test_cli_bad_inputs_are_one_error_line_each_and_the_batch_goes_on(sample_module: Path, generic_tree: KernelTree,
                                                                      tmp_path: Path) -> None:
    missing = tmp_path / "missing.ko"
    done = _kmodkit("check", str(missing), str(sample_module), "-k", generic_tree.release)
    assert done.returncode == 2
    assert done.stderr.count("error:") == 1 and str(missing) in done.stderr and "Traceback" not in done.stderr
    assert "af_key.ko on" in done.stdout and "loads" in done.stdout
    unknown = _kmodkit("check", str(sample_module), "-k", "9.9.9-not-a-kernel", "-k", generic_tree.release)
    assert unknown.returncode == 2 and unknown.stderr.count("error:") == 1
    assert "9.9.9-not-a-kernel" in unknown.stderr and "loads" in unknown.stdout
    text = tmp_path / "notes.ko"
    text.write_text("not a module\n" * 10)
    refused = _kmodkit("check", str(text), "-k", generic_tree.release)
    assert refused.returncode == 1 and "<3>Invalid ELF header magic: != \\x7fELF" in refused.stdout
    short = tmp_path / "short.ko"
    short.write_bytes(b"\x7fELF")
    tiny = _kmodkit("check", str(short), "-k", generic_tree.release)
    assert tiny.returncode == 1 and "<3>Invalid ELF header len 4" in tiny.stdout


def test_a_kernel_named_by_a_directory(sample_module: Path, generic_tree: KernelTree, tmp_path: Path) -> None:
    assert generic_tree.headers is not None
    d = tmp_path / "kernel"
    d.mkdir()
    for name in ("Module.symvers", ".config"):
        shutil.copy(generic_tree.headers / name, d / name)
    (d / "include/generated").mkdir(parents=True)
    shutil.copy(generic_tree.headers / "include/generated/utsrelease.h", d / "include/generated/utsrelease.h")
    done = _kmodkit("check", str(sample_module), "-k", str(d), "--json")
    [doc] = json.loads(done.stdout)
    assert doc["kernel"] == generic_tree.release
    # no image: the Debian signature cannot be checked, so it is taken as made with an unavailable key (taint E)
    assert doc["outcome"] == "loads, taints" and doc["taints"] == "E"
    assert any("trusted keys are unknown" in a for a in doc["assumptions"])
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = _kmodkit("check", str(sample_module), "-k", str(empty))
    assert bad.returncode == 2 and "Module.symvers and .config missing" in bad.stderr


def _symvers(tree: KernelTree) -> dict[str, tuple[str, ...]]:
    assert tree.headers is not None
    rows = [line.split("\t") for line in (tree.headers / "Module.symvers").read_text().splitlines()]
    return {r[1]: tuple(r) for r in rows}


def test_abi_diff_between_flavours_counts_what_module_symvers_says(generic_tree: KernelTree,
                                                                  cloud_tree: KernelTree) -> None:
    done = _kmodkit("abi", "diff", cloud_tree.release, generic_tree.release, "--json")
    assert done.returncode == 1, done.stderr  # module_layout differs: everything must be rebuilt
    doc = json.loads(done.stdout)["diff"]
    a, b = _symvers(cloud_tree), _symvers(generic_tree)
    assert doc["counts"]["removed"] == len(a.keys() - b.keys())
    assert doc["counts"]["added"] == len(b.keys() - a.keys())
    assert doc["counts"]["crc"] == sum(1 for s in a.keys() & b.keys() if int(a[s][0], 16) != int(b[s][0], 16))
    assert doc["module_layout_changed"] is True


def test_abi_diff_for_a_module_agrees_with_check(kernel_trees: list[KernelTree], tmp_path: Path) -> None:
    """Two ABIs of the same flavour: what abi diff calls safe, check predicts loads, for an in-tree module."""
    clouds = [t for t in kernel_trees if t.flavour == "cloud-amd64" and t.series == "6.1" and t.headers]
    if len(clouds) < 2:
        need("two 6.1 cloud kernels with headers")
    new, old = clouds[0], clouds[1]
    module = next(p for p in old.modules() if p.name == "af_key.ko")
    done = _kmodkit("abi", "diff", old.release, new.release, "--for", str(module), "--json")
    doc = json.loads(done.stdout)
    [verdict] = doc["modules"]
    predicted = json.loads(_kmodkit("check", str(module), "-k", new.release, "--json").stdout)[0]
    # the module was signed by the old build's key: the new kernel lacks it (E), which is not an ABI matter
    assert predicted["loads"] is (not verdict["rebuild_needed"])
    assert done.returncode == (1 if verdict["rebuild_needed"] else 0)


def test_cli_prints_the_fleet_matrix_for_many_pairs(sample_module: Path, generic_tree: KernelTree,
                                                    cloud_tree: KernelTree) -> None:
    cloud_af_key = next(p for p in cloud_tree.modules() if p.name == "af_key.ko")
    done = _kmodkit("check", str(sample_module), str(cloud_af_key), "-k", generic_tree.release, "-k",
                    cloud_tree.release)
    assert done.returncode == 1
    rows = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2
    generic_row = next(r for r in rows if str(sample_module) in r)
    cells = [c.strip() for c in generic_row.strip("│").split("│")]
    assert cells == [str(sample_module), "loads", "refused ENOEXEC"]
    assert done.stdout.rstrip().endswith("2 of 4 load; 2 refused")


def test_build_checks_what_it_built_and_fails_when_the_kernel_would_refuse_it(generic_tree: KernelTree,
                                                                               tmp_path: Path) -> None:
    """build runs check on each module against its kernel: a module named like a built-in that owns
    /sys/module/NAME builds fine and is refused at load ('module is already loaded', EINVAL)."""
    target = _target(generic_tree)
    name = next(n for n in sorted(target.sysfs_builtin) if n.isidentifier() and not n.startswith("_"))
    proj = tmp_path / "clash"
    proj.mkdir()
    (proj / f"{name}.c").write_text('#include <linux/module.h>\nstatic int __init kk_init(void) { return 0; }\n'
                                    'module_init(kk_init);\nMODULE_LICENSE("GPL");\n')
    (proj / "Kbuild").write_text(f"obj-m := {name}.o\n")
    adopted = _kmodkit("init", str(proj))
    assert adopted.returncode == 0, adopted.stderr
    done = _kmodkit("build", str(proj), "-k", generic_tree.release, "--json",
                    "--workdir", str(tmp_path / "work"))
    assert done.returncode == 1, done.stdout + done.stderr
    [kernel] = json.loads(done.stdout)["kernels"]
    assert kernel["state"] == "built"
    [verdict] = kernel["check"]
    assert verdict["refusal"]["errno_name"] == "EINVAL" and verdict["refusal"]["check"] == "sysfs"
    # the taints are applied before the kernel finds /sys/module/NAME taken (the last thing it checks)
    assert verdict["lines"][-1] == f"<3>{name}: module is already loaded"
    assert verdict["lines"][0] == f"<4>{name}: loading out-of-tree module taints kernel."
    text = _kmodkit("build", str(proj), "-k", generic_tree.release, "--workdir", str(tmp_path / "work"))
    assert text.returncode == 1 and f"{name}.ko would be refused" in text.stderr
    unchecked = _kmodkit("build", str(proj), "-k", generic_tree.release, "--no-check", "--json",
                         "--workdir", str(tmp_path / "work"))
    assert unchecked.returncode == 0 and json.loads(unchecked.stdout)["kernels"][0]["check"] == []


def test_a_kernel_without_headers_or_config_is_one_error_made_in_test(sample_module: Path, tmp_path: Path) -> None:
    """A fake root (it stands for a machine whose kernel has no headers, and one whose config is unreadable)."""
    from kmodkit.check.run import CheckRun
    from kmodkit.errors import EnvironmentNotReady

    (tmp_path / "lib/modules/6.1.0-99-amd64/kernel").mkdir(parents=True)
    [r] = list(CheckRun([str(sample_module)], ["6.1.0-99-amd64"], root=tmp_path).results())
    assert r.prediction is None and isinstance(r.error, EnvironmentNotReady)
    assert "install linux-headers-6.1.0-99-amd64" in str(r.error)
    headers = tmp_path / "usr/src/linux-headers-6.1.0-98-amd64"
    headers.mkdir(parents=True)
    (headers / "Module.symvers").write_text("0x12345678\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n")
    (headers / ".config").mkdir()  # unreadable as a file
    (tmp_path / "lib/modules/6.1.0-98-amd64").mkdir(parents=True)
    (tmp_path / "lib/modules/6.1.0-98-amd64/build").symlink_to("/usr/src/linux-headers-6.1.0-98-amd64")
    [r] = list(CheckRun([str(sample_module)], ["6.1.0-98-amd64"], root=tmp_path).results())
    assert r.prediction is None and r.error is not None and "kernel configuration" in str(r.error)
