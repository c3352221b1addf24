"""One QEMU run: boot a kernel with kmodkit's initramfs, run a command, keep every log.

A run directory holds ``console.log`` (the kernel's console), ``output.log``
(the command's output, also streamed), ``kernel.log`` (the guest's whole
kernel log, ``dmesg -r``, dumped after the command), ``status`` (boot and exit
lines from the init script), ``qemu.log`` and ``result.json``.

A guest whose kernel panics is a result too (:data:`EXIT_PANIC`): the kernel replays its whole log
on the console at panic (``panic_print=0x20``), and that replay becomes ``kernel.log``.  Every
report in the kernel log (oops, WARNING, panic...) is decoded with :mod:`kmodkit.klog` and kept in
``result.json``.

With ``dump_on_panic`` the guest also leaves a ``vmcore`` (an ELF dump of its memory, QEMU's
``dump-guest-memory``, carrying the kernel's VMCOREINFO note through ``-device vmcoreinfo``).  The guest
must then stop at panic and stay: the kernel is told ``panic=0`` (wait forever) instead of rebooting, and
the host watches the console for the end of the panic (``---[ end Kernel panic``, printed after the log's
replay) before it dumps and quits.  pvpanic was the other way, but its driver is a module in Debian's
kernels (PVPANIC_MMIO=m) and its notifier runs before the panic's replay, which ``kernel.log`` needs.
The kernel fills the VMCOREINFO note through fw_cfg's ``etc/vmcoreinfo`` file, written by the qemu_fw_cfg
driver when it probes (CONFIG_FW_CFG_SYSFS, a module in Debian's kernels): the init script loads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from kmodkit.errors import EnvironmentNotReady, NotFoundError, UserError
from kmodkit.vm.accel import Accel, choose_accel, qemu_accel
from kmodkit.vm.dump import VMCORE
from kmodkit.vm.kernel_image import boot_image
from kmodkit.vm.initramfs import OUT_TAG, ROOT_TAG, GuestCommand, Share, build_initramfs
from kmodkit.vm.share import choose_share, start_virtiofsd

if TYPE_CHECKING:
    from kmodkit.klog.diagnose import Diagnosis

log = logging.getLogger(__name__)

#: the QEMU system emulator per host machine, with the package that ships it
QEMU_BINARIES: dict[str, tuple[str, str]] = {
    "x86_64": ("qemu-system-x86_64", "qemu-system-x86"),
}

#: exit status reported when the command ran out of time (as timeout(1) does)
EXIT_TIMEOUT = 124

#: exit status reported when the guest's kernel panicked before the command finished (cli/main.py's table)
EXIT_PANIC = 5

#: the kernel command line every run starts with; the user's ``append`` text follows it.  panic_print=0x20
#: makes a panicking kernel replay its whole log on the console, the only log that outlives a panic
BASE_CMDLINE = ("console=ttyS0", "quiet", "panic=-1", "panic_print=0x20", "rdinit=/init", "8250.nr_uarts=4")

#: the line printed on the console when the kernel panics
PANIC_LINE = "Kernel panic - not syncing"

#: what ``dump_on_panic`` changes on the kernel command line: stay stopped at panic for the dump
DUMP_CMDLINE = {"panic=-1": "panic=0"}

#: modules the guest loads for ``dump_on_panic`` when its tree has them (built in, they are skipped):
#: qemu_fw_cfg hands the kernel's VMCOREINFO to QEMU's vmcoreinfo device
DUMP_MODULES = ("qemu_fw_cfg",)

#: the kernel's complaints about its command line, relayed to the user
CMDLINE_COMPLAINTS = ("Unknown kernel command line parameters", "Malformed early option", "Unknown command line")

#: bytes the x86 kernel keeps of its command line, the final NUL included (COMMAND_LINE_SIZE)
COMMAND_LINE_SIZE = 2048


@dataclass(frozen=True)
class VmSpec:
    """What to boot and run."""

    kver: str  #: the installed kernel release to boot
    command: tuple[str, ...]  #: the command to run inside
    append: tuple[str, ...] = ()  #: extra kernel command line, each piece as the kernel parses it (x="a b")
    memory_mb: int = 1024  #: guest memory in MiB
    accel: Accel = Accel.AUTO  #: KVM when it works, TCG otherwise
    share: Share | None = None  #: how the host root is shared; None picks virtiofs or 9p
    timeout: float = 600.0  #: seconds the whole run may take
    cwd: str | None = None  #: working directory inside (default: the current one)
    env: tuple[tuple[str, str], ...] = ()  #: extra environment variables for the command
    runs_dir: str | None = None  #: where run directories go (default ~/.cache/kmodkit/vm-runs)
    boot_dir: str = "/boot"  #: where vmlinuz-KVER is
    modules_root: str = "/lib/modules"  #: where the kernel's module tree is
    module_paths: tuple[str, ...] = ()  #: host directories holding the guest's module files, to decode reports
    out_dir: str | None = None  #: host directory the guest may write, mounted at the same path (made if absent)
    cpus: int = 1  #: virtual CPUs (two or more to see lock contention)
    dump_on_panic: bool = False  #: write the guest's memory to RUN_DIR/vmcore when its kernel panics

    def __post_init__(self) -> None:
        if not self.command:
            raise UserError("vm run", "no command given", "name one after --, e.g. -- uname -r")
        if not 1 <= self.cpus <= 64:
            raise UserError(f"--cpus {self.cpus}", "must be between 1 and 64")
        if self.out_dir is not None and not os.path.isabs(self.out_dir):
            raise UserError(f"--out {self.out_dir}", "must be an absolute path")
        if self.memory_mb < 128:
            raise UserError(f"--memory {self.memory_mb}", "too little memory to boot", "give at least 128 (MiB)")
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise UserError(f"--timeout {self.timeout}", "must be a positive number of seconds")
        for piece in self.append:
            # the kernel's next_arg() groups by double quotes only; an open quote would swallow what follows
            if piece.count('"') % 2:
                raise UserError("--append", f"{piece!r} has an unbalanced double quote",
                                'close it: a value with spaces is written name="a b"')
            if "\0" in piece:
                raise UserError("--append", f"{piece!r} contains a NUL byte")
        for d in self.module_paths:
            if not os.path.isdir(d):
                raise UserError(f"--module-path {d}", "no such directory",
                                "pass a directory holding the module files the guest loads")
        size = len(self.cmdline.encode()) + 1
        if size > COMMAND_LINE_SIZE:
            raise UserError("--append", f"the kernel command line would be {size} bytes, over the kernel's "
                                        f"{COMMAND_LINE_SIZE} (COMMAND_LINE_SIZE)", "shorten it")

    @property
    def cmdline(self) -> str:
        """The whole kernel command line: kmodkit's own words, then ``append`` as it was given."""
        base = [DUMP_CMDLINE.get(w, w) for w in BASE_CMDLINE] if self.dump_on_panic else BASE_CMDLINE
        return " ".join((*base, *self.append))


