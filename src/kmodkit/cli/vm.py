"""``kmodkit vm run``: boot an installed kernel under QEMU and run a command inside.

Exit status: the command's own, 124 when the run timed out, 5 when the guest's kernel panicked
(the run record and kernel.log then hold the report); 2 and 3 as every command.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.klog.diagnose import Diagnosis


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="vm_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="boot KVER, run CMD inside, return its exit status",
                         description="Boot the installed kernel KVER, run CMD inside with the host's root "
                                     "shared read-only, stream its output and return its exit status.")
    run.add_argument("-k", "--kernel", dest="kver", metavar="KVER",
                     help="kernel release to boot, installed or fetched (kmodkit kernels fetch); default: the newest installed")
    run.add_argument("--append", action="append", default=[], metavar="TEXT",
                     help="extra kernel command line, passed as the kernel parses it: words split at spaces, "
                          "'x=\"a b\"' one value with a space (repeatable)")
    run.add_argument("--memory", type=int, default=1024, metavar="MIB", help="guest memory in MiB (default 1024)")
    run.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                     help="stop the guest after this long (default 600); the status is then 124")
    run.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                     help="KVM, TCG, or KVM when it works here (default)")
    run.add_argument("--share", choices=("auto", "virtiofs", "9p"), default="auto",
                     help="how the host's root reaches the guest (default: virtiofs, else 9p)")
    run.add_argument("--out", metavar="DIR",
                     help="a host directory the guest may write (made if absent), mounted at the same path inside "
                          "and named by $KMODKIT_OUT: how files (JSON, SVG, perf.data) come back")
    run.add_argument("--cpus", type=int, default=1, metavar="N", help="virtual CPUs (default 1)")
    run.add_argument("--runs-dir", metavar="DIR", help="where run directories go (default ~/.cache/kmodkit/vm-runs)")
    run.add_argument("--module-path", action="append", default=[], metavar="DIR",
                     help="where the module files the guest loads are, to decode its kernel's reports to source "
                          "lines (repeatable; .ko paths in the command and its output are used too)")
    run.add_argument("--panic-on-oops", action="store_true",
                     help="make an oops panic the guest (appends oops=panic): the run stops at the first one")
    run.add_argument("--dump-on-panic", action="store_true",
                     help="when the guest's kernel panics, write its memory to RUN_DIR/vmcore (ELF with VMCOREINFO, "
                          "as big as --memory) for 'kmodkit oops --vmcore'; the kernel then waits at panic (panic=0)")
    run.add_argument("--json", action="store_true",
                     help="print the run's result as JSON on stdout at the end (the command's output then goes "
                          "to stderr)")
    run.add_argument("guest_command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command to run inside")


def _newest_kernel() -> str | None:
    import glob
    import os

    from kmodkit.kbuild.kernels import kernel_root, version_key

    # through the one seam: an installed kernel, or one fetched into the cache (kmodkit kernels fetch)
    kvers = [os.path.basename(p)[len("vmlinuz-"):] for p in glob.glob("/boot/vmlinuz-*")]
    kvers = [k for k in kvers if kernel_root(k).join(f"/lib/modules/{k}").is_dir()]
    kvers.sort(key=version_key)
    return kvers[-1] if kvers else None


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from kmodkit.errors import NotFoundError
    from kmodkit.vm.accel import Accel
    from kmodkit.vm.initramfs import Share
    from kmodkit.vm.machine import Vm, VmSpec

    command = args.guest_command[1:] if args.guest_command[:1] == ["--"] else args.guest_command
    kver = args.kver or _newest_kernel()
    if kver is None:
        raise NotFoundError("/boot", "no installed kernel with modules", "install one: apt-get install linux-image-amd64")
    append = (*args.append, "oops=panic") if args.panic_on_oops else tuple(args.append)
    from kmodkit.kbuild.kernels import kernel

    k = kernel(kver)
    machine = k.root  # this machine, or a fetched kernel's directory in the cache
    if k.fetched and not machine.join(f"/boot/vmlinuz-{kver}").is_file():
        raise NotFoundError(kver, "was fetched without its image and modules (--headers-only)",
                            f"fetch them: kmodkit kernels fetch {kver}")
    spec = VmSpec(kver, tuple(command), append, args.memory, Accel(args.accel),
                  None if args.share == "auto" else Share(args.share), args.timeout, runs_dir=args.runs_dir,
                  boot_dir=str(machine.join("/boot")), modules_root=str(machine.join("/lib/modules")),
                  module_paths=tuple(args.module_path),
                  out_dir=None if args.out is None else os.path.abspath(args.out), cpus=args.cpus,
                  dump_on_panic=args.dump_on_panic)
    # with --json, stdout carries the result alone
    out = sys.stderr.buffer if args.json else sys.stdout.buffer

    def stream(chunk: bytes) -> None:
        out.write(chunk)
        out.flush()

    result = Vm(spec).run(stream)
    for line in result.cmdline_complaints:
        sys.stderr.write(f"kmodkit vm: warning: the guest kernel says: {line}\n")
    for d in result.reports:
        sys.stderr.write(f"kmodkit vm: {report_summary(d)}\n")
    if result.vmcore is not None:
        sys.stderr.write(f"kmodkit vm: the guest's memory at panic is in {result.vmcore}\n")
    if result.vmcore_error is not None:
        what = "no vmcore" if result.vmcore is None else "the vmcore"
        sys.stderr.write(f"kmodkit vm: warning: {what}: {result.vmcore_error}\n")
    if args.json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        how = " (timed out)" if result.timed_out else " (the guest kernel panicked)" if result.panicked else ""
        sys.stderr.write(f"kmodkit vm: exit {result.exit_status}{how}; "
                         f"{result.accel.value}, {result.share.value}, booted in {result.boot_seconds} s; "
                         f"logs in {result.run_dir}\n")
    return result.exit_status


def report_summary(d: Diagnosis) -> str:
    """One line per kernel report: its kind, title and the guilty frame's source line when decoded."""
    r = d.report
    where = ""
    if r.guilty is not None:
        dec = d.frames.get(r.guilty.index)
        if dec is not None and dec.locations:
            where = f" at {dec.locations[0]}"
    return f"{r.kind.value}: {r.title}{where}{'' if r.complete else ' (truncated)'}"
