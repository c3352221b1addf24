"""Decoding for real: a test module with crash modes (WARN_ON, divide by zero, BUG_ON, an inlined helper
that faults, a NULL dereference, a wild pointer, a soft lockup), built for the generic kernel, crashed in it under
QEMU (one boot: WARN_ON first, then the fatal modes, each killing only its insmod since Debian does not
panic on oops), and every module frame of the guest's log decoded by ``kmodkit oops`` compared with
binutils' ``addr2line -i -f`` (function, line, inline chain) and gdb's ``info line`` (the file: the
addr2line of binutils 2.40 names the wrong file of a DWARF 5 line table, gdb and the kernel's own
"at FILE:LINE" agree with us)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import discover_trees, need

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.kernel]

COMMON_H = r"""
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/bug.h>
#include <linux/jiffies.h>
#include <linux/preempt.h>

struct crashy_node { struct crashy_node *next; int value; };
static int divisor;
module_param(divisor, int, 0444);
static struct crashy_node *head;
static int spin_seconds = 6;
module_param(spin_seconds, int, 0444);

static __always_inline int crashy_peek(struct crashy_node *n)
{
	int v = READ_ONCE(n->value);

	return v * 3 + 1;
}

static noinline int crashy_walk(struct crashy_node *n)
{
	int sum = 0;

	while (n && n->next)
		n = n->next;
	sum += crashy_peek(n);
	return sum;
}

static noinline int crashy_null(struct crashy_node *n)
{
	return n->next->value + 1;
}

static noinline int crashy_div(int a)
{
	return a / READ_ONCE(divisor);
}

static noinline int crashy_warn(void)
{
	WARN_ON(READ_ONCE(divisor) == 0);
	return 0;
}

static noinline int crashy_bug(void)
{
	BUG_ON(READ_ONCE(head) == NULL);
	return 0;
}

static noinline int crashy_wild(void)
{
	/* a non-canonical address: x86 raises a general protection fault, not a page fault */
	return *(volatile int *)0xdead000000000100UL;
}

static noinline int crashy_spin(void)
{
	unsigned long end = jiffies + READ_ONCE(spin_seconds) * HZ;

	/* preemption off: the CPU's watchdog thread cannot run, and the soft lockup detector fires once
	 * 2 * watchdog_thresh seconds pass (the guest is booted with watchdog_thresh=1) */
	preempt_disable();
	while (time_before(jiffies, end))
		cpu_relax();
	preempt_enable();
	return 0;
}

static noinline int crashy_run(void)
{
	switch (CRASHY_MODE) {
	case 0: return crashy_null(READ_ONCE(head));
	case 1: return crashy_div(100);
	case 2: return crashy_warn();
	case 3: return crashy_bug();
	case 5: return crashy_wild();
	case 6: return crashy_spin();
	default: return crashy_walk(READ_ONCE(head));
	}
}

static int __init crashy_init(void)
{
	pr_info("crashy: mode %d\n", CRASHY_MODE);
	return crashy_run() == 12345 ? -EINVAL : 0;
}