@dataclass(frozen=True)
class VmResult:
    """What a run gave."""

    exit_status: int  #: the command's exit status (124 when it timed out)
    timed_out: bool  #: True when the run was stopped at the timeout
    run_dir: str  #: the directory with every log of the run
    accel: Accel  #: KVM or TCG
    share: Share  #: virtiofs or 9p
    boot_seconds: float | None  #: guest uptime when the command started, None when it never did
    command_seconds: float | None  #: guest time the command took, None when it did not finish
    wall_seconds: float  #: host time of the whole run, qemu start to exit
    insmod_failures: tuple[str, ...] = field(default=())  #: guest modules the init script could not load
    refused_loads: tuple[str, ...] = field(default=())  #: the guest kernel's lines telling of refused module loads
    panicked: bool = False  #: True when the guest's kernel panicked (exit_status is then EXIT_PANIC)
    cmdline_complaints: tuple[str, ...] = field(default=())  #: the kernel's lines about its command line
    reports: tuple[Diagnosis, ...] = field(default=())  #: the kernel's reports (oops, WARNING, panic), decoded
    vmcore: str | None = None  #: path of the guest's memory dump at panic (dump_on_panic), None without one
    vmcore_error: str | None = None  #: what went wrong with the dump asked for (unwritten or unreadable), else None

    @property
    def kernel_log(self) -> str:
        """Path of the guest's whole kernel log."""
        return os.path.join(self.run_dir, "kernel.log")

    def output(self) -> str:
        """The command's output, as text."""
        with open(os.path.join(self.run_dir, "output.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def to_json(self) -> dict[str, object]:
        """The result as a JSON object."""
        return {"exit_status": self.exit_status, "timed_out": self.timed_out, "run_dir": self.run_dir,
                "accel": self.accel.value, "share": self.share.value, "boot_seconds": self.boot_seconds,
                "command_seconds": self.command_seconds, "wall_seconds": round(self.wall_seconds, 3),
                "insmod_failures": list(self.insmod_failures), "refused_loads": list(self.refused_loads),
                "panicked": self.panicked, "cmdline_complaints": list(self.cmdline_complaints),
                "reports": [d.to_json() for d in self.reports], "vmcore": self.vmcore,
                "vmcore_error": self.vmcore_error}


def _default_runs_dir() -> str:
    from kmodkit._util.cachedir import cache_dir

    return cache_dir("vm-runs")


def _guest_env(extra: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if sys.prefix != sys.base_prefix:  # in a virtualenv: its scripts (kmodkit) come first, as on the host
        path = f"{sys.prefix}/bin:{path}"
    env = {"PATH": path, "HOME": "/root", "TERM": "dumb", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "KMODKIT_IN_VM": "1"}
    env.update(extra)
    return tuple(env.items())


class Vm:
    """A run to be made; construction checks that qemu, the kernel image and its modules exist."""

    def __init__(self, spec: VmSpec) -> None:
        #: what to run
        self.spec = spec
        machine = os.uname().machine
        if machine not in QEMU_BINARIES:
            raise EnvironmentNotReady(machine, "kmodkit vm boots only x86_64 kernels so far")
        binary, package = QEMU_BINARIES[machine]
        qemu = shutil.which(binary)
        if qemu is None:
            raise EnvironmentNotReady(binary, "not installed", f"install it: apt-get install {package}")
        #: the qemu binary
        self.qemu = qemu
        #: the kernel image
        self.kernel = os.path.join(spec.boot_dir, f"vmlinuz-{spec.kver}")
        #: the kernel's module tree
        self.moddir = os.path.join(spec.modules_root, spec.kver)
        if not os.path.isfile(self.kernel):
            raise NotFoundError(self.kernel, "no such kernel image",
                                f"install the kernel: apt-get install linux-image-{spec.kver}")
        if not os.path.isdir(self.moddir):
            raise NotFoundError(self.moddir, "no such module tree",
                                f"install the kernel's modules: apt-get install linux-image-{spec.kver}")

    def run(self, on_output: Callable[[bytes], None] | None = None) -> VmResult:
        """Boot, run the command, stream its output to ``on_output``, and return the result.

        Raises EnvironmentNotReady when the guest cannot reach the host's root.
        """
        spec = self.spec
        # first, so that a corrupt image (or a decompression bomb) is refused before anything starts
        image = boot_image(self.kernel, os.path.join(spec.boot_dir, f"config-{spec.kver}"))
        share = spec.share or choose_share(self.moddir)
        accel = choose_accel(spec.accel, self.qemu, self.kernel)
        runs = spec.runs_dir or _default_runs_dir()
        os.makedirs(runs, exist_ok=True)
        run_dir = tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-") + spec.kver + "-", dir=runs)
        out_dir = None
        env = spec.env
        if spec.out_dir is not None:
            os.makedirs(spec.out_dir, exist_ok=True)
            out_dir = os.path.realpath(spec.out_dir)
            env = (("KMODKIT_OUT", out_dir), *env)
        command = GuestCommand(spec.command, spec.cwd or os.getcwd(), _guest_env(env), out_dir)
        initrd = os.path.join(run_dir, "initramfs.cpio")
        with open(initrd, "wb") as f:
            f.write(build_initramfs(self.moddir, share, command, DUMP_MODULES if spec.dump_on_panic else ()))
        sock_dir = tempfile.mkdtemp(prefix="kmodkit-vm-")  # a unix socket path must stay short
        daemons: list[subprocess.Popen[bytes]] = []
        qlog = open(os.path.join(run_dir, "qemu.log"), "wb")
        try:
            args = self._qemu_args(image, run_dir, initrd, accel)
            qmp = None
            if spec.dump_on_panic:
                qmp = os.path.join(sock_dir, "qmp.sock")
                args += ["-device", "vmcoreinfo", "-qmp", f"unix:{qmp},server=on,wait=off"]
            if share is Share.VIRTIOFS:
                sock = os.path.join(sock_dir, "fs.sock")
                daemons.append(start_virtiofsd(sock, qlog))
                args += ["-object", f"memory-backend-memfd,id=mem,size={spec.memory_mb}M,share=on",
                         "-numa", "node,memdev=mem", "-chardev", f"socket,id=fs,path={sock}",
                         "-device", f"vhost-user-fs-pci,chardev=fs,tag={ROOT_TAG}"]
                if out_dir is not None:
                    out_sock = os.path.join(sock_dir, "out.sock")
                    daemons.append(start_virtiofsd(out_sock, qlog, writable=out_dir))
                    args += ["-chardev", f"socket,id=out,path={out_sock}",
                             "-device", f"vhost-user-fs-pci,chardev=out,tag={OUT_TAG}"]
            else:
                args += ["-virtfs", f"local,path=/,mount_tag={ROOT_TAG},security_model=none,readonly=on,"
                         "multidevs=remap"]
                if out_dir is not None:
                    if "," in out_dir:
                        raise UserError(f"--out {out_dir}", "qemu's -virtfs cannot take a path with a comma")
                    args += ["-virtfs", f"local,path={out_dir},mount_tag={OUT_TAG},security_model=none,"
                             "multidevs=remap"]
            log.info("booting %s (%s, %s); logs in %s", spec.kver, accel.value, share.value, run_dir)
            log.debug("qemu %s", args)
            start = time.monotonic()
            timed_out, dump_error = self._stream(args, run_dir, qlog, on_output, qmp)
            wall = time.monotonic() - start
        finally:
            for daemon in daemons:
                daemon.terminate()
                try:
                    daemon.wait(5)
                except subprocess.TimeoutExpired:
                    daemon.kill()
            qlog.close()
            shutil.rmtree(sock_dir, ignore_errors=True)
            os.unlink(initrd)
        record: dict[str, object] = {"kver": spec.kver, "command": list(spec.command), "append": list(spec.append)}
        try:
            _keep_kernel_log(run_dir)
            result = self._result(run_dir, accel, share, wall, timed_out)
            vmcore = os.path.join(run_dir, VMCORE)
            if os.path.isfile(vmcore):
                result = dataclasses.replace(result, vmcore=vmcore, vmcore_error=dump_error)
            elif spec.dump_on_panic and result.panicked:
                result = dataclasses.replace(result, vmcore_error=dump_error or "the panic's end was not seen")
        except EnvironmentNotReady as exc:  # the run record is written whatever happened
            _write_record(run_dir, {**record, "run_dir": run_dir, "error": f"{exc.problem}"})
            raise
        reports = self._reports(run_dir, result.kernel_log)
        result = dataclasses.replace(result, reports=reports,
                                     cmdline_complaints=cmdline_complaints(result.kernel_log))
        _write_record(run_dir, {**record, **result.to_json()})
        return result

    def _reports(self, run_dir: str, kernel_log: str) -> tuple[Diagnosis, ...]:
        """The kernel log's reports, decoded with the module files of --module-path and of the .ko paths
        the command line and the command's output name."""
        from kmodkit.errors import KmodkitError
        from kmodkit.klog.diagnose import Diagnosis, OopsQuery

        dirs = list(self.spec.module_paths)
        texts = list(self.spec.command)
        try:
            with open(os.path.join(run_dir, "output.log"), "rb") as f:
                texts.append(f.read(1 << 20).decode("utf-8", "replace"))
        except OSError:
            pass
        for text in texts:
            for path in _KO_PATH.findall(text):
                d = os.path.dirname(path)
                if d not in dirs and os.path.isdir(d):
                    dirs.append(d)
        query = OopsQuery(logs=(kernel_log,), module_paths=tuple(dirs), kver=self.spec.kver,
                          project=self.spec.cwd or os.getcwd())
        out = []
        for item in query.diagnose():
            if isinstance(item, KmodkitError):
                log.warning("%s: %s", item.subject, item.problem)
            elif isinstance(item, Diagnosis):
                out.append(item)
        return tuple(out)

    def _qemu_args(self, image: str, run_dir: str, initrd: str, accel: Accel) -> list[str]:
        spec = self.spec
        return [
            self.qemu, "-accel", qemu_accel(accel, spec.cpus), "-m", f"{spec.memory_mb}M", "-smp", str(spec.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", image, "-initrd", initrd, "-append", spec.cmdline,
            "-serial", f"file:{run_dir}/console.log", "-serial", "stdio",
            "-serial", f"file:{run_dir}/status", "-serial", f"file:{run_dir}/kernel.log",
        ]

    def _stream(self, args: list[str], run_dir: str, qlog: IO[bytes], on_output: Callable[[bytes], None] | None,
                qmp: str | None = None) -> tuple[bool, str | None]:
        """Run qemu until it exits or the timeout; with ``qmp``, dump the guest when its panic ends.
        Returns (timed out, why the dump failed or None)."""
        deadline = time.monotonic() + self.spec.timeout
        watch = None
        if qmp is not None:
            from kmodkit.vm.dump import PanicWatch, dump_guest

            watch = PanicWatch(os.path.join(run_dir, "console.log"))
        dump_error = None
        with open(os.path.join(run_dir, "output.log"), "wb") as out:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=qlog)
            assert proc.stdout is not None
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            timed_out = False
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        timed_out = True
                        break
                    ready = sel.select(min(left, 0.5 if watch is not None else 1.0))
                    if watch is not None and qmp is not None and watch.ended():
                        watch = None
                        dump_error = dump_guest(qmp, run_dir, deadline)
                        if dump_error is not None:
                            proc.kill()
                    if not ready:
                        continue
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    out.write(chunk)
                    if on_output is not None:
                        on_output(chunk)
            finally:
                sel.close()
                if timed_out:
                    proc.kill()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
        return timed_out, dump_error

    def _result(self, run_dir: str, accel: Accel, share: Share, wall: float, timed_out: bool) -> VmResult:
        status: dict[str, str] = {}
        failures = []
        try:
            with open(os.path.join(run_dir, "status"), encoding="utf-8", errors="replace") as f:
                for line in f:
                    key, _, value = line.strip().partition(" ")
                    if key == "insmod-failed":
                        failures.append(value)
                    elif key:
                        status[key] = value
        except FileNotFoundError:
            pass
        if status.get("share-failed") == "out":
            raise EnvironmentNotReady(self.spec.kver, f"the guest could not mount --out {self.spec.out_dir} over "
                                      f"{share.value}", f"read {run_dir}/kernel.log")
        if "share-failed" in status:
            raise EnvironmentNotReady(self.spec.kver, f"the guest could not mount the host's root over {share.value}",
                                      f"read {run_dir}/kernel.log; insmod failures: {', '.join(failures) or 'none'}")
        boot = _float(status.get("boot"))
        end = _float(status.get("end"))
        klog = os.path.join(run_dir, "kernel.log")
        if timed_out:
            return VmResult(EXIT_TIMEOUT, True, run_dir, accel, share, boot, None, wall, tuple(failures),
                            refused_loads(klog))
        if "exit" not in status and _console_panicked(run_dir):
            return VmResult(EXIT_PANIC, False, run_dir, accel, share, boot, None, wall, tuple(failures),
                            refused_loads(klog), panicked=True)
        if "exit" not in status:
            raise EnvironmentNotReady(self.spec.kver, "the guest stopped before the command finished",
                                      f"read {run_dir}/console.log and {run_dir}/qemu.log")
        took = end - boot if end is not None and boot is not None else None
        return VmResult(int(status["exit"]), False, run_dir, accel, share, boot, took, wall, tuple(failures),
                        refused_loads(klog))


#: an absolute path of a module file, in a command line or the command's output
_KO_PATH = re.compile(r"(/[\w.+@/-]+)\.ko(?:\.xz|\.zst|\.gz)?\b")
#: printk's timestamp at the start of a console line
_TIMESTAMP = re.compile(r"\[ *(\d+)\.(\d+)\]")


def _write_record(run_dir: str, record: dict[str, object]) -> None:
    from kmodkit.fileio import write_atomic

    write_atomic(os.path.join(run_dir, "result.json"), (json.dumps(record, indent=2) + "\n").encode())


def _console_panicked(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, "console.log"), "rb") as f:
            return PANIC_LINE.encode() in f.read()
    except OSError:
        return False


def console_kernel_lines(console: str) -> list[str]:
    """The kernel's log as the console shows it: the lines that carry printk's timestamp, from the last
    replay of the whole log on (a panic with panic_print=0x20 starts over at time 0, or more than a
    second back when the oldest records were overwritten; early boot's clock may step back a little)."""
    lines: list[str] = []
    last: float | None = None
    for line in console.splitlines():
        m = _TIMESTAMP.match(line)
        if m is None:
            continue
        ts = float(f"{m.group(1)}.{m.group(2)}")
        if last is not None and ts < last and (ts == 0 or last - ts > 1.0):
            lines = []
        last = ts
        lines.append(line)
    return lines


def _keep_kernel_log(run_dir: str) -> None:
    """Make ``kernel.log`` the kernel's lines of the console when the guest could not dump its log."""
    path = os.path.join(run_dir, "kernel.log")
    try:
        if os.path.getsize(path) > 0:
            return
        with open(os.path.join(run_dir, "console.log"), "rb") as f:
            console = f.read().decode("utf-8", "replace")
    except OSError:
        return
    from kmodkit.fileio import write_atomic

    write_atomic(path, "".join(line + "\n" for line in console_kernel_lines(console)).encode())


def cmdline_complaints(kernel_log: str) -> tuple[str, ...]:
    """The kernel log's complaints about the command line ("Unknown kernel command line parameters")."""
    out = []
    try:
        with open(kernel_log, encoding="utf-8", errors="replace") as f:
            for line in f:
                if any(c in line for c in CMDLINE_COMPLAINTS):
                    out.append(re.sub(r"^(<\d+>)?(\[[^\]]*\] )?", "", line.rstrip("\n")))
    except OSError:
        return ()
    return tuple(out)


def refused_loads(kernel_log: str) -> tuple[str, ...]:
    """The lines of a guest's kernel log that tell why a module load was refused (the loader's rules of
    :mod:`kmodkit.loader.explain`), in order; () when there are none or the log is missing."""
    import re

    from kmodkit.loader.explain import KMSG_RULES, Reason

    rules = [r.pattern for r in KMSG_RULES if r.reason is not Reason.INVALID_PARAMETER]
    out = []
    try:
        with open(kernel_log, encoding="utf-8", errors="replace") as f:
            for line in f:
                text = re.sub(r"^<\d+>(\[[^\]]*\] )?", "", line.rstrip("\n"))
                if any(p.search(text) for p in rules):
                    out.append(text)
    except OSError:
        return ()
    return tuple(out)


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
