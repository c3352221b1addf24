"""``kmodkit build``: a project built for many kernels in parallel, each in its own copy, cached.

:class:`Build` validates everything when constructed (manifest, kernels, work directory) and
:meth:`Build.run` builds with a pool of worker threads, each running ``make -C KDIR M=COPY modules``
(an argument list, never a shell) with the compiler the kernel was built with.  Every make is a client of
one jobserver (:mod:`.jobserver`) holding CPU count + 1 slots, so the kernels' builds share the CPUs job
by job; the kernels whose last build took longest start first.  Results land in ``out/KVER/NAME.ko``
with ``out/KVER/build.json`` and ``out/KVER/build.log``.  When the inputs (the project's files, the
manifest, the kernel's headers, the compiler) are unchanged, nothing is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmodkit import __version__
from kmodkit.errors import UserError
from kmodkit.fileio import write_atomic
from kmodkit.kbuild import buildlog, inputs, kernels as kern, products
from kmodkit.kbuild.buildlog import Diagnostic, Severity
from kmodkit.kbuild.jobserver import Jobserver
from kmodkit.kbuild.manifest import MANIFEST, Manifest
from kmodkit.sysroot import HOST, Root

if TYPE_CHECKING:
    from kmodkit.check.verdict import Prediction
    from kmodkit.kbuild.signhook import SignOutcome

log = logging.getLogger(__name__)

#: bump when the build record or the way inputs are hashed changes, so old outputs are rebuilt
RECORD_FORMAT = 2


class State(Enum):
    """Where one kernel's build is."""

    QUEUED = "queued"
    BUILDING = "building"
    BUILT = "built"  #: built now
    CACHED = "up to date"  #: nothing changed since the last build: not rebuilt (the text and JSON say so alike)
    FAILED = "failed"  #: make failed (compile error, modpost error)
    BLOCKED = "blocked"  #: could not start: headers or compiler missing


@dataclass(frozen=True)
class KernelBuild:
    """One kernel's build, as it goes and when it is done."""

    kernel: str  #: the kernel release
    state: State  #: queued, building, built, cached, failed, blocked
    module: Path | None = None  #: out/KVER/NAME.ko of the first module, None until built
    log: Path | None = None  #: the full make log, None when make did not run
    record: Path | None = None  #: out/KVER/build.json, None until built
    duration: float = 0.0  #: seconds make ran (of the build that made the module, when cached)
    compiler: str | None = None  #: the CC program used
    vermagic: str | None = None  #: the built module's vermagic
    srcversion: str | None = None  #: the built module's srcversion
    diagnostics: tuple[Diagnostic, ...] = ()  #: warnings and errors, file:line: severity: message
    problem: str | None = None  #: why it failed or was blocked, None when it did not
    fix: str | None = None  #: the command that fixes a blocked build, None when unknown
    signed: SignOutcome | None = None  #: what signing did (the first module it failed for), None without a key
    modules: tuple[Path, ...] = ()  #: every module built, out/KVER/NAME.ko, in make's order
    notes: tuple[str, ...] = ()  #: what the build did besides building (a signature dropped), one sentence each
    verdicts: tuple[Prediction, ...] = ()  #: ``kmodkit check`` of each module against this kernel (when asked)

    @property
    def ok(self) -> bool:
        """Whether a module is there for this kernel (built now or cached) and, when checked, the kernel takes it."""
        return self.state in (State.BUILT, State.CACHED) and all(v.loads for v in self.verdicts)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON object."""
        return {
            "kernel": self.kernel, "state": self.state.value, "module": _s(self.module), "log": _s(self.log),
            "record": _s(self.record), "duration": round(self.duration, 3), "compiler": self.compiler,
            "vermagic": self.vermagic, "srcversion": self.srcversion,
            "warnings": [str(d) for d in self.diagnostics if d.severity is Severity.WARNING],
            "errors": [str(d) for d in self.diagnostics if d.severity is Severity.ERROR],
            "problem": self.problem, "fix": self.fix,
            "signed": self.signed.to_json() if self.signed else None,
            "modules": [str(m) for m in self.modules], "notes": list(self.notes),
            "check": [v.to_json() for v in self.verdicts],
        }


def _s(p: Path | None) -> str | None:
    return str(p) if p else None


@dataclass(frozen=True)
class BuildReport:
    """Every kernel's result, in the order the kernels were asked for."""

    manifest: Manifest  #: the project's manifest
    results: tuple[KernelBuild, ...]  #: one per kernel
    wall: float  #: seconds the whole run took
    jobs: int  #: worker count
    skip_blocked: bool = False  #: whether kernels that could not start (no headers, no compiler) do not count

    @property
    def ok(self) -> bool:
        """Whether every kernel has its modules (with ``skip_blocked``: every one not blocked, and one at least)."""
        if self.skip_blocked:
            return any(r.ok for r in self.results) and all(r.ok or r.state is State.BLOCKED for r in self.results)
        return all(r.ok for r in self.results)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return {"module": self.manifest.name, "modules": [m.name for m in self.manifest.modules],
                "version": self.manifest.version, "ok": self.ok,
                "wall": round(self.wall, 3), "jobs": self.jobs, "kernels": [r.to_json() for r in self.results]}


