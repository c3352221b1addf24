"""Loading and unloading modules through the kernel's syscalls, with plans, rollback and explanations.

This is the risky part of kmodkit: it changes the running kernel.  It refuses to
run where the kernel has no module support (no ``/proc/modules``) and is meant
to be exercised inside a kernel booted with :mod:`kmodkit.vm`.
"""
