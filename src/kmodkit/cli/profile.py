"""``kmodkit profile``: where a loaded module spends CPU time, sampled by perf; folded stacks and a flame graph."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.trace.perf import ProfileReport


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", metavar="MODULE", help="a loaded module")
    options(parser)
    parser.add_argument("workload", nargs=argparse.REMAINDER, metavar="-- WORKLOAD",
                        help="the command to run while sampling (after --)")


def options(parser: argparse.ArgumentParser) -> None:
    """The options (also accepted after MODULE: argparse hands them to the workload's remainder)."""
    parser.add_argument("--frequency", type=int, default=999, metavar="HZ",
                        help="samples per second per CPU (default 999)")
    parser.add_argument("--duration", type=float, metavar="S", help="sample for S seconds when there is no workload")
    parser.add_argument("--svg", metavar="FILE", help="write a flame graph of the samples to FILE")
    parser.add_argument("--folded", metavar="FILE", help="write the folded stacks (FlameGraph's format) to FILE")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.trace import interrupt_on_sigterm, workload_of
    from kmodkit.fileio import write_atomic
    from kmodkit.trace.perf import Profile

    workload = workload_of(args, options)
    profile = Profile(args.module, args.frequency, args.duration, workload)
    interrupt_on_sigterm()
    report = profile.run()
    if args.folded:
        write_atomic(args.folded, report.folded_text().encode())
    if args.svg:
        from kmodkit.trace.flamegraph import flame_graph_svg

        title = f"{report.module}: {report.samples} samples at {report.frequency} Hz (cpu-clock)"
        write_atomic(args.svg, flame_graph_svg(report.folded, report.module_functions, title).encode())
    if args.json:
        from kmodkit.cli.output import print_json

        print_json(report.to_json())
    else:
        sys.stdout.write(format_report(report))
        if args.svg:
            sys.stdout.write(f"flame graph: {args.svg}\n")
    return 1 if report.workload_status not in (None, 0) else 0


def format_report(report: ProfileReport) -> str:
    """The module's hot functions and the kernel functions under each, as text."""
    share = 100 * report.module_samples / report.samples if report.samples else 0.0
    lines = [f"{report.module}: {report.module_samples} of {report.samples} samples ({share:.1f}%) "
             "have a function of the module on the stack",
             f"{'FUNCTION':<40} {'SAMPLES':>8} {'%':>6} {'SELF':>8}"]
    for h in report.hot:
        pct = 100 * h.inclusive / report.samples if report.samples else 0.0
        lines.append(f"{h.name:<40} {h.inclusive:>8} {pct:>6.1f} {h.own:>8}")
        for name, count in h.below[:5]:
            lines.append(f"  {'under it: ' + name:<38} {count:>8}")
    return "\n".join(lines) + "\n"