static void __exit crashy_exit(void) { }
module_init(crashy_init);
module_exit(crashy_exit);
MODULE_LICENSE("GPL");
"""

#: mode -> (its number, the report kind, the functions the guilty frame may name)
MODES = {
    "warn": (2, "warning", {"crashy_warn"}),
    "div": (1, "divide-error", {"crashy_div"}),
    "bug": (3, "bug", {"crashy_bug"}),
    "inline": (4, "null-deref", {"crashy_walk"}),
    "null": (0, "null-deref", {"crashy_null", "crashy_run"}),  # gcc may fold crashy_null into its caller
    "wild": (5, "gpf", {"crashy_wild"}),
    "lockup": (6, "soft-lockup", {"crashy_spin"}),
}

#: the kernel command line the crash modes need: the soft lockup detector fires after 2 s, not 20
CRASHY_APPEND = ("watchdog_thresh=1",)


def build_crashy(d: Path, headers: Path, modes: tuple[str, ...] = tuple(MODES)) -> None:
    """Write the crash module's sources into ``d`` (one module per mode) and build them for ``headers``."""
    (d / "crashy_common.h").write_text(COMMON_H)
    for mode in modes:
        (d / f"crashy_{mode}.c").write_text(f'#define CRASHY_MODE {MODES[mode][0]}\n#include "crashy_common.h"\n')
    (d / "Kbuild").write_text("obj-m := " + " ".join(f"crashy_{m}.o" for m in modes) + "\nccflags-y := -I$(src)\n")
    done = subprocess.run(["make", "-s", "-C", str(headers), f"M={d}", "modules"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, object]]]:
    if shutil.which("qemu-system-x86_64") is None:
        need("qemu-system-x86")
    tree = next((t for t in discover_trees() if t.flavour == "amd64" and t.headers and t.vmlinuz), None)
    if tree is None:
        need("a Debian generic amd64 kernel with its headers")
    assert tree is not None
    d = tmp_path_factory.mktemp("crashy")
    assert tree.headers is not None
    build_crashy(d, tree.headers)
    script = "".join(f"insmod {d}/crashy_{m}.ko; echo insmod {m} $?\n" for m in MODES)
    (d / "guest.sh").write_text("#!/bin/sh\n" + script)
    (d / "guest.sh").chmod(0o755)
    run = subprocess.run([sys.executable, "-m", "kmodkit", "vm", "run", "-k", tree.release, "--runs-dir",
                          str(d / "runs"), "--timeout", "600", "--json",
                          *(w for a in CRASHY_APPEND for w in ("--append", a)), "--",
                          str(d / "guest.sh")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    (kernel_log,) = (d / "runs").glob("*/kernel.log")
    oops = subprocess.run([sys.executable, "-m", "kmodkit", "oops", "--json", "--module-path", str(d),
                           str(kernel_log)], capture_output=True, text=True)
    assert oops.returncode == 1, oops.stderr  # reports found
    return d, json.loads(oops.stdout)


def test_every_mode_has_its_kind_and_guilty_function(crashed: tuple[Path, list[dict[str, object]]]) -> None:
    _d, reports = crashed
    # the first report of each module, in the order the guest crashed them; the soft lockup is reported again
    # for as long as the CPU stays stuck (twice when the host is busy and the spin lasts longer), nothing else is
    first: dict[str, dict[str, object]] = {}
    for rep in reports:
        g = rep["guilty"]
        assert isinstance(g, dict), rep["title"]
        if g["module"] in first:
            assert rep["kind"] == "soft-lockup" and g["module"] == "crashy_lockup", rep["title"]
        first.setdefault(str(g["module"]), rep)
    assert list(first) == [f"crashy_{m}" for m in MODES]
    for (mode, (_n, kind, guilty)), rep in zip(MODES.items(), first.values()):
        assert rep["kind"] == kind, mode
        g = rep["guilty"]
        assert isinstance(g, dict) and str(g["symbol"]).split(".")[0] in guilty, (mode, g)
        assert g["module"] == f"crashy_{mode}"
        assert str(rep["title"]).endswith(f" in {g['symbol']}"), rep["title"]


def _oracle(ko: Path, section: str, offset: int) -> list[tuple[str, int]]:
    a2l = subprocess.run(["addr2line", "-i", "-f", "-e", str(ko), "-j", section, hex(offset)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    return [(a2l[i], int(a2l[i + 1].rsplit(":", 1)[1].split()[0])) for i in range(0, len(a2l), 2)]


def test_every_module_frame_decodes_as_addr2line_and_gdb(crashed: tuple[Path, list[dict[str, object]]]) -> None:
    from kmodkit.klog.symbolize import ModuleDebugInfo

    d, reports = crashed
    checked = inlined = 0
    for rep in reports:
        frames = [rep["rip"]] + list(rep["frames"])  # type: ignore[operator]
        for i, f in enumerate(frames):
            assert isinstance(f, dict)
            if f is None or not str(f.get("module") or "").startswith("crashy_") or not f["reliable"]:
                continue
            ko = d / f"{f['module']}.ko"
            info = ModuleDebugInfo(str(ko))
            addr = info.address(str(f["symbol"]), int(f["offset"]))  # type: ignore[call-overload]
            assert addr is not None
            pc = addr if i == 0 else addr - 1
            section, offset = info.section_address(pc)
            expected = _oracle(ko, section, offset)
            got = [(s["function"], s["line"]) for s in f["source"]]  # type: ignore[union-attr]
            assert got == expected, (f, section, hex(offset))
            gdb = subprocess.run(["gdb", "-batch", "-ex", f"info line *('{f['symbol']}'+{int(f['offset']) - (i != 0)})",
                                  str(ko)], capture_output=True, text=True).stdout
            assert f'"{f["source"][0]["file"]}"' in gdb, gdb  # type: ignore[index]
            checked += 1
            inlined += len(expected) > 1
    assert checked >= 2 * len(MODES)
    assert inlined >= 1, "no frame went through the inlined helper"
