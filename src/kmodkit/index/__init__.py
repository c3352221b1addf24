"""The module index of a kernel tree: depmod's files and modprobe's resolution, identical to kmod 30 or 34.

Writing an index (what ``depmod`` does)::

    from kmodkit.index.depmod import Depmod
    from kmodkit.index.depfiles import render_all, write_index

    dm = Depmod("6.1.0-13-amd64", basedir="/srv/image", symvers=None, errsyms=False)
    result = dm.compute()            # DepmodResult; DependencyCycleError on a loop
    write_index(render_all(result), dm.dirname)   # all files or none

or, as ``kmodkit index`` does, with the cache beside the index (a run that
finds nothing changed writes nothing) and worker processes::

    from kmodkit.index.indexer import Indexer

    ix = Indexer("6.1.0-13-amd64", basedir="/srv/image")
    if ix.up_to_date() is None:
        result, files = ix.rebuild()
        ix.write(result, files)

``result.modules`` are :class:`~kmodkit.index.depmod.Module` records in
modules.dep order (``deps`` = direct dependencies), ``result.symbols`` maps
each exported symbol to its module (None: the kernel), ``result.issues``
lists unknown symbols (``depmod -e``), ``result.failures`` unreadable files.

Planning a load (what ``modprobe`` does, for the loader)::

    from kmodkit.index.config import ModprobeConfig
    from kmodkit.index.lookup import ModuleTree, kernel_dir
    from kmodkit.index.resolver import Resolver, StepKind

    moddir = kernel_dir("6.1.0-13-amd64", None)
    tree = ModuleTree(moddir, ModprobeConfig.load(moddir))   # modprobe.d + /proc/cmdline
    probe = Resolver(tree).probe_list("ext4")   # ProbeList; probe.not_found when nothing matched
    for step in probe.steps:                 # in load order
        step.kind                            # StepKind.INSMOD / BUILTIN / INSTALL / NONE
        step.path, step.options, step.command, step.reason   # StepReason.DEPENDENCY, SOFTDEP_PRE, ...
        step.required                        # libkmod's "required": the target and its modules.dep deps
    probe.missing                            # files modules.dep names that are not there
    probe.show_depends()                     # exactly modprobe --show-depends' lines

:class:`~kmodkit.loader.plan.Planner` wraps a probe list into the loader's
``LoadPlan`` (loaded modules marked, parameters joined).

``Resolver`` also answers ``weakdeps(name)`` (kmod 33+), ``reverse_dependencies(name)``, ``why(a, b)``,
``direct_dependencies(name)``, ``tree_lines(name)`` and ``softdep_cycles(name)``.
``ModuleTree.lookup(alias)`` is libkmod's seven-step lookup (config aliases,
modules.dep.bin, symbols, install commands, modules.alias.bin, built-in names
and aliases), used by ``kmodkit info -k``.  :mod:`kmodkit.index.trie` reads
and writes kmod's ``.bin`` index format.
"""
