"""The fleet report's model: for a project and its target kernels, every (module, kernel) pair's build,
signature and ``check`` verdict, each refusal with the kernel's line and the fix, and the ABI differences
behind a refusal of a module built for another kernel.

Nothing here decides anything of its own: the target kernels are those ``kmodkit build`` would build for
(:class:`~kmodkit.kbuild.builder.Build`), a kernel is resolved as ``check -k`` resolves it
(:func:`~kmodkit.check.run.target_kernel`), the verdict is :class:`~kmodkit.check.run.CheckRun`'s, the
signature state is ``verify``'s against the kernel's own keys, and the ABI differences are ``abi diff``'s.

Which module file a pair is judged by: the kernel's own build (``out/KVER/NAME.ko``) when there is one.
When there is none (the kernel is new to the fleet, its build failed, its headers are missing), every
other build of the module is checked against it, as a fleet that deploys what it has would: the pair
loads when one of them loads, and is refused with the verdict of the nearest one (same flavour first)
otherwise, with the ABI differences between the kernel it was built for and this one.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmodkit.errors import KmodkitError
from kmodkit.sysroot import HOST, Root

if TYPE_CHECKING:
    from kmodkit.check.abi import AbiDiff, BrokenImport
    from kmodkit.check.checker import Machine
    from kmodkit.check.run import CheckRun
    from kmodkit.check.target import TargetKernel
    from kmodkit.check.verdict import Prediction
    from kmodkit.signing.verify import Verifier

#: the version of the JSON document's shape (report.schema.json): raised when a field changes meaning or
#: goes away; fields may be added without raising it
FORMAT = 1

#: load_module()'s checks whose refusal comes from the kernel's module ABI: what ``abi diff`` explains
ABI_CHECKS = frozenset({"module_layout", "struct_module", "vermagic", "symbols"})


class Status(enum.Enum):
    """What a pair comes to."""

    LOADS = "loads"  #: finit_module succeeds, nothing tainted
    TAINTS = "taints"  #: it succeeds and taints the kernel (O, E, ...)
    REFUSED = "refused"  #: finit_module fails
    NOT_BUILT = "not-built"  #: no build of the module exists to judge
    ERROR = "error"  #: no verdict could be made (a kernel without headers, an unreadable module)

    @property
    def loads(self) -> bool:
        """Whether the module loads."""
        return self in (Status.LOADS, Status.TAINTS)


@dataclass(frozen=True)
class BuildState:
    """What ``kmodkit build`` left for one module and kernel in ``out/KVER/``."""

    built: bool  #: out/KVER/NAME.ko exists
    path: str | None  #: that file, None when not built
    built_at: str | None  #: when (build.json's built_at, UTC), None when unknown
    compiler: str | None  #: the compiler's version text (else its program), None when unknown
    vermagic: str | None  #: the built module's vermagic, None when unknown
    srcversion: str | None  #: the built module's srcversion, None when unknown

    @property
    def compiler_name(self) -> str | None:
        """The compiler in short ("gcc 12.2.0"), None when unknown."""
        from kmodkit.kbuild.kernels import CompilerId, CompilerKind

        if self.compiler is None:
            return None
        c = CompilerId.parse(self.compiler)
        return f"{c.kind.value} {c.version}" if c.kind is not CompilerKind.UNKNOWN and c.version else self.compiler

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        return {"built": self.built, "path": self.path, "built_at": self.built_at, "compiler": self.compiler,
                "vermagic": self.vermagic, "srcversion": self.srcversion}


@dataclass(frozen=True)
class SignatureState:
    """A module file's signature, judged against the keys one kernel trusts (``verify -k``)."""

    signed: bool  #: it carries a signature
    verdict: str  #: verify's verdict: valid, untrusted, unknown-key, invalid, unsigned, malformed
    signer: str | None  #: the signer (issuer CN), None when unsigned
    key_id: str | None  #: the key's id (sig_key), None when unsigned
    trusted: bool | None  #: the kernel (with the machine's enrolled certificates) trusts it; None: its keys are unknown
    detail: str | None  #: why it is invalid or malformed, or why trust is unknown; None otherwise

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        return {"signed": self.signed, "verdict": self.verdict, "signer": self.signer, "key_id": self.key_id,
                "trusted": self.trusted, "detail": self.detail}


