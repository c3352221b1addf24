"""Booting an installed kernel under QEMU and running a command inside it.

The guest boots from a small initramfs kmodkit writes at run time: a static
busybox, the few modules the guest needs to reach the host's root (taken from
the target kernel's own tree, decompressed), and an init script.  The host's
root filesystem is shared read-only over virtiofs (every Debian kernel has it)
or 9p, and the command runs chrooted into it, so kmodkit and its virtualenv work
inside.  Each run keeps its logs in a directory of its own.
"""
