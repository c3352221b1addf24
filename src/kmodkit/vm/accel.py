"""KVM or TCG: use KVM when it really works here, which only a short boot can tell.

An openable /dev/kvm is not enough: under nested virtualization KVM may accept
the VM and then hang or fail on MSRs.  The probe boots the target kernel with a
one-line init under KVM and waits a few seconds for its word; the answer is
cached per host kernel and qemu binary.
"""

from __future__ import annotations

import enum
import logging
import os
import subprocess
import tempfile

from kmodkit.fileio import write_atomic

log = logging.getLogger(__name__)

#: seconds the probe waits for the guest's word under KVM (a working KVM answers in about one)
PROBE_TIMEOUT = 8.0
PROBE_WORD = b"kmodkit-kvm-works"


class Accel(enum.Enum):
    """QEMU's accelerator."""

    AUTO = "auto"  #: KVM when the probe says it works, TCG otherwise
    KVM = "kvm"  #: hardware virtualization
    TCG = "tcg"  #: QEMU's emulator: slower, works everywhere


def qemu_accel(accel: Accel, cpus: int) -> str:
    """QEMU's ``-accel`` value for a guest of ``cpus`` virtual CPUs.

    Several CPUs under TCG run in one host thread, in turns (``thread=single``), not one thread each: ftrace
    rewrites the kernel's text while the other CPUs run it, and with a thread per virtual CPU a booted 6.1 guest
    tracing the example hung in three of five runs here (one CPU stopped answering, the other sat in a soft
    lockup waiting for it).  In turns the guest still has every CPU, and two writers still contend on a lock.
    """
    if accel is Accel.TCG and cpus > 1:
        return "tcg,thread=single"
    return accel.value


def _cache_file(qemu: str) -> str:
    from kmodkit._util.cachedir import cache_dir

    st = os.stat(qemu)
    key = f"{os.uname().release}-{st.st_ino}-{int(st.st_mtime)}"
    return cache_dir(f"kvm-probe-{key}")


def kvm_openable() -> bool:
    """Whether /dev/kvm exists and this user may open it."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def probe_kvm(qemu: str, kernel: str) -> bool:
    """Whether ``kernel`` boots under KVM within :data:`PROBE_TIMEOUT` seconds (cached per host)."""
    cache = _cache_file(qemu)
    try:
        with open(cache) as f:
            return f.read().strip() == "kvm"
    except OSError:
        pass
    from kmodkit.vm.initramfs import minimal_initramfs

    works = False
    with tempfile.NamedTemporaryFile(suffix=".cpio") as initrd:
        initrd.write(minimal_initramfs(b"echo " + PROBE_WORD))
        initrd.flush()
        args = [qemu, "-accel", "kvm", "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none",
                "-no-reboot", "-kernel", kernel, "-initrd", initrd.name, "-serial", "stdio",
                "-append", "console=ttyS0 quiet panic=-1"]
        try:
            done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT)
            works = PROBE_WORD in done.stdout
        except subprocess.TimeoutExpired:
            works = False
    log.info("KVM %s on this host", "works" if works else "does not work")
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    write_atomic(cache, b"kvm\n" if works else b"tcg\n", durable=False)
    return works


def choose_accel(wanted: Accel, qemu: str, kernel: str) -> Accel:
    """The accelerator to use: ``wanted`` unless AUTO; then KVM when it works, else TCG.

    The environment variable KMODKIT_VM_ACCEL (kvm, tcg) overrides AUTO.
    """
    if wanted is Accel.AUTO:
        forced = os.environ.get("KMODKIT_VM_ACCEL", "")
        if forced in ("kvm", "tcg"):
            return Accel(forced)
    if wanted is not Accel.AUTO:
        return wanted
    if kvm_openable() and probe_kvm(qemu, kernel):
        return Accel.KVM
    return Accel.TCG
