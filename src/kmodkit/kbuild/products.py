"""What one project's make is given beyond M=, and what it produced: the modules, Module.symvers.

Kbuild stays the authority on what is built; the manifest names the modules it must build
(:class:`kmodkit.kbuild.manifest.ModuleSpec`).  Before make runs, :func:`add_module_flags` appends the
manifest's include paths and cflags to the build copy's Kbuild as ``CFLAGS_obj.o`` lines (the project is
never touched); after it, :func:`built_modules` reads make's ``modules.order`` and :func:`disagreement` says
where make and the manifest part ways.  :func:`undefined_hint` names the kmodkit project that exports a
symbol modpost called undefined; :func:`unsigned_sha256` lets a module signed since its build count as built.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kmodkit.kbuild import inputs
from kmodkit.kbuild.manifest import MANIFEST, Manifest

#: modpost: ERROR: modpost: "SYMBOL" [PATH.ko] undefined!
_UNDEFINED = re.compile(r'"(?P<sym>[^"]+)" \[(?P<module>[^\]]+)\] undefined!')
#: the line that starts what kmodkit appends to a copy's Kbuild
MARK = "# --- added by kmodkit build from kmodkit.toml (include, cflags) ---"


@dataclass(frozen=True)
class Product:
    """One module make built."""

    name: str  #: the module's name (its file name without .ko)
    path: Path  #: the .ko in the build copy


def add_module_flags(manifest: Manifest, copy: Path, project: Path, at: Path | None = None) -> None:
    """Append each module's include paths and cflags to the Kbuild (else Makefile) of its directory in ``copy``.

    An include path inside the project is taken from the copy, one outside it (another project's headers) as
    it is.  Nothing is written for a module that has neither.  ``at`` is where make will see the copy when
    that is not ``copy`` itself (``kmodkit kmm`` gives ``$(M)``: the directory its image builds in).
    """
    seen = copy if at is None else at

    def include(real: Path, module_dir: Path) -> str:
        inside = real == project or project in real.parents
        return f"-I{seen / real.relative_to(project) if inside else real}"

    for subdir, added in flag_lines(manifest, project, include).items():
        append_to_kbuild(copy / subdir if subdir else copy, added)


def flag_lines(manifest: Manifest, project: Path, include: Callable[[Path, Path], str]) -> dict[str, list[str]]:
    """Module subdir ("" for the project's own) -> its ``CFLAGS_obj.o += ...`` lines (include paths, cflags).

    ``include(real, module_dir)`` spells the -I flag of the include directory ``real`` for the Kbuild in
    ``module_dir`` (both absolute).  Modules with neither include paths nor cflags get no line.
    """
    lines: dict[str, list[str]] = {}
    for m in manifest.modules:
        module_dir = project / m.subdir if m.subdir else project
        flags = [include(Path(os.path.normpath(project / inc)), module_dir) for inc in m.include]
        flags += m.cflags
        if flags:
            lines.setdefault(m.subdir, []).extend(f"CFLAGS_{obj} += {' '.join(flags)}" for obj in m.objects())
    return lines


def append_to_kbuild(directory: Path, added: list[str], mark: str = MARK) -> None:
    """Append ``added`` (after the line ``mark``) to the Kbuild of ``directory``, else its Makefile."""
    kbuild = directory / "Kbuild"
    if not kbuild.is_file():
        kbuild = directory / "Makefile"
    text = kbuild.read_text() if kbuild.is_file() else ""
    kbuild.write_text(text + ("\n" if text and not text.endswith("\n") else "") + mark + "\n"
                      + "\n".join(added) + "\n")


def include_paths(manifest: Manifest, project: Path) -> list[Path]:
    """The directories outside the project that the modules include from (they must be make-safe)."""
    out = []
    for m in manifest.modules:
        for inc in m.include:
            real = Path(os.path.normpath(project / inc))
            if not (real == project or project in real.parents):
                out.append(real)
    return out


def built_modules(copy: Path) -> list[Product]:
    """The modules make built in ``copy``, in modules.order's order; every .ko found when it has no modules.order.

    modules.order names them by absolute ``.ko`` path (6.1) or by ``.o`` path relative to the build (later
    kernels write objects there); each is taken as the ``.ko`` beside it.
    """
    order = copy / "modules.order"
    out: list[Product] = []
    try:
        entries = [e.strip() for e in order.read_text().splitlines() if e.strip()]
    except OSError:
        entries = [str(p) for p in sorted(copy.rglob("*.ko"))]
    for entry in entries:
        p = Path(entry)
        p = (p if p.is_absolute() else copy / p).with_suffix(".ko")
        if p.is_file():
            out.append(Product(p.stem, p))
    return out


def disagreement(manifest: Manifest, products: list[Product]) -> str | None:
    """How what make built and what the manifest names differ (one sentence with the fix); None when they agree."""
    built = [p.name for p in products]
    named = [m.name for m in manifest.modules]
    extra = [n for n in built if n not in named]
    missing = [n for n in named if n not in built]
    if not extra and not missing:
        return None
    parts = []
    if extra:
        # a DKMS tree's description is its dkms.conf (kmodkit.kbuild.dkmsconf), with its own way to name a module
        add = f"add BUILT_MODULE_NAME[{len(named)}]=\"{extra[0]}\"" if manifest.path.name == "dkms.conf" else \
            f"add a [[module]] with name = \"{extra[0]}\""
        parts.append(f"make built {', '.join(f'{n}.ko' for n in extra)}, which {manifest.path.name} does not name "
                     f"({add})")
    if missing:
        parts.append(f"{manifest.path.name} names {', '.join(missing)}, which make did not build "
                     f"(add it to obj-m in the Kbuild, or remove its [[module]])")
    return "; ".join(parts)


def rewrite_symvers(text: str, copy: Path, project: Path) -> str:
    """Module.symvers with the build copy's paths made the project's (the module column)."""
    return text.replace(f"{copy}/", f"{project}/")


def undefined_symbols(log: str) -> list[str]:
    """The symbols modpost called undefined in a build log, in order, each once."""
    return list(dict.fromkeys(m.group("sym") for m in _UNDEFINED.finditer(log)))


def exporters(symbols: list[str], release: str, candidates: list[Path]) -> dict[str, Path]:
    """symbol -> the first of the ``candidates`` (project directories) whose out/RELEASE/Module.symvers exports it."""
    found: dict[str, Path] = {}
    wanted = set(symbols)
    for project in candidates:
        try:
            text = (project / "out" / release / "Module.symvers").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split("\t")
            if len(fields) >= 2 and fields[1] in wanted and fields[1] not in found:
                found[fields[1]] = project
    return found


def nearby_projects(project: Path) -> list[Path]:
    """kmodkit projects beside ``project`` (its parent's other subdirectories with a manifest), sorted."""
    try:
        return sorted(p for p in project.parent.iterdir()
                      if p != project and p.is_dir() and (p / MANIFEST).is_file())
    except OSError:
        return []


def kcflags(manifest: Manifest, project: Path, copy: Path) -> str:
    """KCFLAGS for building ``copy``: the user's, then debug info and __FILE__ naming the project's files.

    ``-iquote PROJECT`` (and each module's directory) lets ``#include "../core/core.h"`` find the project's
    neighbours from the copy.  A project path make cannot take (blanks, $) gets neither: the module still builds.
    """
    flags = [os.environ.get("KCFLAGS", "")]
    if inputs.make_safe(project):
        flags.append(f"-ffile-prefix-map={copy}={project}")
        flags += [f"-iquote {project / d}" if d else f"-iquote {project}"
                  for d in dict.fromkeys(m.subdir for m in manifest.modules)]
    return " ".join(f for f in flags if f)


def undefined_hint(log: str, release: str, project: Path, depends: list[Path]) -> str:
    """For modpost's "undefined!": which kmodkit project beside ``project`` exports the symbols, and the fix."""
    symbols = undefined_symbols(log)
    if not symbols:
        return ""
    found = exporters(symbols, release, [p for p in nearby_projects(project) if p not in depends])
    if not found:
        return (f"; {symbols[0]} is exported by no module of this build: when another kmodkit project exports "
                f"it, name that project in [project] depends = [...] and build it first")
    dep = next(iter(found.values()))
    rel = os.path.relpath(dep, project)
    syms = ", ".join(s for s, p in found.items() if p == dep)
    return f"; {syms} exported by the project {dep}: add depends = [\"{rel}\"] under [project] in {MANIFEST}"


def unsigned_sha256(path: Path) -> str | None:
    """SHA-256 of the module without its signature (of all of it when unsigned); None when unreadable."""
    from kmodkit.errors import ModuleFormatError
    from kmodkit.modfile.signature import find_trailer

    try:
        data = path.read_bytes()
        t = find_trailer(data, str(path))
    except (OSError, ModuleFormatError):
        return None
    return hashlib.sha256(data[:t.content_len] if t else data).hexdigest()


def is_signed(path: Path) -> bool:
    """Whether ``path`` is a module with a signature appended (False when absent or unreadable)."""
    from kmodkit.errors import ModuleFormatError
    from kmodkit.modfile.signature import find_trailer

    try:
        return find_trailer(path.read_bytes(), str(path)) is not None
    except (OSError, ModuleFormatError):
        return False
