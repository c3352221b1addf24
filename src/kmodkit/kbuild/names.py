"""The rule for a module project's name: what ``kmodkit new`` accepts and what a kmodkit.toml may name.

The name becomes the C file's name, KBUILD_MODNAME, the prefix of the identifiers the template
defines (``NAME_init``, ``NAME_exit``, ``NAME_count``, ``NAME_greetings``) and the header guard
``NAME_H``; :func:`name_problem` refuses every name for which one of those cannot be built or loaded.
Comparing names of modules that exist (``-`` and ``_`` alike) is
:func:`kmodkit.modfile.module.normalize_name`'s job, not this module's.
"""

from __future__ import annotations

import functools
import re
import tomllib
from importlib import resources

#: the kernel keeps 55 characters of a module's name (MODULE_NAME_LEN is 64 - sizeof(unsigned long))
MAX_NAME = 55
#: a C identifier
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: C11 keywords and the GNU spellings gcc reserves: a project named so defines nothing under that name, but
#: the name is the module's identity in C code and scripts, and a reader takes it for the keyword
C_KEYWORDS = frozenset("""
    auto break case char const continue default do double else enum extern float for goto if inline int long
    register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
    _Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert _Thread_local
    asm typeof __asm__ __typeof__ __inline__ __restrict__ __attribute__ __extension__ __label__ __auto_type
""".split())
#: names the kernel has taken without a header saying so: name -> why a module cannot have it
RESERVED = {
    # /sys/module/kernel holds the kernel's own parameters (kernel/params.c); mod_sysfs_init() refuses a
    # module of that name as "already loaded"
    "kernel": "/sys/module/kernel is the kernel's own (its built-in parameters); the module would not load",
}


@functools.cache
def taken_names() -> dict[str, str]:
    """Names whose template identifiers the kernel's headers already declare: name -> the clashing identifier.

    The table is ``taken_names.toml``, collected from real kernel headers (its header says how).
    """
    text = resources.files("kmodkit.kbuild").joinpath("taken_names.toml").read_text()
    return dict(tomllib.loads(text)["taken"])


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a module project's name, or None when it can."""
    if not name:
        return "is empty"
    if not _IDENTIFIER.fullmatch(name):
        return "is not a C identifier (letters, digits and _, not starting with a digit)"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; the kernel keeps {MAX_NAME}"
    if name in C_KEYWORDS:
        return "is a C keyword"
    if name.startswith("_"):
        # C11 7.1.3: identifiers with file scope that begin with _ are reserved; "_" itself makes the template's
        # _init/_exit the kernel's __init/__exit macros
        return "starts with _: the names the module defines (_NAME_init, ...) are reserved to the compiler and kernel"
    reason = RESERVED.get(name)
    if reason is not None:
        return f"is reserved: {reason}"
    clash = taken_names().get(name)
    if clash is None:  # the header guard is NAME_H in upper case, whatever the name's case
        guard = taken_names().get(name.lower())
        clash = guard if guard is not None and guard.endswith("(a header guard)") else None
    if clash is not None:
        return f"makes the module define {clash}, a name the kernel's headers already use"
    return None
