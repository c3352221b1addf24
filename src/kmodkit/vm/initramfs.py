"""The guest's initramfs: a newc cpio archive with busybox, modules and an init script."""

from __future__ import annotations

import enum
import os
import shlex
import shutil
import stat
from dataclasses import dataclass

from kmodkit.errors import EnvironmentNotReady, NotFoundError
from kmodkit.index.lookup import ModuleTree
from kmodkit.modfile.module import ModuleFile, module_name

#: the busybox the guest runs; it must be static (the initramfs has no libc)
BUSYBOX_CANDIDATES = ("/usr/bin/busybox", "/bin/busybox")


class Share(enum.Enum):
    """How the host's root reaches the guest."""

    VIRTIOFS = "virtiofs"  #: vhost-user-fs with virtiofsd (needs root on the host)
    NINEP = "9p"  #: qemu's own 9p server (the kernel must have 9p; Debian's cloud kernels do not)


@dataclass(frozen=True)
class ShareRecipe:
    """What a share needs inside the guest."""

    modules: tuple[str, ...]  #: modules to load, by name, dependencies resolved from the tree
    mount: tuple[str, ...]  #: busybox mount arguments (after ``mount``) that mount the share on /mnt


#: modules the guest uses when the tree has them: overlay makes the host's /tmp, /var/tmp and /root
#: visible and writable inside (a tmpfs upper layer over the read-only share)
OPTIONAL_MODULES = ("overlay",)

#: tag under which the host's root is exported
ROOT_TAG = "hostroot"

#: tag under which ``vm run --out DIR`` exports DIR, the one host directory the guest may write
OUT_TAG = "kmodkit-out"

#: busybox mount arguments (before the mount point) that mount the --out directory, per share
OUT_MOUNTS: dict[Share, tuple[str, ...]] = {
    Share.VIRTIOFS: ("-t", "virtiofs", OUT_TAG),
    Share.NINEP: ("-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=512000", OUT_TAG),
}

SHARE_RECIPES: dict[Share, ShareRecipe] = {
    Share.VIRTIOFS: ShareRecipe(("virtio_pci", "virtiofs"), ("-t", "virtiofs", "-o", "ro", ROOT_TAG, "/mnt")),
    Share.NINEP: ShareRecipe(("virtio_pci", "9pnet_virtio", "9p"),
                             ("-t", "9p", "-o", "ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose",
                              ROOT_TAG, "/mnt")),
}


class CpioWriter:
    """Writes a newc ("070701") cpio archive, as the kernel's initramfs unpacker reads it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._ino += 1
        head = b"070701" + b"".join(b"%08X" % v for v in fields) + encoded
        self._parts.append(head + b"\0" * (-len(head) % 4))
        self._parts.append(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        """Add a directory (parents first)."""
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file."""
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        """Add a symbolic link."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int) -> None:
        """Add a character device node."""
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def to_bytes(self) -> bytes:
        """The archive with its trailer."""
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)


def find_busybox() -> str:
    """The static busybox to put in the guest; EnvironmentNotReady when absent."""
    for path in (shutil.which("busybox") or "", *BUSYBOX_CANDIDATES):
        if path and os.path.isfile(path):
            with open(path, "rb") as f:
                head = f.read(4096)
            # a dynamic executable names its loader in PT_INTERP
            if b"ld-linux" not in head and b"ld-musl" not in head:
                return path
    raise EnvironmentNotReady("busybox", "no static busybox found", "install it: apt-get install busybox-static")


def minimal_initramfs(script: bytes) -> bytes:
    """A busybox-only initramfs whose init runs ``script`` (shell lines) and powers off: for probes and baselines."""
    cpio = CpioWriter()
    for d in ("bin", "dev"):
        cpio.directory(d)
    with open(find_busybox(), "rb") as f:
        cpio.file("bin/busybox", f.read(), 0o755)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("init", b"#!/bin/busybox sh\n" + script + b"\n/bin/busybox poweroff -f\n", 0o755)
    return cpio.to_bytes()


def share_modules(moddir: str, share: Share, optional: tuple[str, ...] = ()) -> list[tuple[str, bytes]]:
    """(name, uncompressed module image) for what the guest loads to reach ``share``, and the ``optional``
    modules the tree has, in load order.

    Built-in modules are left out.  Raises NotFoundError when the tree lacks one the share needs.
    """
    tree = ModuleTree(moddir)
    wanted = list(SHARE_RECIPES[share].modules) + [m for m in (*OPTIONAL_MODULES, *optional)
                                                   if tree.path_of(m) is not None]
    paths: list[str] = []
    for name in wanted:
        path = tree.path_of(name)
        if path is None:
            if tree.is_builtin(name):
                continue
            raise NotFoundError(name, f"no such module in {moddir}", "check the name with 'kmodkit info'")
        # modules.dep lists the closest dependency first: load the list backwards
        for p in [*reversed(tree.dependencies(name)), path]:
            if p not in paths:
                paths.append(p)
    out = []
    for p in paths:
        with ModuleFile.open(p) as mf:
            out.append((module_name(p), bytes(mf.data)))
    return out


@dataclass(frozen=True)
class GuestCommand:
    """What the init script runs once the host's root is mounted."""

    argv: tuple[str, ...]  #: the command and its arguments
    cwd: str  #: working directory inside the guest (falls back to /)
    env: tuple[tuple[str, str], ...]  #: the whole environment of the command
    out_dir: str | None = None  #: host directory shared writable, mounted at the same path inside