@dataclass(frozen=True)
class AbiCause:
    """What differs between the kernel a module was built for and the one that refuses it (``abi diff``)."""

    built_for: str  #: the kernel the module was built for
    kernel: str  #: the kernel that refuses it
    vermagic: tuple[str, str] | None  #: (old, new) version magic past the release, None when equal
    struct_module: tuple[int | None, int | None] | None  #: (old, new) sizeof(struct module), None when equal
    module_layout: bool  #: module_layout's CRC differs (every module must be rebuilt)
    broken: tuple[BrokenImport, ...]  #: the module's imports the kernel refuses, and why

    @classmethod
    def of(cls, diff: AbiDiff, broken: Iterable[BrokenImport]) -> AbiCause:
        """The cause from ``abi diff``'s result and the module's broken imports."""
        return cls(diff.old, diff.new, diff.vermagic, diff.struct_module, diff.module_layout, tuple(broken))

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        return {"built_for": self.built_for, "kernel": self.kernel,
                "vermagic": None if self.vermagic is None else list(self.vermagic),
                "struct_module": None if self.struct_module is None else list(self.struct_module),
                "module_layout_changed": self.module_layout, "broken_imports": [b.to_json() for b in self.broken]}


@dataclass(frozen=True)
class Attempt:
    """One build of a module checked against one kernel."""

    built_for: str  #: the kernel the file was built for (its out/KVER/)
    path: str  #: the module file
    prediction: Prediction | None  #: check's verdict, None when an error kept it from being made
    error: KmodkitError | None  #: why there is no verdict, None when there is one
    abi: AbiCause | None  #: the ABI differences behind an ABI refusal of a build for another kernel, else None

    @property
    def status(self) -> Status:
        """loads / taints / refused / error."""
        p = self.prediction
        if p is None:
            return Status.ERROR
        if not p.loads:
            return Status.REFUSED
        return Status.TAINTS if p.taints else Status.LOADS

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        return {"built_for": self.built_for, "path": self.path, "status": self.status.value,
                "check": None if self.prediction is None else self.prediction.to_json(),
                "error": None if self.error is None else str(self.error),
                "abi": None if self.abi is None else self.abi.to_json()}


@dataclass(frozen=True)
class Cell:
    """One (module, kernel) pair of the matrix."""

    module: str  #: the module's name
    kernel: str  #: the kernel's release
    build: BuildState  #: the kernel's own build of the module
    judged: Attempt | None  #: the file the pair is judged by (see the module's docstring), None when none exists
    others: tuple[Attempt, ...]  #: the other builds tried for a kernel without its own, nearest first
    signature: SignatureState | None  #: the judged file's signature against this kernel's keys, None without one

    @property
    def status(self) -> Status:
        """The pair's status: the judged file's, or not-built."""
        return Status.NOT_BUILT if self.judged is None else self.judged.status

    @property
    def fix(self) -> str | None:
        """What to do so that the pair loads; None when it loads or nothing can be said."""
        if self.judged is None:
            return f"build the module for {self.kernel} (kmodkit build -k {self.kernel})"
        if self.judged.error is not None:
            return self.judged.error.fix
        p = self.judged.prediction
        return p.refusal.fix if p is not None and p.refusal is not None else None

    def to_json(self) -> dict[str, object]:
        """JSON-ready data."""
        j = self.judged
        return {"module": self.module, "kernel": self.kernel, "status": self.status.value,
                "loads": self.status.loads, "build": self.build.to_json(),
                "judged": None if j is None else j.to_json(), "fix": self.fix,
                "signature": None if self.signature is None else self.signature.to_json(),
                "other_builds": [a.to_json() for a in self.others]}


@dataclass(frozen=True)
class FleetReport:
    """The whole matrix, with what was assumed of the machines."""

    project: str  #: the project's directory
    version: str  #: the manifest's version
    modules: tuple[str, ...]  #: the manifest's modules, in its order (the matrix's rows)
    kernels: tuple[str, ...]  #: the target kernels, in build's order (the matrix's columns)
    machine: Machine  #: what the kernels' machines are taken to be (enforcement, lockdown, enrolled keys)
    certs: tuple[str, ...]  #: the certificate files taken as enrolled (MOK), as named
    cells: tuple[Cell, ...]  #: every pair, kernel by kernel, module by module
    generated_at: str  #: when (UTC, ISO 8601)

    @property
    def ok(self) -> bool:
        """Whether every pair loads."""
        return all(c.status.loads for c in self.cells)

    def cell(self, module: str, kernel: str) -> Cell | None:
        """The pair's cell, None when it is not in the report."""
        return next((c for c in self.cells if c.module == module and c.kernel == kernel), None)

    def counts(self) -> dict[str, int]:
        """How many pairs have each status (every status named, 0 included)."""
        return {s.value: sum(1 for c in self.cells if c.status is s) for s in Status}

    def to_json(self) -> dict[str, object]:
        """The documented JSON document (src/kmodkit/report/report.schema.json)."""
        m = self.machine
        return {"format": FORMAT, "project": self.project, "version": self.version, "generated_at": self.generated_at,
                "modules": list(self.modules), "kernels": list(self.kernels),
                "machine": {"enforce": m.enforce, "lockdown": None if m.lockdown is None else m.lockdown.value,
                            "cmdline": list(m.cmdline), "certs": list(self.certs)},
                "ok": self.ok, "counts": self.counts(), "cells": [c.to_json() for c in self.cells]}


