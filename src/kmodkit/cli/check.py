"""``kmodkit check``: will these modules load on those kernels, and why not (from files alone)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.check.run import PairResult


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("modules", nargs="+", metavar="MODULE", help="module files (.ko, .ko.xz, ...)")
    parser.add_argument("-k", "--kernel", dest="kernels", action="append", default=[], metavar="KVER|DIR",
                        help="an installed kernel's release, or a directory holding a kernel's Module.symvers and "
                             ".config (and optionally vmlinuz and include/generated/utsrelease.h); repeatable")
    parser.add_argument("--all-installed", action="store_true", help="every installed kernel")
    parser.add_argument("--enforce", choices=("auto", "0", "1"), default="auto",
                        help="signature enforcement: auto = CONFIG_MODULE_SIG_FORCE or module.sig_enforce=1 in "
                             "--cmdline")
    parser.add_argument("--lockdown", choices=("auto", "none", "integrity", "confidentiality"), default="auto",
                        help="lockdown level: auto = from the kernel's config and lockdown= in --cmdline")
    parser.add_argument("--cmdline", default="", metavar="WORDS",
                        help="the kernel command line (module.sig_enforce=1, module_blacklist=a,b, lockdown=...)")
    parser.add_argument("--cert", action="append", default=[], metavar="FILE",
                        help="a certificate the machine trusts beyond the kernel's own (an enrolled MOK key); "
                             "repeatable")
    parser.add_argument("--loaded", action="append", default=[], metavar="NAME",
                        help="a module already loaded on the machine; repeatable")
    parser.add_argument("--tainted", default="", metavar="LETTERS",
                        help="taint letters already set (default: a fresh boot, nothing)")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.check.checker import Lockdown, Machine
    from kmodkit.check.run import CheckRun
    from kmodkit.cli.output import error_line, print_json
    from kmodkit.modfile.module import normalize_name
    from kmodkit.signing.trust import TrustStore

    store = TrustStore()
    store.add_files(args.cert)
    machine = Machine(
        enforce=None if args.enforce == "auto" else args.enforce == "1",
        lockdown=None if args.lockdown == "auto" else Lockdown(args.lockdown),
        cmdline=tuple(args.cmdline.split()),
        extra_certs=tuple(c.der for c in store.certs),
        loaded=frozenset(normalize_name(n) for n in args.loaded),
        tainted=args.tainted,
    )
    results = list(CheckRun(args.modules, args.kernels, machine, args.all_installed).results())
    for r in results if not args.json else ():  # the JSON document holds each pair's error object
        if r.error is not None:
            error_line(f"{r.module} on {r.kernel}", str(r.error))
    if args.json:
        print_json([r for r in results])
    else:
        _print(results)
    if any(r.error is not None for r in results):
        return max(r.error.exit_status for r in results if r.error is not None)
    return 0 if all(r.prediction is not None and r.prediction.loads for r in results) else 1


#: an outcome's colour (cli/output.py's statuses)
_OUTCOME_STATUS = {"loads": "ok", "loads, taints": "warn", "refused": "fail"}


def _print(results: list[PairResult]) -> None:
    from kmodkit.cli.output import paint

    out = sys.stdout
    for r in results:
        p = r.prediction
        if p is None:
            continue
        head = f"{p.path} on {p.kernel}: {paint(p.outcome.value, _OUTCOME_STATUS[p.outcome.value])}"
        if p.taints:
            head += f" ({' '.join(p.taints)})"
        if p.refusal is not None:
            head += f": {p.refusal.errno_name} ({p.refusal.errno}, {p.refusal.strerror})"
        out.write(head + "\n")
        for line in p.lines:
            out.write(f"    {line}\n")
        if p.refusal is not None:
            out.write(f"    why: {p.refusal.problem}\n")
            if p.refusal.fix:
                out.write(f"    fix: {p.refusal.fix}\n")
        if p.needs:
            out.write(f"    needs loaded first: {', '.join(p.needs)}\n")
    pairs = [r for r in results if r.prediction is not None]
    if len(results) > 1:
        _matrix(results)
        loads = sum(1 for r in pairs if r.prediction is not None and r.prediction.loads)
        out.write(f"{loads} of {len(results)} load; {len(pairs) - loads} refused"
                  + (f"; {len(results) - len(pairs)} not checked" if len(pairs) < len(results) else "") + "\n")


def _cell(r: PairResult) -> str:
    p = r.prediction
    if p is None:
        return "error"
    if p.refusal is not None:
        return f"refused {p.refusal.errno_name}"
    return f"taints {p.taints}" if p.taints else "loads"


def _matrix(results: list[PairResult]) -> None:
    """The fleet matrix: one row per module, one column per kernel."""
    from rich.console import Console
    from rich.table import Table

    kernels = list(dict.fromkeys(r.kernel for r in results))
    modules = list(dict.fromkeys(r.module for r in results))
    cells = {(r.module, r.kernel): _cell(r) for r in results}
    table = Table(show_lines=False, header_style="bold")
    table.add_column("module")
    for k in kernels:
        table.add_column(k)
    style = {"loads": "green", "taints": "yellow", "refused": "red", "error": "red"}
    for m in modules:
        row = [cells.get((m, k), "") for k in kernels]
        table.add_row(m, *(f"[{style[c.split()[0]]}]{c}[/]" if c else "" for c in row))
    Console(file=sys.stdout, highlight=False, width=max(100, 24 + 28 * len(kernels))).print(table)
