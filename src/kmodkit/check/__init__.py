"""Will this module load on that kernel, and why not? The kernel's verdict predicted from files.

* :mod:`~kmodkit.check.target`: a target kernel's facts (vermagic, struct module size, exports, keys);
* :mod:`~kmodkit.check.elfcheck`: the kernel's ELF checks, in its order;
* :mod:`~kmodkit.check.checker`: ``load_module()`` replayed: errno, log lines, taints, the fix;
* :mod:`~kmodkit.check.run`: many modules × many kernels (``kmodkit check``).

Nothing here loads anything: every fact comes from files.
"""
