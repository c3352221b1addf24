"""One QEMU run: boot a kernel with kmodkit's initramfs, run a command, keep every log.

A run directory holds ``console.log`` (the kernel's console), ``output.log``
(the command's output, also streamed), ``kernel.log`` (the guest's whole
kernel log, ``dmesg -r``, dumped after the command), ``status`` (boot and exit
lines from the init script), ``qemu.log`` and ``result.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from kmodkit.errors import EnvironmentNotReady, NotFoundError, UserError
from kmodkit.vm.accel import Accel, choose_accel
from kmodkit.vm.kernel_image import boot_image
from kmodkit.vm.initramfs import OUT_TAG, ROOT_TAG, GuestCommand, Share, build_initramfs
from kmodkit.vm.share import choose_share, start_virtiofsd

log = logging.getLogger(__name__)

#: the QEMU system emulator per host machine, with the package that ships it
QEMU_BINARIES: dict[str, tuple[str, str]] = {
    "x86_64": ("qemu-system-x86_64", "qemu-system-x86"),
}

#: exit status reported when the command ran out of time (as timeout(1) does)
EXIT_TIMEOUT = 124

#: the kernel command line every run starts with; the user's ``append`` text follows it
BASE_CMDLINE = ("console=ttyS0", "quiet", "panic=-1", "rdinit=/init", "8250.nr_uarts=4")

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
    out_dir: str | None = None  #: host directory the guest may write, mounted at the same path (made if absent)
    cpus: int = 1  #: virtual CPUs (two or more to see lock contention)

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
        size = len(self.cmdline.encode()) + 1
        if size > COMMAND_LINE_SIZE:
            raise UserError("--append", f"the kernel command line would be {size} bytes, over the kernel's "
                                        f"{COMMAND_LINE_SIZE} (COMMAND_LINE_SIZE)", "shorten it")

    @property
    def cmdline(self) -> str:
        """The whole kernel command line: kmodkit's own words, then ``append`` as it was given."""
        return " ".join((*BASE_CMDLINE, *self.append))


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
                "insmod_failures": list(self.insmod_failures)}


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
            f.write(build_initramfs(self.moddir, share, command))
        sock_dir = tempfile.mkdtemp(prefix="kmodkit-vm-")  # a unix socket path must stay short
        daemons: list[subprocess.Popen[bytes]] = []
        qlog = open(os.path.join(run_dir, "qemu.log"), "wb")
        try:
            args = self._qemu_args(image, run_dir, initrd, accel)
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
            timed_out = self._stream(args, run_dir, qlog, on_output)
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
        result = self._result(run_dir, accel, share, wall, timed_out)
        with open(os.path.join(run_dir, "result.json"), "w") as f:
            json.dump({"kver": spec.kver, "command": list(spec.command), "append": list(spec.append),
                       **result.to_json()}, f, indent=2)
        return result

    def _qemu_args(self, image: str, run_dir: str, initrd: str, accel: Accel) -> list[str]:
        spec = self.spec
        return [
            self.qemu, "-accel", accel.value, "-m", f"{spec.memory_mb}M", "-smp", str(spec.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", image, "-initrd", initrd, "-append", spec.cmdline,
            "-serial", f"file:{run_dir}/console.log", "-serial", "stdio",
            "-serial", f"file:{run_dir}/status", "-serial", f"file:{run_dir}/kernel.log",
        ]

    def _stream(self, args: list[str], run_dir: str, qlog: IO[bytes], on_output: Callable[[bytes], None] | None
                ) -> bool:
        deadline = time.monotonic() + self.spec.timeout
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
                    if not sel.select(min(left, 1.0)):
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
        return timed_out

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
        if timed_out:
            return VmResult(EXIT_TIMEOUT, True, run_dir, accel, share, boot, None, wall, tuple(failures))
        if "exit" not in status:
            raise EnvironmentNotReady(self.spec.kver, "the guest stopped before the command finished",
                                      f"read {run_dir}/console.log and {run_dir}/qemu.log")
        took = end - boot if end is not None and boot is not None else None
        return VmResult(int(status["exit"]), False, run_dir, accel, share, boot, took, wall, tuple(failures))


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
