"""The functions of a loaded module, and which of them ftrace can trace.

A module's functions are its text symbols in /proc/kallsyms (``name [module]``).
ftrace can trace those listed in tracefs' ``available_filter_functions``: a
function the compiler inlined has no symbol at all, and one marked ``notrace``
(or placed in ``.noinstr.text``) has a symbol but no ``__fentry__`` call to patch.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

from kmodkit.errors import NotFoundError, UserError
from kmodkit.modfile.module import normalize_name
from kmodkit.runtime.modules import KernelModules
from kmodkit.trace.tracefs import TraceFs

log = logging.getLogger(__name__)

#: symbol prefixes that are not functions of their own (6.1+ padding before each function, kCFI hashes)
_NOT_FUNCTIONS = ("__pfx_", "__cfi_")


@dataclass(frozen=True)
class ModuleFunctions:
    """A loaded module's functions, split by whether ftrace can trace them."""

    module: str  #: the module's name as the kernel spells it (dashes as underscores)
    traceable: tuple[str, ...]  #: chosen functions ftrace can trace, sorted
    untraceable: tuple[str, ...]  #: chosen functions with a symbol that ftrace cannot trace (notrace, noinstr)


def loaded_module(name: str, modules: KernelModules | None = None) -> str:
    """The kernel's name for module ``name``; NotFoundError with the fix when it is not loaded."""
    kname = normalize_name(name)
    found = (modules or KernelModules()).find(kname)
    if found is None:
        raise NotFoundError(kname, "is not loaded", f"load it first: kmodkit load {kname} (or insmod PATH/{kname}.ko)")
    return kname


def kallsyms_functions(module: str, kallsyms: str = "/proc/kallsyms") -> set[str]:
    """The text symbols /proc/kallsyms lists for ``module``; empty when it lists none."""
    tag = f"[{module}]"
    out = set()
    with open(kallsyms, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.rstrip().endswith(tag):
                continue
            fields = line.split()
            if len(fields) >= 4 and fields[1] in ("t", "T") and not fields[2].startswith(_NOT_FUNCTIONS):
                out.add(fields[2])
    return out


def filter_functions(fs: TraceFs, module: str) -> set[str]:
    """The functions of ``module`` that ftrace can trace (available_filter_functions)."""
    tag = f"[{module}]"
    out = set()
    for line in fs.read("available_filter_functions").splitlines():
        if line.endswith(tag):
            out.add(line.split()[0])
    return out


def choose_functions(fs: TraceFs, module: str, globs: tuple[str, ...] = ("*",),
                     kallsyms: str = "/proc/kallsyms") -> ModuleFunctions:
    """The functions of ``module`` that match ``globs``, split into traceable and not.

    Raises UserError naming the fix when a glob matches nothing, or when it
    matches only functions ftrace cannot trace.
    """
    symbols = kallsyms_functions(module, kallsyms)
    traceable_all = filter_functions(fs, module)
    known = symbols | traceable_all
    chosen: set[str] = set()
    for glob in globs:
        matched = {f for f in known if fnmatch.fnmatchcase(f, glob)}
        if not matched:
            raise UserError(f"--functions {glob}", f"matches no function of {module}: inlined by the compiler, "
                            "optimised away, or misspelled",
                            "check the names in /proc/kallsyms; mark a function noinline to trace it")
        if not matched & traceable_all:
            names = ", ".join(sorted(matched)[:5])
            raise UserError(f"--functions {glob}", f"{names}: ftrace cannot trace it (marked notrace or "
                            "noinstr, or an __exit function)", "trace a function that calls it, or remove notrace")
        chosen |= matched
    untraceable = sorted(chosen - traceable_all)
    if untraceable:
        # __exit functions and their cleanup_module alias are never traceable: only worth a word when named
        (log.info if globs == ("*",) else log.warning)("%s: not traceable (notrace or noinstr): %s", module, ", ".join(untraceable))
    return ModuleFunctions(module, tuple(sorted(chosen & traceable_all)), tuple(untraceable))
