"""``kmodkit report``: a project's fleet matrix — build, signature and check's verdict of every (module, kernel).

Exit status: 0 when every pair loads, 1 when any is refused or has no build to load, and the error's own
status (2, 3) when a pair could not be judged at all (a kernel without headers).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from kmodkit.cli.options import project_and_kernels

if TYPE_CHECKING:
    from kmodkit.report.fleet import Cell, FleetReport


def configure(parser: argparse.ArgumentParser) -> None:
    project_and_kernels(parser, "report on")
    parser.add_argument("--enforce", choices=("auto", "0", "1"), default="auto",
                        help="signature enforcement on the machines (auto: each kernel's config)")
    parser.add_argument("--lockdown", choices=("auto", "none", "integrity", "confidentiality"), default="auto",
                        help="lockdown on the machines (auto: each kernel's config)")
    parser.add_argument("--cmdline", default="", metavar="WORDS", help="the machines' kernel command line")
    parser.add_argument("--cert", action="append", default=[], metavar="FILE",
                        help="a certificate the machines trust beyond the kernel's own (an enrolled MOK key); "
                             "repeatable")
    parser.add_argument("--html", metavar="FILE", help="also write the report as one self-contained HTML page")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (report.schema.json)")


def run(args: argparse.Namespace) -> int:
    from kmodkit.check.checker import Lockdown, Machine
    from kmodkit.cli.output import error_line, print_json
    from kmodkit.report.fleet import FleetRun, Status
    from kmodkit.signing.trust import TrustStore

    if args.html:
        from kmodkit.report.html import check_destination

        check_destination(args.html)
    store = TrustStore()
    store.add_files(args.cert)
    machine = Machine(enforce=None if args.enforce == "auto" else args.enforce == "1",
                      lockdown=None if args.lockdown == "auto" else Lockdown(args.lockdown),
                      cmdline=tuple(args.cmdline.split()), extra_certs=tuple(c.der for c in store.certs))
    report = FleetRun(args.project, args.kernels, args.all_installed, machine, args.cert).report()
    if args.html:
        from kmodkit.report.html import write

        write(report, args.html)
    errors = [c for c in report.cells if c.status is Status.ERROR]
    for c in errors:
        assert c.judged is not None and c.judged.error is not None
        error_line(f"{c.module} on {c.kernel}", str(c.judged.error))
    if args.json:
        print_json(report)
    else:
        _print(report)
        if args.html:
            sys.stdout.write(f"report written to {args.html}\n")
    if errors:
        return max(c.judged.error.exit_status for c in errors if c.judged is not None and c.judged.error is not None)
    return 0 if report.ok else 1


def _cell_text(c: Cell) -> str:
    from kmodkit.report.fleet import Status

    j = c.judged
    p = j.prediction if j is not None else None
    style = {Status.LOADS: "green", Status.TAINTS: "yellow", Status.REFUSED: "red", Status.NOT_BUILT: "magenta",
             Status.ERROR: "red"}[c.status]
    head = c.status.value
    if p is not None and p.refusal is not None:
        head += f" {p.refusal.errno_name}"
    elif p is not None and p.taints:
        head = f"taints {p.taints}"
    lines = [f"[{style}]{head}[/]"]
    b = c.build
    if b.built:
        lines.append(f"built {(b.built_at or '')[:16].replace('T', ' ')}".rstrip())
        if b.compiler_name:
            lines.append(b.compiler_name)
    elif j is not None:
        lines.append(f"not built; build for {j.built_for}")
    s = c.signature
    if s is not None:
        lines.append("unsigned" if not s.signed else
                     {True: "signed, trusted", False: "signed, not trusted", None: "signed"}[s.trusted])
    return "\n".join(lines)


def _print(report: FleetReport) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from kmodkit.report.fleet import Status

    out = sys.stdout
    table = Table(show_lines=True, header_style="bold", title=f"{report.project} {report.version}")
    table.add_column("module")
    for k in report.kernels:
        table.add_column(escape(k))
    for m in report.modules:
        row = []
        for k in report.kernels:
            c = report.cell(m, k)
            row.append("" if c is None else _cell_text(c))
        table.add_row(escape(m), *row)
    Console(file=out, highlight=False, width=max(100, 24 + 30 * len(report.kernels))).print(table)
    for c in report.cells:
        if c.status.loads or c.status is Status.ERROR:
            continue
        j = c.judged
        out.write(f"{c.module} on {c.kernel}: {c.status.value}")
        if j is None:
            out.write(": no build of it exists\n")
        else:
            p = j.prediction
            if p is not None and p.refusal is not None:
                out.write(f": {p.refusal.errno_name} ({p.refusal.errno}, {p.refusal.strerror})")
            out.write("\n")
            if not c.build.built:
                out.write(f"    not built for {c.kernel}: judged by the build for {j.built_for} ({j.path})\n")
            for line in p.lines if p is not None else ():
                out.write(f"    {line}\n")
            if p is not None and p.refusal is not None:
                out.write(f"    why: {p.refusal.problem}\n")
            if j.abi is not None:
                a = j.abi
                out.write(f"    abi diff {a.built_for} -> {a.kernel}:"
                          + (" vermagic differs;" if a.vermagic else "")
                          + (f" struct module {a.struct_module[0]} -> {a.struct_module[1]} bytes;"
                             if a.struct_module else "")
                          + (" module_layout changed;" if a.module_layout else "")
                          + f" {len(a.broken)} of its imports break\n")
                for b in a.broken:
                    out.write(f"        {b.symbol}: {b.detail}\n")
            for o in c.others:
                out.write(f"    also tried the build for {o.built_for}: {o.status.value}\n")
        if c.fix:
            out.write(f"    fix: {c.fix}\n")
    counts = report.counts()
    out.write(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(report.cells)} pair(s)\n")
