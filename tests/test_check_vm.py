"""`check` judged by the kernel: every verdict predicted on the host agrees with a booted kernel.

For every installed kernel with headers (two 6.1 cloud ABIs, the 6.1 generic and the 6.12 cloud kernel here), a set of
modules is built for it that exercises the verdicts: loads (first and second of a boot: the once-per-boot
lines), built for another kernel, an in-tree module of the other flavour, a non-GPL licence using a
GPL-only symbol, a namespace not imported, an unknown symbol, a CRC that disagrees, a corrupt section
table, a trailer with non-zero parameters, signed by an untrusted key, Debian-signed, already loaded, a
built-in's name.
A module named like a built-in that owns a /sys/module directory is refused last of all.
The kernel is booted twice (defaults, and module.sig_enforce=1); inside, each module goes to
finit_module() and the errno and every kernel line it caused are recorded with the taint and the loaded
modules before the call.  On the host, `check` predicts each call from files and that state: errno and
lines must be equal.  Files made in the test (a licence or namespace edited, a CRC or trailer byte
changed, a section table offset broken) say so in their case names.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import KernelTree, discover_trees, need

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.kernel]

_PLAIN = """
#include <linux/module.h>
static int __init kk_init(void) { return 0; }
static void __exit kk_exit(void) { }
module_init(kk_init);
module_exit(kk_exit);
MODULE_LICENSE("GPL");
"""
_PRINTS = """
#include <linux/module.h>
static int __init kk_init(void) { pr_debug("kk\\n"); return 0; }
static void __exit kk_exit(void) { pr_info("kk gone\\n"); }
module_init(kk_init);
module_exit(kk_exit);
MODULE_LICENSE("GPL");
"""
#: a reference to SYMBOL from a file that includes no header, so no declaration can clash with ours
_REF = "extern char {sym}[];\nvoid *kk_ref_{n}(void);\nvoid *kk_ref_{n}(void) {{ return {sym}; }}\n"
_IMPORT = '\n#include <linux/module.h>\nMODULE_IMPORT_NS({ns});\n'

GUEST = r'''
import json, os, sys
from kmodkit.errors import SyscallError
from kmodkit.loader.kmsg import KmsgWatcher
from kmodkit.loader.syscalls import InitFlags, finit_module

cases = json.load(open(sys.argv[1]))
report = []
with KmsgWatcher() as kmsg:
    kmsg.new_records()
    for case, path in cases:
        tainted = int(open("/proc/sys/kernel/tainted").read())
        loaded = sorted(line.split()[0] for line in open("/proc/modules"))
        flags = InitFlags.COMPRESSED_FILE if path.endswith(".xz") else InitFlags.NONE
        fd = os.open(path, os.O_RDONLY)
        try:
            finit_module(fd, "", flags, path)
            err = 0
        except SyscallError as exc:
            err = exc.errno
        finally:
            os.close(fd)
        lines = [(r.priority, r.message) for r in kmsg.new_records()]
        report.append({"case": case, "errno": err, "lines": lines, "tainted": tainted, "loaded": loaded})
print("KMODKIT-REPORT " + json.dumps(report))
'''


def _trees() -> list[KernelTree]:
    return [t for t in discover_trees() if t.headers is not None and t.vmlinuz is not None]


def _make(src: Path, headers: Path, files: dict[str, str], objs: dict[str, list[str]], warn: bool = False) -> None:
    src.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (src / name).write_text(textwrap.dedent(text))
    lines = [f"obj-m += {m}.o" for m in objs]
    lines += [f"{m}-y := {' '.join(o + '.o' for o in parts)}" for m, parts in objs.items() if parts != [m]]
    (src / "Kbuild").write_text("\n".join(lines) + "\n")
    env = {"KBUILD_MODPOST_WARN": "1"} if warn else {}
    done = subprocess.run(["make", "-s", "-C", str(headers), f"M={src}", "modules"], capture_output=True, text=True,
                          env={**__import__("os").environ, **env})
    assert done.returncode == 0, done.stderr


def _replace_once(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new), (path, old)
    path.write_bytes(data.replace(old, new))


def _symvers_pick(headers: Path, gpl: bool, namespaced: bool) -> tuple[str, str] | None:
    for line in (headers / "Module.symvers").read_text().splitlines():
        parts = line.split("\t")
        if parts[2] != "vmlinux" or (parts[3] == "EXPORT_SYMBOL_GPL") != gpl:
            continue
        ns = parts[4] if len(parts) > 4 else ""
        if bool(ns) == namespaced and parts[1].isidentifier():
            return parts[1], ns
    return None


def _flip_crc(path: Path, symbol: str) -> None:
    from kmodkit.modfile.module import ModuleFile

    with ModuleFile.open(path) as mod:
        sec = mod.elf.get_section_by_name("__versions")
        assert sec is not None
        data = bytes(mod.elf.section_data(sec))
    for i in range(0, len(data), 64):
        if data[i + 8:i + 64].split(b"\0", 1)[0] == symbol.encode():
            raw = bytearray(path.read_bytes())
            at = sec.offset + i
            raw[at:at + 4] = struct.pack("<I", struct.unpack_from("<I", raw, at)[0] ^ 0x5A5A5A5A)
            path.write_bytes(bytes(raw))
            return
    raise AssertionError(f"{symbol} not in __versions of {path}")


def _kmodkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmodkit", *args], capture_output=True, text=True)


def _cases(tree: KernelTree, d: Path) -> list[tuple[str, str]]:
    """Build every case module for ``tree`` under ``d``; returns (case, path) in the order they are loaded."""
    headers = tree.headers
    assert headers is not None
    files = {"kk_ok.c": _PLAIN, "kk_ok2.c": _PLAIN, "kk_ok3.c": _PLAIN, "kk_crc.c": _PRINTS,
             "kk_gpl_main.c": _PLAIN, "kk_ns_main.c": _PLAIN, "kk_unknown_main.c": _PLAIN,
             "kk_unknown_ref.c": _REF.format(sym="kmodkit_no_such_symbol", n=1)}
    objs: dict[str, list[str]] = {"kk_ok": ["kk_ok"], "kk_ok2": ["kk_ok2"], "kk_ok3": ["kk_ok3"],
                                  "kk_crc": ["kk_crc"], "kk_unknown": ["kk_unknown_main", "kk_unknown_ref"]}
    gpl = _symvers_pick(headers, gpl=True, namespaced=False)
    assert gpl is not None
    files["kk_gpl_ref.c"] = _REF.format(sym=gpl[0], n=2)
    objs["kk_gpl"] = ["kk_gpl_main", "kk_gpl_ref"]
    ns = _symvers_pick(headers, gpl=True, namespaced=True)
    if ns is not None:
        files["kk_ns_ref.c"] = _REF.format(sym=ns[0], n=3)
        files["kk_ns_main.c"] = _PLAIN + _IMPORT.format(ns=ns[1])
        objs["kk_ns"] = ["kk_ns_main", "kk_ns_ref"]
    from kmodkit.check.target import TargetKernel

    builtin = next(n for n in sorted(TargetKernel.installed(tree.release).sysfs_builtin)
                   if n.isidentifier() and not n.startswith("_"))
    files[f"{builtin}.c"] = _PLAIN
    objs[builtin] = [builtin]
    _make(d, headers, files, objs, warn=True)
    cases: list[tuple[str, str]] = []
    # a licence edited to one the kernel calls proprietary: the GPL-only symbol is then unknown
    _replace_once(d / "kk_gpl.ko", b"license=GPL\0", b"license=MIT\0")
    if ns is not None:  # the namespace import edited away (same length)
        _replace_once(d / "kk_ns.ko", f"import_ns={ns[1]}\0".encode(), f"import_ns=Q{ns[1][1:]}\0".encode())
    _flip_crc(d / "kk_crc.ko", "_printk" if "_printk" in (d / "kk_crc.ko").read_bytes().decode("latin-1")
              else "printk")
    corrupt = d / "kk_corrupt_made_in_test.ko"
    raw = bytearray((d / "kk_ok3.ko").read_bytes())
    raw[0x28:0x30] = struct.pack("<Q", len(raw) + 4096)  # e_shoff past the end
    corrupt.write_bytes(bytes(raw))
    made = _kmodkit("keys", "new", "--out", str(d / "keys"), "--cn", "kmodkit check test", "--bits", "2048")
    assert made.returncode == 0, made.stderr
    (d / "signed").mkdir()
    for name in ("kk_ok3", "kk_ok2"):
        shutil.copy(d / f"{name}.ko", d / f"signed/{name}.ko")
    signed = _kmodkit("sign", "--key", str(d / "keys/signing_key.pem"), "--cert", str(d / "keys/signing_cert.der"),
                      str(d / "signed/kk_ok3.ko"), str(d / "signed/kk_ok2.ko"))
    assert signed.returncode == 0, signed.stderr
    bad = d / "signed/kk_ok2.ko"  # the trailer's algo byte made non-zero in the test
    raw = bytearray(bad.read_bytes())
    raw[-40] = 1
    bad.write_bytes(bytes(raw))
    other = next((t for t in _trees() if t.release != tree.release and t.series != tree.series), None) or \
        next((t for t in _trees() if t.flavour != tree.flavour), None)
    if other is not None:
        _make(d / "other", other.headers, {"kk_other.c": _PLAIN}, {"kk_other": ["kk_other"]})  # type: ignore[arg-type]
    twin = next((t for t in discover_trees() if t.release != tree.release and t.series == tree.series
                 and t.flavour != tree.flavour), None)
    own_algo = next(p for p in tree.modules() if p.name.startswith("xfrm_algo.ko"))
    cases += [("kk_ok first of the boot", str(d / "kk_ok.ko")),
              ("kk_ok2 second of the boot", str(d / "kk_ok2.ko"))]
    if other is not None:
        cases.append((f"built for {other.release}", str(d / "other/kk_other.ko")))
    if twin is not None:
        cases.append((f"in-tree module of {twin.release}",
                      str(next(p for p in twin.modules() if p.name.startswith("xfrm_algo.ko")))))
    cases += [("licence edited in test to MIT, uses a GPL-only symbol", str(d / "kk_gpl.ko")),
              ("unknown symbol", str(d / "kk_unknown.ko")),
              ("a CRC changed in test", str(d / "kk_crc.ko")),
              ("section table offset broken in test", str(corrupt)),
              ("trailer algo byte made non-zero in test", str(bad)),
              ("signed by an untrusted key", str(d / "signed/kk_ok3.ko")),
              ("Debian-signed in-tree module", str(own_algo)),
              ("already loaded", str(d / "kk_ok.ko")),
              (f"named like the built-in {builtin}, which owns /sys/module/{builtin}", str(d / f"{builtin}.ko"))]
    if ns is not None:
        cases.append(("namespace import edited away in test", str(d / "kk_ns.ko")))
    return cases


@pytest.fixture(scope="module", params=[t.release for t in _trees()] or ["none"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[KernelTree, Path, list[tuple[str, str]]]:
    if shutil.which("qemu-system-x86_64") is None:
        need("qemu-system-x86")
    tree = next((t for t in _trees() if t.release == request.param), None)
    if tree is None:
        need("a Debian kernel with headers and image")
    assert tree is not None
    d = tmp_path_factory.mktemp("checkvm")
    cases = _cases(tree, d)
    (d / "cases.json").write_text(json.dumps(cases))
    (d / "guest.py").write_text(GUEST)
    return tree, d, cases


def _boot(tree: KernelTree, d: Path, append: tuple[str, ...]) -> list[dict[str, object]]:
    from kmodkit.vm.machine import Vm, VmSpec

    spec = VmSpec(tree.release, (sys.executable, str(d / "guest.py"), str(d / "cases.json")), append=append,
                  runs_dir=str(d / "runs"), timeout=900, cwd="/")
    result = Vm(spec).run()
    out = result.output()
    assert result.exit_status == 0, f"guest failed; logs in {result.run_dir}:\n{out[-3000:]}"
    line = next(l for l in out.splitlines() if l.startswith("KMODKIT-REPORT "))
    report: list[dict[str, object]] = json.loads(line.split(" ", 1)[1])
    (d / f"report{len(append)}.json").write_text(json.dumps(report, indent=1))  # kept for a person to read
    return report


def _agree(tree: KernelTree, report: list[dict[str, object]], cases: list[tuple[str, str]],
           cmdline: tuple[str, ...]) -> list[str]:
    from kmodkit.check.checker import Checker, Machine
    from kmodkit.check.target import TargetKernel
    from kmodkit.runtime.taint import decode_mask

    target = TargetKernel.installed(tree.release)
    disagree = []
    paths = dict(cases)
    for seen in report:
        letters = "".join(f.letter for f in decode_mask(int(str(seen["tainted"]))))
        machine = Machine(cmdline=cmdline, loaded=frozenset(seen["loaded"]),  # type: ignore[arg-type]
                          tainted=letters, comm="python3")
        p = Checker(target, machine).check(paths[str(seen["case"])])
        predicted = (0 if p.refusal is None else p.refusal.errno, [[l.level, l.text] for l in p.lines])
        if predicted != (seen["errno"], seen["lines"]):
            disagree.append(f"{seen['case']}: kernel {seen['errno']} {seen['lines']}, check {predicted}")
    return disagree


def test_check_agrees_with_the_booted_kernel(built: tuple[KernelTree, Path, list[tuple[str, str]]]) -> None:
    tree, d, cases = built
    report = _boot(tree, d, ())
    assert len(report) == len(cases)
    disagree = _agree(tree, report, cases, ())
    print(f"check agrees with {tree.release}: {len(report) - len(disagree)} of {len(report)}")
    assert disagree == []
    by_case = {str(r["case"]): r for r in report}
    assert by_case["kk_ok first of the boot"]["errno"] == 0
    assert by_case["already loaded"]["errno"] == 17


def test_check_agrees_with_the_booted_kernel_under_sig_enforce(
        built: tuple[KernelTree, Path, list[tuple[str, str]]]) -> None:
    tree, d, cases = built
    cmdline = ("module.sig_enforce=1",)
    report = _boot(tree, d, cmdline)
    disagree = _agree(tree, report, cases, cmdline)
    print(f"check agrees with {tree.release} (module.sig_enforce=1): {len(report) - len(disagree)} of {len(report)}")
    assert disagree == []
    by_case = {str(r["case"]): r for r in report}
    assert by_case["kk_ok first of the boot"]["errno"] == 129
    assert by_case["Debian-signed in-tree module"]["errno"] == 0