#: serial ports of the guest: the kernel console, the command's output, the status lines, the kernel log
CONSOLE, OUTPUT, STATUS, KLOG = "ttyS0", "ttyS1", "ttyS2", "ttyS3"


def init_script(modules: list[str], share: Share, command: GuestCommand) -> str:
    """The guest's /init: load modules, mount the share, run the command chrooted, report, power off."""
    q = shlex.quote
    mount = " ".join(q(a) for a in SHARE_RECIPES[share].mount)
    env = " ".join(q(f"{k}={v}") for k, v in command.env)
    argv = " ".join(q(a) for a in command.argv)
    mods = " ".join(q(m) for m in modules)
    out = ""
    if command.out_dir is not None:
        # after the overlays: the directory is seen at its host path, even under /tmp
        out_mount = " ".join(q(a) for a in OUT_MOUNTS[share])
        out = (f"$B mount {out_mount} $R{q(command.out_dir)} || {{ say \"share-failed out\"; finish; }}\n")
    return f"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for t in {OUTPUT} {STATUS} {KLOG}; do $B stty -F /dev/$t raw -echo 2>/dev/null; done
say() {{ echo "$*" > /dev/{STATUS}; }}
finish() {{ $B dmesg -r > /dev/{KLOG}; $B sync; $B poweroff -f; }}
for m in {mods}; do $B insmod /lib/kmodkit/$m.ko || say "insmod-failed $m"; done
if ! $B mount {mount}; then say "share-failed {share.value}"; finish; fi
R=/mnt
$B mount -t proc proc $R/proc
$B mount -t sysfs sys $R/sys
$B mount -t devtmpfs dev $R/dev
$B mount -t securityfs securityfs $R/sys/kernel/security 2>/dev/null
$B mount -t tmpfs tmpfs $R/run
$B mount -t tmpfs ovl /ovl
for d in tmp var/tmp root; do
    [ -d $R/$d ] || continue
    $B mkdir -p /ovl/$d/u /ovl/$d/w
    $B mount -t overlay overlay -o lowerdir=$R/$d,upperdir=/ovl/$d/u,workdir=/ovl/$d/w $R/$d 2>/dev/null \
        || $B mount -t tmpfs tmpfs $R/$d
done
{out}$B ip link set lo up 2>/dev/null
say "boot $($B cut -d' ' -f1 /proc/uptime)"
$B chroot $R /usr/bin/env -i {env} /bin/sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' \\
    sh {q(command.cwd)} {argv} > /dev/{OUTPUT} 2>&1 < /dev/null
say "exit $?"
say "end $($B cut -d' ' -f1 /proc/uptime)"
finish
"""


def build_initramfs(moddir: str, share: Share, command: GuestCommand, optional: tuple[str, ...] = ()) -> bytes:
    """The whole initramfs for one run: busybox, the share's modules from ``moddir`` (and the ``optional``
    ones it has), /init."""
    if not os.path.isdir(moddir):
        raise NotFoundError(moddir, "no such module tree",
                            f"install the kernel: apt-get install linux-image-{os.path.basename(moddir)}")
    cpio = CpioWriter()
    for d in ("bin", "dev", "proc", "sys", "mnt", "ovl", "lib", "lib/kmodkit"):
        cpio.directory(d)
    with open(find_busybox(), "rb") as f:
        cpio.file("bin/busybox", f.read(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.chardev("dev/console", 5, 1)  # the kernel opens it for /init before devtmpfs is mounted
    names = []
    for name, image in share_modules(moddir, share, optional):
        cpio.file(f"lib/kmodkit/{name}.ko", image)
        names.append(name)
    cpio.file("init", init_script(names, share, command).encode(), 0o755)
    return cpio.to_bytes()