Listener = Callable[[KernelBuild], None]


@dataclass
class Build:
    """A build of one project for some kernels; validated on construction.

    ``kernels`` empty and ``all_installed`` false: the manifest's targets, else every installed kernel.
    ``workdir`` None: a per-user cache directory (``/dev/shm`` with ``shm``).  ``jobs`` (kernels built at
    once) None: the CPU count + 1, at most the number of kernels.
    """

    project: Path
    kernels: list[str] = field(default_factory=list)
    all_installed: bool = False
    jobs: int | None = None
    workdir: Path | None = None
    shm: bool = False
    force: bool = False
    make: str = "make"
    root: Root = HOST  #: the machine whose kernels are built for
    skip_blocked: bool = False  #: a kernel without headers or compiler is reported, and the run is still ok
    check: bool = True  #: predict each built module's verdict on its kernel (``kmodkit check``, default machine)

    def __post_init__(self) -> None:
        self.project = Path(self.project).resolve()
        self.manifest = Manifest.load(self.project)
        if self.kernels and self.all_installed:
            raise UserError("-k/--all-installed", "name kernels or ask for all installed ones, not both")
        if self.jobs is not None and self.jobs < 1:
            raise UserError(f"-j {self.jobs}", "the worker count must be at least 1")
        if self.workdir is not None and self.shm:
            raise UserError("--workdir/--shm", "give one work directory, not both")
        self.targets = self._targets()
        for release in self.targets:
            problem = kern.release_problem(release)
            if problem is not None:
                raise UserError(f"-k {release!r}", problem, "name a kernel as /lib/modules does")
        if not self.targets:
            raise UserError(str(self.root.join("/lib/modules")), "no kernel is installed to build for",
                            "install a kernel's headers or name one with -k")
        self._check_sources()
        self._check_named_kernels()
        self.depends = self.manifest.dependency_paths()
        for dep in self.depends:
            if not (dep / MANIFEST).is_file():
                raise UserError(str(dep), f"is named in [project] depends of {self.manifest.path} but holds no "
                                f"{MANIFEST}", "name the directory of another kmodkit project")
        self.work = self._workdir()
        for path, what in [(self.work, "pass --workdir with a plain path such as /tmp/kmodkit-work")] \
                + [(p, "move it to a plain path") for p in products.include_paths(self.manifest, self.project)] \
                + [(d, "move it to a plain path") for d in self.depends]:
            if not inputs.make_safe(path):
                raise UserError(str(path), "make cannot take this path (spaces or special characters)", what)
        cpus = os.cpu_count() or 1
        # a module build is mostly serial steps (make reading the kernel's Makefiles, cc, modpost, ld, BTF),
        # so one slot more than CPUs keeps them busy: 3 kernels on 2 CPUs all start at once, and when one
        # build ends its slot goes to the others' parallel jobs
        self.slots = max(cpus + 1, self.jobs or 0)
        self.workers = max(1, min(self.jobs or self.slots, len(self.targets)))
        self.out = self.project / "out"

    def _check_named_kernels(self) -> None:
        """A kernel named with -k that is not installed at all is a typo until shown otherwise: say the close names."""
        installed = [k.release for k in kern.installed_kernels(self.root)]
        for release in self.kernels:
            if kern.kernel(release, self.root).installed:
                continue
            import difflib

            close = difflib.get_close_matches(release, installed, n=3, cutoff=0.6)
            raise UserError(f"-k {release}", f"is not an installed kernel (no {self.root.join('/lib/modules')}/"
                            f"{release})", f"did you mean {' or '.join(close)}?" if close else
                            ("the installed kernels are " + ", ".join(installed)
                             + f"; or fetch it from the archive: kmodkit kernels fetch {release}") if installed else
                            f"install the kernel and its headers, or fetch them: kmodkit kernels fetch {release}")

    def _check_sources(self) -> None:
        for m in self.manifest.modules:
            for s in m.sources:
                if not (self.project / s).is_file():
                    default = m.sources == (str(Path(m.subdir or ".") / f"{m.name}.c"),)
                    raise UserError(str(self.project / s), f"module {m.name}'s source does not exist"
                                    + (" (what a [[module]] without sources = [...] is built from)" if default
                                       else ""),
                                    f"create it, or list the module's .c files in sources = [...] in "
                                    f"{self.manifest.path}")

    def _targets(self) -> list[str]:
        if self.kernels:
            return list(dict.fromkeys(self.kernels))
        if not self.all_installed and self.manifest.targets:
            running = kern.running_release(self.root) or ""
            return list(dict.fromkeys(running if t == "running" else t for t in self.manifest.targets))
        return [k.release for k in kern.installed_kernels(self.root)]

    def _workdir(self) -> Path:
        tag = f"{self.manifest.name}-{hashlib.sha256(str(self.project).encode()).hexdigest()[:12]}"
        if self.workdir is not None:
            return Path(self.workdir).resolve() / tag
        if self.shm:
            return Path("/dev/shm") / f"kmodkit-{os.getuid()}" / tag
        from kmodkit._util.cachedir import cache_dir

        return Path(cache_dir("build", tag))

    # --- running --------------------------------------------------------------------------

    def run(self, listener: Listener | None = None) -> BuildReport:
        """Build for every target kernel; ``listener`` hears every state change (from worker threads)."""
        lock = threading.Lock()

        def tell(kb: KernelBuild) -> KernelBuild:
            if listener is not None:
                with lock:
                    listener(kb)
            return kb

        start = time.monotonic()
        files = inputs.project_files(self.project)
        records = {k: _read_record(self.out / k) for k in self.targets}
        for k in self.targets:
            tell(KernelBuild(k, State.QUEUED))
        done: dict[str, KernelBuild] = {}
        with Jobserver(self.slots) as jobserver, \
                ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="kbuild") as pool:
            running: dict[str, Future[KernelBuild]] = {}
            # a kernel's make starts as soon as that kernel is checked and its copy made; the next
            # kernels are checked (headers, compiler, the inputs' hash) while it runs
            for release in _longest_first(self.targets, records):
                job = self._prepare(release, files, records[release])
                if isinstance(job, KernelBuild):
                    done[release] = tell(job)
                else:
                    running[release] = pool.submit(self._make, job, jobserver, tell)
            for release, future in running.items():
                done[release] = future.result()
        if self.check:
            done = {k: self._checked(kb) for k, kb in done.items()}
        return BuildReport(self.manifest, tuple(done[k] for k in self.targets), time.monotonic() - start,
                           self.workers, self.skip_blocked)

    def _checked(self, kb: KernelBuild) -> KernelBuild:
        """``kb`` with the verdict its kernel would give each module (the others of the build loaded first)."""
        if kb.state not in (State.BUILT, State.CACHED) or not kb.modules:
            return kb
        from kmodkit.check.run import CheckRun

        verdicts = []
        notes = list(kb.notes)
        # the projects this one depends on: their builds for this kernel are loaded first for their exports
        deps = [str(p) for d in self.depends for p in sorted((d / "out" / kb.kernel).glob("*.ko*"))]
        for r in CheckRun([str(m) for m in kb.modules], [kb.kernel], root=self.root, loaded_first=deps).results():
            if r.prediction is not None:
                verdicts.append(r.prediction)
            else:
                notes.append(f"{Path(r.module).name} not checked: {r.error}")
        return replace(kb, verdicts=tuple(verdicts), notes=tuple(notes))

    def _prepare(self, release: str, files: list[Path], record: dict[str, Any] | None) -> KernelBuild | _Job:
        """What building for ``release`` needs, its copy made; a BLOCKED or CACHED result when make need not run."""
        k = kern.kernel(release, self.root)
        if not k.headers_complete:
            from kmodkit.kbuild.platform import detect_distro

            distro = detect_distro(self.root)
            what = "no headers" if k.headers is None else f"incomplete headers (missing {', '.join(k.missing)})"
            return KernelBuild(release, State.BLOCKED, problem=f"{what} for {release}",
                               fix=distro.command("headers", kver=release, flavour=k.flavour or "default")
                               or "install the kernel's headers")
        assert k.headers is not None
        wanted = kern.kernel_compiler(kern.kernel_config(k.headers, only=("CONFIG_CC_VERSION_TEXT",)))
        choice = kern.choose_compiler(wanted, self.root)
        if choice.program is None:
            from kmodkit.kbuild.platform import detect_distro

            w = choice.wanted
            major = str(w.major) if w and w.major is not None else "?"
            return KernelBuild(release, State.BLOCKED,
                               problem=f"{release} was built with '{w.text if w else '?'}', not on PATH",
                               fix=detect_distro(self.root).command("compiler", major=major)
                               or f"install gcc {major}")
        symvers = []
        for dep in self.depends:
            sv = dep / "out" / release / "Module.symvers"
            if not sv.is_file():
                import shlex

                return KernelBuild(release, State.BLOCKED, problem=f"the project {dep} it depends on is not built "
                                   f"for {release} (no {sv})", fix=f"kmodkit build {shlex.quote(str(dep))} -k {release}")
            symvers.append(sv)
        key = self._key(files, k.headers, choice, symvers)
        cached = self._cached(self.out / release, record, key)
        if cached is not None:
            return cached
        copy = self.work / release
        inputs.copy_tree(self.project, files, copy)
        products.add_module_flags(self.manifest, copy, self.project)
        return _Job(release, k.headers, choice, copy, key, tuple(symvers))

    def _key(self, files: list[Path], headers: Path, choice: kern.CompilerChoice, symvers: list[Path]) -> str:
        extra = [f"format={RECORD_FORMAT}", kern.headers_identity(headers),
                 f"cc={choice.program}:{choice.found.text if choice.found else ''}"]
        # another project's exports (their CRCs) and headers are inputs of this one's build
        extra += [f"dep={sv}:{_sha256(sv)}" for sv in symvers]
        for dep in self.depends:
            extra.append(f"dep-files={dep}:{inputs.inputs_hash(dep, inputs.project_files(dep), [])}")
        sig = self.manifest.signing
        if sig is not None:
            extra.append(f"sign={sig.key}:{sig.cert}:{sig.hash}:{_stamp(self.project / sig.key)}:"
                         f"{_stamp(self.project / sig.cert) if sig.cert else ''}")
        return inputs.inputs_hash(self.project, files, extra)

    def _cached(self, out: Path, rec: dict[str, Any] | None, key: str) -> KernelBuild | None:
        if self.force or rec is None or rec.get("inputs") != key:
            return None
        mods = rec.get("modules")
        if not isinstance(mods, list) or [m.get("name") for m in mods] != [m.name for m in self.manifest.modules] \
                and sorted(str(m.get("name")) for m in mods) != sorted(m.name for m in self.manifest.modules):
            return None
        paths = []
        for m in mods:
            module = out / f"{m['name']}.ko"
            # a module signed since (by 'kmodkit sign') is still this build's: compare what precedes the signature
            if not module.is_file() or products.unsigned_sha256(module) != m.get("unsigned_sha256"):
                return None
            paths.append(module)
        diags = tuple(Diagnostic(d["file"], d["line"], Severity(d["severity"]), d["message"])
                      for d in rec.get("diagnostics", []))
        return KernelBuild(rec["kernel"], State.CACHED, paths[0], out / "build.log", out / "build.json",
                           rec.get("duration", 0.0), rec.get("compiler"), rec.get("vermagic"),
                           rec.get("srcversion"), diags, modules=tuple(paths))

    def _make(self, job: _Job, jobserver: Jobserver, tell: Callable[[KernelBuild], KernelBuild]) -> KernelBuild:
        release, program, copy = job.release, job.choice.program, job.copy
        assert program is not None
        out = self.out / release
        out.mkdir(parents=True, exist_ok=True)
        logpath = out / "build.log"
        # no -jN: a -j on the command line would make this make the master of a jobserver of its own
        argv = [self.make, "-C", str(job.headers), f"M={copy}", f"CC={program}", f"KCFLAGS={products.kcflags(self.manifest, self.project, copy)}"]
        if job.symvers:
            argv.append("KBUILD_EXTRA_SYMBOLS=" + " ".join(str(sv) for sv in job.symvers))
        argv.append("modules")
        # Kbuild unexports LC_ALL, so the compiler's language comes from LANG / LC_MESSAGES / LC_CTYPE
        env = dict(os.environ, LC_ALL="C", LANG="C", LC_MESSAGES="C", LC_CTYPE="C", MAKEFLAGS=jobserver.makeflags())
        log.info("%s: %s", release, " ".join(argv))
        with jobserver.slot():
            tell(KernelBuild(release, State.BUILDING, compiler=program))
            start = time.monotonic()
            rc = _run_logged(argv, env, jobserver, logpath)
            duration = time.monotonic() - start
        text = logpath.read_text(errors="replace")
        diags = tuple(buildlog.parse(text, copy))
        built = products.built_modules(copy) if rc == 0 else []
        disagree = products.disagreement(self.manifest, built) if rc == 0 else None
        if rc != 0 or not built or disagree:
            errors = [d for d in diags if d.severity is Severity.ERROR]
            problem = disagree or ((f"make exited with {rc}" if rc != 127 else f"{self.make} could not run")
                                   + (f": {errors[0]}" if errors else "") + products.undefined_hint(text, release, self.project, self.depends)
                                   if rc != 0 else "make built no module")
            return tell(KernelBuild(release, State.FAILED, None, logpath, None, duration, program,
                                    diagnostics=diags, problem=problem))
        by_name = {p.name: p for p in built}
        notes: list[str] = []
        written: list[tuple[Path, bytes]] = []
        for spec in self.manifest.modules:  # the manifest's order: the first module stands for the project
            module = out / f"{spec.name}.ko"
            if self.manifest.signing is None and products.is_signed(module):
                notes.append(f"{module} was signed; the new build is not (the manifest names no key): "
                             f"sign it again with 'kmodkit sign'")
            data = by_name[spec.name].path.read_bytes()
            write_atomic(module, data, durable=False)
            written.append((module, data))
        for stale in out.glob("*.ko"):
            if stale.stem not in by_name:
                stale.unlink()
        symvers = copy / "Module.symvers"
        write_atomic(out / "Module.symvers", products.rewrite_symvers(
            symvers.read_text(errors="replace") if symvers.is_file() else "", copy, self.project).encode(),
            durable=False)
        result = KernelBuild(release, State.BUILT, written[0][0], logpath, out / "build.json", duration, program,
                             diagnostics=diags, modules=tuple(m for m, _ in written), notes=tuple(notes))
        outcomes: list[SignOutcome | None] = [None] * len(written)
        if self.manifest.signing is not None:
            from kmodkit.kbuild.signhook import SignState, sign_built_module

            outcomes = [sign_built_module(m, self.manifest.signing, self.project) for m, _ in written]
            failed = [o for o in outcomes if o is not None and o.state is not SignState.SIGNED]
            result = replace(result, signed=failed[0] if failed else outcomes[0])
        return tell(self._record(result, written, outcomes, job.choice, job.key))

    def _record(self, result: KernelBuild, written: list[tuple[Path, bytes]], outcomes: list[SignOutcome | None],
                choice: kern.CompilerChoice, key: str) -> KernelBuild:
        """Write out/KVER/build.json for the modules just built from the ``written`` bytes (signing adds a trailer)."""
        from kmodkit.modfile import ModuleFile

        record = result.record
        assert record is not None
        mods: list[dict[str, Any]] = []
        firsts: list[tuple[str | None, str | None]] = []
        for (module, data), outcome in zip(written, outcomes):
            with ModuleFile.from_bytes(data, str(module)) as mod:
                vermagic, srcversion = mod.get("vermagic"), mod.get("srcversion")
            firsts.append((vermagic, srcversion))
            mods.append({"name": module.stem, "file": str(module), "vermagic": vermagic, "srcversion": srcversion,
                         "sha256": _sha256(module), "unsigned_sha256": hashlib.sha256(data).hexdigest(),
                         "signed": outcome.to_json() if outcome else None})
        first = mods[0]
        result = replace(result, vermagic=firsts[0][0], srcversion=firsts[0][1])
        rec = {
            "kernel": result.kernel, "module": Path(str(first["file"])).name, "version": self.manifest.version,
            "vermagic": first["vermagic"], "srcversion": first["srcversion"], "compiler": choice.program,
            "compiler_version": choice.found.text if choice.found else None, "compiler_match": choice.match.value,
            "duration": round(result.duration, 3),
            "warnings": [str(d) for d in result.diagnostics if d.severity is Severity.WARNING],
            "diagnostics": [{"file": d.file, "line": d.line, "severity": d.severity.value, "message": d.message}
                            for d in result.diagnostics],
            "signed": result.signed.to_json() if result.signed else None,
            "log": str(result.log), "inputs": key, "module_sha256": first["sha256"],
            "modules": mods, "module_symvers": str(record.parent / "Module.symvers"), "notes": list(result.notes),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kmodkit": __version__,
            "record_format": RECORD_FORMAT,
        }
        write_atomic(record, (json.dumps(rec, indent=2) + "\n").encode(), durable=False)
        return result


