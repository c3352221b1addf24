"""``kmodkit test``: run the manifest's test script in a booted VM per kernel; a table, or JSON.

Exit status: 0 when every kernel passed, 1 when any failed (a kernel the project is not built for
fails with the fix, and the others still run); 2 and 3 as every command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kmodkit.cli.options import project_and_kernels

if TYPE_CHECKING:
    from kmodkit.vm.testrun import KernelTest, TestReport


def configure(parser: argparse.ArgumentParser) -> None:
    project_and_kernels(parser, "test in")
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                        help="kernels booted at once (default 1: a TCG guest keeps a host CPU busy)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="what each kernel's boot and script may take (default 600)")
    parser.add_argument("--memory", type=int, default=1024, metavar="MIB", help="guest memory in MiB (default 1024)")
    parser.add_argument("--runs-dir", metavar="DIR", help="where run directories go (default ~/.cache/kmodkit/vm-runs)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.vm.testrun import ProjectTest

    test = ProjectTest(Path(args.project), kernels=args.kernels, all_installed=args.all_installed, jobs=args.jobs,
                       timeout=args.timeout, memory_mb=args.memory, runs_dir=args.runs_dir)
    if args.json:
        report = test.run()
        print_json(report.to_json())
    else:
        sys.stderr.write(f"test: {len(test.targets)} kernel(s), {min(test.jobs, len(test.targets))} at once\n")
        report = test.run(_progress)
        _table(report)
    return 0 if report.ok else 1


def _progress(r: KernelTest) -> None:
    took = f" in {r.seconds:.0f} s" if r.seconds is not None else ""
    sys.stderr.write(f"test: {r.kernel}: {r.verdict.upper()}{took}\n")
    sys.stderr.flush()


def _table(report: TestReport) -> None:
    from kmodkit.cli.output import report_item
    from kmodkit.cli.vm import report_summary

    width = max(len(r.kernel) for r in report.results)
    out = sys.stdout
    out.write(f"{'KERNEL':<{width}}  {'RESULT':<7}  {'EXIT':>4}  {'SECONDS':>7}\n")
    for r in report.results:
        status = "-" if r.exit_status is None else str(r.exit_status)
        took = "-" if r.seconds is None else f"{r.seconds:.1f}"
        out.write(f"{r.kernel:<{width}}  {r.verdict.upper():<7}  {status:>4}  {took:>7}\n")
    for r in report.results:
        if r.error is not None:
            report_item(r.error)
            continue
        if r.passed:
            continue
        out.flush()
        sys.stderr.write(f"{r.kernel}: {r.verdict}; logs in {r.run_dir}\n")
        for d in r.reports:
            sys.stderr.write(f"  {report_summary(d)}\n")
        for line in r.output_tail.splitlines():
            sys.stderr.write(f"  | {line}\n")
    passed = sum(r.passed for r in report.results)
    out.write(f"{passed} of {len(report.results)} kernels passed\n")
