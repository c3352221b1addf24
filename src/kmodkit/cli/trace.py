"""``kmodkit trace``: a loaded module's functions through ftrace's function_graph tracer, around a workload."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.trace.graph import CallNode
    from kmodkit.trace.tracer import TraceReport


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", metavar="MODULE", help="a loaded module")
    options(parser)
    parser.add_argument("workload", nargs=argparse.REMAINDER, metavar="-- WORKLOAD",
                        help="the command to run while tracing (after --)")


def options(parser: argparse.ArgumentParser) -> None:
    """The options (also accepted after MODULE: argparse hands them to the workload's remainder)."""
    parser.add_argument("--functions", action="append", default=[], metavar="GLOB",
                        help="trace only the module's functions matching GLOB (repeatable; default: all)")
    parser.add_argument("--graph", action="store_true",
                        help="also trace every kernel function the module's functions call (the full call tree)")
    parser.add_argument("--duration", type=float, metavar="S",
                        help="trace for S seconds (with a workload: stop it after S seconds)")
    parser.add_argument("--depth", type=int, default=6, metavar="N", help="call tree levels shown (default 6)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def workload_of(args: argparse.Namespace, add_options: Callable[[argparse.ArgumentParser], None]
                ) -> tuple[str, ...]:
    """The command after ``--``; options written between MODULE and ``--`` are parsed into ``args``.

    (argparse's remainder takes every word after MODULE, options included.)
    """
    words = list(args.workload)
    if "--" in words:
        cut = words.index("--")
    else:  # argparse drops a "--" right after MODULE: then it is all workload, or all options
        cut = len(words) if words[:1] and words[0].startswith("-") else -1
        if cut < 0:
            return tuple(words)
    if cut:
        from kmodkit.cli.main import configure_logging, sub_parser

        parser = sub_parser(f"kmodkit {args.command} {args.module}")  # the global options and errors as main's
        add_options(parser)
        parser.parse_args(words[:cut], namespace=args)
        configure_logging(args.debug, args.verbose)
    return tuple(words[cut + 1:])


def interrupt_on_sigterm() -> None:
    """Make SIGTERM end the command as Ctrl-C does, so that tracing settings are restored."""
    import signal

    def _raise(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def run(args: argparse.Namespace) -> int:
    from kmodkit.trace.tracer import Trace

    workload = workload_of(args, options)
    trace = Trace(args.module, tuple(args.functions), args.graph, args.duration, workload)
    interrupt_on_sigterm()
    report = trace.run()
    if args.json:
        from kmodkit.cli.output import print_json

        print_json(report.to_json())
    else:
        sys.stdout.write(format_report(report, args.depth))
    if report.lost:
        sys.stderr.write(f"warning: the kernel dropped {report.lost} events: the counts are low\n")
    return 1 if report.workload_status not in (None, 0) else 0


def format_report(report: TraceReport, depth: int) -> str:
    """The report as text: a table of functions, then the call tree."""
    lines = [f"{report.module}: {report.events} events in {report.seconds:.3f} s"
             + (f", {report.lost} LOST" if report.lost else ""),
             f"{'FUNCTION':<32} {'CALLS':>9} {'TOTAL ms':>11} {'MEAN us':>10} {'P50 us':>10} {'P99 us':>10} "
             f"{'MAX us':>10}"]
    for s in report.functions:
        name = s.name if s.name in report.module_functions else f"{s.name} (kernel)"
        lines.append(f"{name:<32} {s.calls:>9} {s.total_us / 1000:>11.3f} {s.mean_us:>10.3f} {s.p50_us:>10.3f} "
                     f"{s.p99_us:>10.3f} {s.max_us:>10.3f}")
    if report.untraceable:
        lines.append(f"not traceable (notrace): {', '.join(report.untraceable)}")
    lines.append("")
    lines.append("call tree (calls, total ms):")
    _tree(report.tree, 0, depth, lines)
    return "\n".join(lines) + "\n"


def _tree(node: CallNode, level: int, depth: int, lines: list[str]) -> None:
    for child in sorted(node.children.values(), key=lambda n: (-n.calls, n.name)):
        lines.append(f"{'  ' * (level + 1)}{child.name}  {child.calls}  {child.total_us / 1000:.3f}")
        if level + 1 < depth:
            _tree(child, level + 1, depth, lines)
        elif child.children:
            lines.append(f"{'  ' * (level + 2)}...")
