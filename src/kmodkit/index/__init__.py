"""The module index of a kernel tree, and resolution of names as modprobe does it.

:class:`~kmodkit.index.lookup.ModuleTree` answers "which module file is
NAME / ALIAS in this kernel tree" the way libkmod does.
"""
