"""The kernel-upgrade hook: DKMS's autoinstall, for the projects ``kmodkit install`` registered.

Debian's kernel packages run ``run-parts --arg=KVER --arg=IMAGE /etc/kernel/DIR`` from their maintainer
scripts: linux-image's postinst runs postinst.d, linux-headers' postinst runs header_postinst.d, linux-image's
prerm runs prerm.d (while the kernel's files are all there) and its postrm runs postrm.d (once dpkg has
deleted them).  :func:`install_hook` writes a small sh script, as DKMS does, into postinst.d and
header_postinst.d, which calls ``kmodkit hook run KVER`` (dpkg may configure the image before its headers,
and the build needs both), and into prerm.d, which calls ``kmodkit hook run KVER --removed``: there the
kernel's tree is whole, so the index is rewritten without kmodkit's modules before dpkg deletes the tree
(in postrm.d the kernel's modules.order and modules.builtin are gone already).  :func:`autoinstall` builds
(and so signs, when the manifest names a key) and installs every registered project for that kernel,
dependencies first; :func:`autoremove` uninstalls them.  The scripts log to /var/log/kmodkit/hook.log and
exit 0 whatever happens: a module that does not build must never fail the kernel's installation.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmodkit.errors import KmodkitError
from kmodkit.fileio import write_atomic
from kmodkit.kbuild.install import Install, read_state
from kmodkit.kbuild.manifest import Manifest
from kmodkit.sysroot import HOST, Root

#: the scripts' name in /etc/kernel/*.d (run-parts runs names of [A-Za-z0-9_-] only)
HOOK = "kmodkit"
#: where the scripts log, on the machine
LOG = "/var/log/kmodkit/hook.log"
#: where an earlier kmodkit put its removal script (run once dpkg deleted the tree): install and remove delete it
LEGACY = (f"/etc/kernel/postrm.d/{HOOK}",)

_SCRIPT = """#!/bin/sh
# Written by 'kmodkit hook install'; 'kmodkit hook remove' removes it.
# {what}
# Called by the kernel package as: {name} KVER [IMAGE].  KMODKIT_ROOT names another root (tests, images).
# A failure is logged and reported, and never fails the package's installation.
version="$1"
case "$version" in ""|-*) exit 0 ;; esac
root="${{KMODKIT_ROOT:-/}}"
log="${{root%/}}{log}"
mkdir -p "${{log%/*}}" 2>/dev/null
echo "--- $(date -u '+%Y-%m-%dT%H:%M:%SZ') {name} $version" >>"$log" 2>/dev/null
if ! {python} -m kmodkit hook run "$version"{flag} --root "$root" >>"$log" 2>&1; then
    echo "kmodkit: {failure} $version failed; see $log" >&2