@dataclass(frozen=True)
class _Job:
    """A kernel whose module make must build."""

    release: str  #: the kernel release
    headers: Path  #: its Kbuild tree
    choice: kern.CompilerChoice  #: the compiler to build with (its program is never None)
    copy: Path  #: the project's copy make builds in (M=...)
    key: str  #: the hash of the build's inputs, for the record
    symvers: tuple[Path, ...] = ()  #: the Module.symvers of the projects it depends on (KBUILD_EXTRA_SYMBOLS)


def _read_record(out: Path) -> dict[str, Any] | None:
    """out/KVER/build.json of the last build, None when absent or unreadable."""
    try:
        rec = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _longest_first(targets: list[str], records: dict[str, dict[str, Any] | None]) -> list[str]:
    """The order to start the kernels in: never built first (as asked), then by make's last duration, longest first.

    A long build started last would run on alone at the end while the other CPUs have nothing to do.
    """
    def last(release: str) -> float:
        rec = records[release]
        d = rec.get("duration") if rec else None
        return float(d) if isinstance(d, (int, float)) else math.inf

    return sorted(targets, key=last, reverse=True)


def _run_logged(argv: list[str], env: dict[str, str], jobserver: Jobserver, logpath: Path) -> int:
    """Run make with its output in ``logpath``; its exit status, 127 when it could not start."""
    with open(logpath, "wb") as fh:
        fh.write(("$ " + " ".join(argv) + "\n").encode())
        fh.write(f"# MAKEFLAGS={env['MAKEFLAGS']} (one jobserver shared by every kernel's make)\n".encode())
        fh.flush()
        try:
            return subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, pass_fds=jobserver.fds,
                                  check=False).returncode
        except OSError as exc:
            fh.write(f"{argv[0]}: {exc.strerror}\n".encode())
            return 127


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

