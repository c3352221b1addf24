"""``kmodkit build``: build a module project for many kernels in parallel; a progress display on a terminal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kmodkit.cli.options import project_and_kernels

if TYPE_CHECKING:
    from kmodkit.check.verdict import Prediction
    from kmodkit.kbuild.builder import BuildReport, KernelBuild


def configure(parser: argparse.ArgumentParser) -> None:
    project_and_kernels(parser, "build for")
    parser.add_argument("-j", "--jobs", type=int, metavar="N",
                        help="kernels built at once (default: CPU count + 1, at most one per kernel); their makes "
                        "share one jobserver of max(N, CPU count + 1) slots")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workdir", metavar="DIR", help="build copies under DIR (default: ~/.cache/kmodkit/build)")
    where.add_argument("--shm", action="store_true", help="build copies in /dev/shm")
    parser.add_argument("--force", action="store_true", help="rebuild even when nothing changed")
    parser.add_argument("--skip-blocked", action="store_true",
                        help="kernels without headers or their compiler are reported and skipped: exit 0 when every "
                        "other kernel built")
    parser.add_argument("--no-check", action="store_true",
                        help="do not predict whether each kernel takes what was built for it (kmodkit check)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.kbuild.builder import Build

    build = Build(Path(args.project), kernels=args.kernels, all_installed=args.all_installed, jobs=args.jobs,
                  workdir=Path(args.workdir) if args.workdir else None, shm=args.shm, force=args.force,
                  skip_blocked=args.skip_blocked, check=not args.no_check)
    if args.json:
        report = build.run()
        print_json(report.to_json())
    elif sys.stderr.isatty():
        report = _run_rich(build)
        _summary(report)
    else:
        report = build.run(_plain)
        _summary(report)
    return 0 if report.ok else 1


def _plain(kb: KernelBuild) -> None:
    from kmodkit.kbuild.builder import State

    if kb.state is State.QUEUED:
        return
    if kb.state is State.BUILDING:
        sys.stderr.write(f"build: {kb.kernel}: building with {kb.compiler}\n")
    else:
        sys.stderr.write(f"build: {kb.kernel}: {_status(kb)}\n")
    sys.stderr.flush()


def _status(kb: KernelBuild) -> str:
    from kmodkit.kbuild.builder import State

    if kb.state is State.BUILT:
        return f"built in {kb.duration:.1f} s"
    if kb.state is State.CACHED:
        return "up to date"
    if kb.state is State.BLOCKED:
        return f"blocked: {kb.problem}"
    if kb.state is State.FAILED:
        return f"FAILED: {kb.problem}"
    return str(kb.state.value)


def _run_rich(build: object) -> BuildReport:
    from rich.console import Console
    from rich.live import Live
    from rich.spinner import Spinner
    from rich.table import Table

    from kmodkit.kbuild.builder import Build, State

    assert isinstance(build, Build)
    console = Console(stderr=True)
    states: dict[str, KernelBuild] = {}
    colours = {State.QUEUED: "dim", State.BUILDING: "cyan", State.BUILT: "green", State.CACHED: "green",
               State.FAILED: "red", State.BLOCKED: "yellow"}

    def table() -> Table:
        t = Table.grid(padding=(0, 2))
        for kver, kb in states.items():
            mark = Spinner("dots") if kb.state is State.BUILDING else ""
            t.add_row(mark, kver, f"[{colours[kb.state]}]{_status(kb)}[/]")
        return t

    # transient: the live table goes when the run ends, and the summary shows each kernel once
    with Live(table(), console=console, refresh_per_second=8, transient=True) as live:
        def listen(kb: KernelBuild) -> None:
            states[kb.kernel] = kb
            live.update(table())

        report = build.run(listen)
        live.update(table())
    return report


def _summary(report: BuildReport) -> None:
    from kmodkit.cli.output import paint

    out = sys.stdout
    seen: dict[str, list[str]] = {}
    for r in report.results:
        for d in r.diagnostics:
            seen.setdefault(str(d), []).append(r.kernel)
    for text, kvers in seen.items():
        which = "all kernels" if len(kvers) == len(report.results) > 1 else ", ".join(kvers)
        out.write(f"{text}  [{which}]\n")
    for r in report.results:
        if r.ok:
            extra = f", {r.signed.state.value}" if r.signed else ""
            mods = r.modules or ((r.module,) if r.module else ())
            where = str(mods[0]) if len(mods) == 1 else \
                f"{', '.join(m.name for m in mods)} in {mods[0].parent}" if mods else "-"
            said = paint(_status(r) if r.state.value != 'built' else 'built', 'ok')
            out.write(f"{r.kernel}: {where} ({said}{extra})\n")
            for note in r.notes:
                out.write(f"  note: {note}\n")
            for v in r.verdicts:
                out.write(f"  check: {Path(v.path).name} {_verdict(v)}\n")
        elif r.verdicts:  # built, and the kernel would refuse it
            out.write(f"{r.kernel}: built, but {paint('the kernel would refuse it', 'fail')}\n")
            for v in r.verdicts:
                out.write(f"  check: {Path(v.path).name} {_verdict(v)}\n")
                for line in v.lines:
                    out.write(f"    {line}\n")
        else:
            out.write(f"{r.kernel}: {paint(_status(r), 'warn' if r.state.value == 'blocked' else 'fail')}\n")
            if r.fix:
                out.write(f"  fix: {r.fix}\n")
        if r.log and (r.diagnostics or not r.ok):
            out.write(f"  full log: {r.log}\n")
    done = sum(r.ok for r in report.results)
    skipped = sum(r.state.value == "blocked" for r in report.results) if report.skip_blocked else 0
    out.write(f"{done} of {len(report.results)} kernels built" + (f", {skipped} blocked and skipped" if skipped else "")
              + f" ({report.wall:.1f} s, {report.jobs} workers)\n")
    for r in report.results:  # one error line per kernel that failed or (unless skipped) could not start
        refused = [v for v in r.verdicts if v.refusal is not None]
        if refused:
            v = refused[0]
            assert v.refusal is not None
            sys.stderr.write(f"error: {r.kernel}: {Path(v.path).name} would be refused: {v.refusal.problem}"
                             + (f"; {v.refusal.fix}" if v.refusal.fix else "") + "\n")
        elif not r.ok and not (report.skip_blocked and r.state.value == "blocked"):
            sys.stderr.write(f"error: {r.kernel}: {r.problem}" + (f"; {r.fix}" if r.fix else "") + "\n")


def _verdict(v: Prediction) -> str:
    """``loads``, ``loads, taints O E`` or ``REFUSED (ENOEXEC)``, as check says it."""
    if v.refusal is not None:
        return f"REFUSED ({v.refusal.errno_name})"
    return f"{v.outcome.value} {' '.join(v.taints)}".rstrip()
