"""Kernels from the distro's archive, not installed: listed, fetched into kmodkit's cache, pruned.

:mod:`tool` drives the package tool (the table ``archives.toml``), :mod:`fetch` downloads and unpacks a
kernel's packages, :mod:`store` knows the cache's layout.  A fetched kernel is found by the one seam
:func:`kmodkit.kbuild.kernels.kernel`, so every ``-k KVER`` takes it as it takes an installed one.
"""
