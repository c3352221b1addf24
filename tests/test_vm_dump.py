"""``vm run --dump-on-panic`` without a boot: what the kernel is told, how the end of a panic is seen on a
growing console log, and that the CLI flag reaches the run.  The booted proof is test_vmcore_vm.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import KernelTree
from test_vmcore_parse import fake_vmcore

from kmodkit.vm.dump import PANIC_END_LINE, PanicWatch, _check_vmcoreinfo
from kmodkit.vm.machine import VmSpec


def test_dump_on_panic_makes_the_kernel_wait_at_panic_instead_of_rebooting() -> None:
    plain = VmSpec("k", ("true",)).cmdline.split()
    dumping = VmSpec("k", ("true",), append=("x=1",), dump_on_panic=True).cmdline.split()
    assert "panic=-1" in plain and "panic=0" not in plain
    assert "panic=0" in dumping and "panic=-1" not in dumping
    assert dumping[-1] == "x=1" and len(dumping) == len(plain) + 1  # only panic= changed


def test_the_end_of_a_panic_is_seen_when_the_console_writes_it_in_pieces(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    watch = PanicWatch(str(console))
    assert not watch.ended()  # no console yet
    line = b"[    6.9] " + PANIC_END_LINE + b": Fatal exception ]---\n"
    cut = 10 + len(PANIC_END_LINE) // 2
    console.write_bytes(b"[    6.8] Kernel panic - not syncing: Fatal exception\n" + line[:cut])
    assert not watch.ended()
    with console.open("ab") as f:
        f.write(line[cut:])
    assert watch.ended()


def test_the_panic_line_alone_is_not_the_end(tmp_path: Path) -> None:
    # the kernel prints the log's replay (panic_print) after "Kernel panic"; the dump waits for the end line
    console = tmp_path / "console.log"
    console.write_bytes(b"[    6.8] Kernel panic - not syncing: Fatal exception\n[    0.0] Linux version 6.1\n")
    assert not PanicWatch(str(console)).ended()


def test_the_flag_is_parsed_and_documented(tmp_path: Path) -> None:
    # a kernel that does not exist: refused after the flag was parsed into the spec
    done = subprocess.run([sys.executable, "-m", "kmodkit", "vm", "run", "-k", "6.1.0-0-none", "--dump-on-panic",
                           "--runs-dir", str(tmp_path / "runs"), "--", "true"], capture_output=True, text=True)
    assert done.returncode == 2 and "vmlinuz-6.1.0-0-none: no such kernel image" in done.stderr, done.stderr
    helptext = subprocess.run([sys.executable, "-m", "kmodkit", "vm", "run", "--help"], capture_output=True,
                              text=True).stdout
    assert "--dump-on-panic" in helptext and "RUN_DIR/vmcore" in helptext


def test_a_dump_without_vmcoreinfo_made_in_the_test_is_named_as_such(tmp_path: Path) -> None:
    assert _check_vmcoreinfo(str(fake_vmcore(tmp_path / "good"))) is None
    problem = _check_vmcoreinfo(str(fake_vmcore(tmp_path / "bare", info=None)))
    assert problem is not None and problem.startswith("the dump carries no VMCOREINFO note")
    assert "qemu_fw_cfg" in problem
    (tmp_path / "junk").write_bytes(b"junk" * 100)
    assert "not a vmcore" in str(_check_vmcoreinfo(str(tmp_path / "junk")))


def test_every_installed_kernel_gets_qemu_fw_cfg_in_its_initramfs_for_a_dump(
        kernel_trees: list[KernelTree]) -> None:
    # CONFIG_FW_CFG_SYSFS=m in Debian's kernels (.ko and .ko.xz trees): the driver that hands VMCOREINFO to QEMU
    from kmodkit.vm.initramfs import Share, share_modules
    from kmodkit.vm.machine import DUMP_MODULES

    for tree in kernel_trees:
        plain = [name for name, _image in share_modules(str(tree.moddir), Share.VIRTIOFS)]
        dumping = share_modules(str(tree.moddir), Share.VIRTIOFS, DUMP_MODULES)
        assert [name for name, _image in dumping] == [*plain, "qemu_fw_cfg"], tree.release
        assert dumping[-1][1][:4] == b"\x7fELF"  # uncompressed for busybox's insmod
