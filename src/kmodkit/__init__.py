"""kmodkit: the whole life of an out-of-tree Linux kernel module.

Subpackages follow the domains of that life: :mod:`kmodkit.modfile` reads
module files, :mod:`kmodkit.signing` signs and verifies them,
:mod:`kmodkit.index` models depmod and modprobe, :mod:`kmodkit.kbuild`
builds, :mod:`kmodkit.vm` boots kernels, :mod:`kmodkit.loader` and
:mod:`kmodkit.runtime` load and watch modules, and :mod:`kmodkit.cli` is the
thin command-line leaf over all of them.
"""

__version__ = "0.1.0"