fi
exit 0
"""


def scripts(python: str | None = None) -> dict[str, str]:
    """The hook scripts: /etc/kernel/{postinst.d,header_postinst.d,prerm.d}/kmodkit -> text, calling
    ``python -m kmodkit``."""
    py = shlex.quote(python or sys.executable)
    build = "Builds, signs and installs the projects 'kmodkit install' registered, for a newly installed kernel"
    return {
        f"/etc/kernel/postinst.d/{HOOK}": _SCRIPT.format(
            what=f"{build} (its image).", name="postinst.d/kmodkit", log=LOG, python=py, flag="",
            failure="building registered modules for"),
        f"/etc/kernel/header_postinst.d/{HOOK}": _SCRIPT.format(
            what=f"{build} (its headers, which dpkg may configure after the image).",
            name="header_postinst.d/kmodkit", log=LOG, python=py, flag="", failure="building registered modules for"),
        f"/etc/kernel/prerm.d/{HOOK}": _SCRIPT.format(
            what="Uninstalls what kmodkit installed for a kernel being removed (its tree still whole).",
            name="prerm.d/kmodkit", log=LOG, python=py, flag=" --removed", failure="removing modules of"),
    }


def install_hook(root: Root = HOST, python: str | None = None) -> list[Path]:
    """Write the hook scripts below ``root`` (mode 0755); the paths written."""
    out = []
    for path, text in scripts(python).items():
        target = root.join(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, text.encode(), 0o755)
        out.append(target)
    for path in LEGACY:
        _remove_ours(root.join(path))
    return out


def remove_hook(root: Root = HOST) -> list[Path]:
    """Remove the hook scripts below ``root``; the paths removed (none when there were none)."""
    out = []
    for path in [*scripts(), *LEGACY]:
        target = root.join(path)
        if _remove_ours(target):
            out.append(target)
    return out


def _remove_ours(target: Path) -> bool:
    """Remove ``target`` when it is a script 'kmodkit hook install' wrote; whether it did."""
    if target.is_file() and target.read_text(errors="replace").find("kmodkit hook install") >= 0:
        target.unlink()
        return True
    return False


@dataclass(frozen=True)
class HookResult:
    """What the hook did with one registered project for one kernel."""

    project: Path  #: the project directory
    kernel: str  #: the kernel release
    ok: bool  #: built and installed (or, removing, uninstalled)
    detail: str  #: what was done, or why it failed (one line)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object."""
        from kmodkit.errors import error_object

        return {"project": str(self.project), "kernel": self.kernel, "ok": self.ok, "detail": self.detail,
                "error": None if self.ok else error_object(f"{self.kernel}: {self.project}", self.detail, None, 1)}


def registered(root: Root = HOST) -> list[Path]:
    """The projects registered below ``root``, each after the registered projects it depends on."""
    projects = [Path(p) for p, e in read_state(root)["projects"].items() if e.get("registered")]
    deps: dict[Path, list[Path]] = {}
    for p in projects:
        try:
            deps[p] = [d for d in Manifest.load(p).dependency_paths() if d in projects]
        except KmodkitError:
            deps[p] = []  # reported when it is built
    ordered: list[Path] = []

    def visit(p: Path, path: tuple[Path, ...]) -> None:
        if p in ordered or p in path:
            return
        for d in deps.get(p, []):
            visit(d, path + (p,))
        ordered.append(p)

    for p in projects:
        visit(p, ())
    return ordered


def autoinstall(release: str, root: Root = HOST) -> list[HookResult]:
    """Build (signing as the manifest says) and install every registered project for ``release``; never raises."""
    from kmodkit.kbuild.builder import Build

    results = []
    for project in registered(root):
        try:
            report = Build(project, kernels=[release], root=root).run()
            kb = report.results[0]
            if not kb.ok:
                results.append(HookResult(project, release, False, f"build {kb.state.value}: {kb.problem}"
                                          + (f"; {kb.fix}" if kb.fix else "")))
                continue
            [done] = Install(project, [release], root).install()
            if done.error is not None:
                results.append(HookResult(project, release, False, f"install: {done.error}"))
                continue
            signed = f", {kb.signed.state.value}" if kb.signed else ""
            results.append(HookResult(project, release, True, f"built ({kb.state.value}{signed}), installed "
                                      + ", ".join(str(f) for f in done.files)))
        except (KmodkitError, OSError) as exc:
            results.append(HookResult(project, release, False, str(exc)))
    return results


def autoremove(release: str, root: Root = HOST) -> list[HookResult]:
    """Uninstall every project installed below ``root`` for ``release``; never raises."""
    results = []
    for key, entry in read_state(root)["projects"].items():
        if release not in entry.get("kernels", {}):
            continue
        project = Path(key)
        try:
            # the project stays registered: the next kernel installed gets it again
            [done] = Install(project, [release], root).uninstall(forget=False)
            results.append(HookResult(project, release, done.error is None,
                                      str(done.error) if done.error else f"removed {len(done.files)} files"))
        except (KmodkitError, OSError) as exc:
            results.append(HookResult(project, release, False, str(exc)))
    return results


def log_path(root: Root = HOST) -> Path:
    """The hook's log below ``root``."""
    return root.join(LOG)

