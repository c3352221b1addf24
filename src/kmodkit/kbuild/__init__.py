"""Kbuild for out-of-tree modules: the doctor, project templates, the manifest, the builder.

* :mod:`.platform`: distro family (os-release) and cloud (DMI), from tables in data.
* :mod:`.kernels`: installed kernels, their headers, config and compiler.
* :mod:`.doctor`: is this machine ready to build for these kernels, and how to fix it.
* :mod:`.project`: ``kmodkit new``, a project that builds as it is.
* :mod:`.names`: the rule for a project's module name (``taken_names.toml``: names the kernel headers use).
* :mod:`.manifest`: ``kmodkit.toml``, its one reader (build, lint, load, health and the exporter use it).
* :mod:`.builder`: ``kmodkit build``, parallel over kernels, cached.
* :mod:`.jobserver`: one GNU make jobserver shared by every kernel's make.
* :mod:`.dkms`: ``kmodkit dkms export``, a DKMS source tree from a project.
* :mod:`.dkmsconf`: dkms.conf read as data (never through a shell): a DKMS tree as a project.
"""