def schema() -> dict[str, Any]:
    """The JSON schema of :meth:`FleetReport.to_json` (shipped as report.schema.json)."""
    from importlib import resources

    doc: dict[str, Any] = json.loads(resources.files("kmodkit.report").joinpath("report.schema.json").read_text())
    return doc


class FleetRun:
    """``kmodkit report`` as a library object: validated on construction, the matrix made by :meth:`report`.

    ``kernels`` / ``all_installed`` choose the kernels as ``kmodkit build`` does (none named: the manifest's
    targets, else every installed kernel).  ``machine`` is what ``check`` is told of the machines;
    ``certs`` names the certificate files behind its ``extra_certs`` (for the report's record).
    Raises :class:`~kmodkit.errors.UserError` for a project or kernel ``build`` would refuse.
    """

    def __init__(self, project: str | Path, kernels: Iterable[str] = (), all_installed: bool = False,
                 machine: Machine | None = None, certs: Iterable[str] = (), root: Root = HOST) -> None:
        from kmodkit.check.checker import Machine
        from kmodkit.kbuild.builder import Build

        build = Build(Path(project), list(kernels), all_installed, root=root, check=False)
        #: the project's manifest
        self.manifest = build.manifest
        #: the project's directory
        self.project = build.project
        #: the projects whose exports its modules use (manifest's [project] depends)
        self.depends = list(build.depends)
        #: the target kernels, as build would build for them
        self.kernels = tuple(build.targets)
        #: the machines' facts for check
        self.machine = machine or Machine()
        self.certs = tuple(certs)
        self.root = root
        self._targets: dict[str, TargetKernel | KmodkitError] = {}
        self._runs: dict[str, CheckRun] = {}
        self._diffs: dict[tuple[str, str], AbiDiff | None] = {}
        self._verifiers: dict[str, tuple[Verifier, str | None]] = {}

    # --- what build left ---------------------------------------------------------------------

    def _record(self, release: str) -> dict[str, Any]:
        # out/KVER/build.json as kbuild.builder writes it; {} when absent or unreadable (the .ko still counts)
        try:
            rec = json.loads((self.project / "out" / release / "build.json").read_text())
        except (OSError, ValueError):
            return {}
        return rec if isinstance(rec, dict) else {}

    def build_state(self, module: str, release: str) -> BuildState:
        """The kernel's own build of ``module``."""
        ko = self.project / "out" / release / f"{module}.ko"
        if not ko.is_file():
            return BuildState(False, None, None, None, None, None)
        rec = self._record(release)
        entry = next((m for m in rec.get("modules", ()) if isinstance(m, dict) and m.get("name") == module), {})
        return BuildState(True, str(ko), _text(rec.get("built_at")),
                          _text(rec.get("compiler_version")) or _text(rec.get("compiler")),
                          _text(entry.get("vermagic")), _text(entry.get("srcversion")))

    def builds_of(self, module: str) -> list[str]:
        """The kernels ``out/`` holds a build of ``module`` for, sorted by release."""
        out = self.project / "out"
        try:
            return sorted(d.name for d in out.iterdir() if (d / f"{module}.ko").is_file())
        except OSError:
            return []

    # --- judging -------------------------------------------------------------------------------

    def _target(self, release: str) -> TargetKernel | KmodkitError:
        from kmodkit.check.run import target_kernel

        if release not in self._targets:
            try:
                self._targets[release] = target_kernel(release, self.root)
            except KmodkitError as exc:
                self._targets[release] = exc
        return self._targets[release]

    def _run(self, built_for: str) -> CheckRun:
        # one CheckRun per build directory: a module's providers are the project's modules built beside it
        # and, as build's own check has them, the builds for that kernel of the projects it depends on
        from kmodkit.check.run import CheckRun

        if built_for not in self._runs:
            files = [str(self.project / "out" / built_for / f"{m.name}.ko") for m in self.manifest.modules]
            deps = [str(p) for d in self.depends for p in sorted((d / "out" / built_for).glob("*.ko*"))]
            self._runs[built_for] = CheckRun([f for f in files if os.path.isfile(f)] or files, list(self.kernels),
                                             self.machine, root=self.root, loaded_first=deps)
        return self._runs[built_for]

    def attempt(self, module: str, built_for: str, release: str) -> Attempt:
        """Check ``out/BUILT_FOR/MODULE.ko`` against the kernel ``release``."""
        path = str(self.project / "out" / built_for / f"{module}.ko")
        target = self._target(release)
        if isinstance(target, KmodkitError):
            return Attempt(built_for, path, None, target, None)
        result = self._run(built_for).check_one(target, release, path)
        p = result.prediction
        abi = None
        if p is not None and p.refusal is not None and p.refusal.check in ABI_CHECKS and built_for != release:
            abi = self._abi(path, built_for, release)
        return Attempt(built_for, path, p, result.error, abi)

    def _abi(self, path: str, built_for: str, release: str) -> AbiCause | None:
        from kmodkit.check.abi import abi_diff, breaks, module_imports

        key = (built_for, release)
        if key not in self._diffs:
            old, new = self._target(built_for), self._target(release)
            self._diffs[key] = None if isinstance(old, KmodkitError) or isinstance(new, KmodkitError) \
                else abi_diff(old, new)
        diff = self._diffs[key]
        if diff is None:
            return None  # the kernel the module was built for is gone: nothing to compare with
        try:
            imports = module_imports(path)
        except KmodkitError:
            return AbiCause.of(diff, ())
        return AbiCause.of(diff, breaks(diff, imports.symbols, imports.gpl, imports.namespaces))

    def _nearest_first(self, release: str, others: list[str]) -> list[str]:
        from kmodkit.kbuild.kernels import kernel

        flavour = kernel(release, self.root).flavour

        def key(other: str) -> tuple[bool, int, str]:
            common = len(os.path.commonprefix([release, other]))
            return (kernel(other, self.root).flavour != flavour, -common, other)

        return sorted(others, key=key)

    def _verifier(self, target: TargetKernel) -> tuple[Verifier, str | None]:
        # the kernel's keys as check trusts them (with the machine's enrolled ones), read once per kernel, and
        # why they are unknown (no image), None when known
        from kmodkit.check.checker import Checker
        from kmodkit.signing.verify import Verifier

        if target.release not in self._verifiers:
            notes: list[str] = []
            store = Checker(target, self.machine).trust_store(notes)
            signing = self.manifest.signing
            if signing is not None and signing.cert and (self.project / signing.cert).is_file():
                try:  # the project's own certificate, untrusted: tells "key not trusted" from "unknown key"
                    store.add_files([str(self.project / signing.cert)], trusted=False)
                except KmodkitError:
                    pass
            self._verifiers[target.release] = (Verifier(store, target.release), notes[0] if notes else None)
        return self._verifiers[target.release]

    def signature(self, path: str, release: str) -> SignatureState | None:
        """``path``'s signature against the keys ``release`` trusts (and the machine's enrolled ones);
        None when the kernel cannot be resolved."""
        from kmodkit.signing.verify import Verdict

        target = self._target(release)
        if isinstance(target, KmodkitError):
            return None
        verifier, unknown = self._verifier(target)
        v = verifier.verify_file(path)
        trusted = None if unknown and v.verdict is not Verdict.VALID else v.verdict is Verdict.VALID
        return SignatureState(v.verdict is not Verdict.UNSIGNED, v.verdict.value,
                              v.signer, v.key_id, trusted, v.detail or unknown)

    def cell(self, module: str, release: str) -> Cell:
        """The pair (``module``, ``release``)."""
        build = self.build_state(module, release)
        others: list[Attempt] = []
        if build.built:
            judged: Attempt | None = self.attempt(module, release, release)
        else:
            tried = [self.attempt(module, k, release)
                     for k in self._nearest_first(release, [k for k in self.builds_of(module) if k != release])]
            judged = next((a for a in tried if a.status.loads), tried[0] if tried else None)
            others = [a for a in tried if a is not judged]
        sig = self.signature(judged.path, release) if judged is not None else None
        return Cell(module, release, build, judged, tuple(others), sig)

    def report(self) -> FleetReport:
        """Every pair, kernel by kernel."""
        cells = [self.cell(m.name, k) for k in self.kernels for m in self.manifest.modules]
        return FleetReport(str(self.project), self.manifest.version, tuple(m.name for m in self.manifest.modules),
                           self.kernels, self.machine, self.certs, tuple(cells),
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
