"""``kmodkit doctor``: is this machine ready to build modules for its kernels, and the commands that fix it."""

from __future__ import annotations

import argparse
import sys

_MARK = {"ok": "ok  ", "info": "    ", "warn": "warn", "fail": "FAIL"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", "--kernel", dest="kernels", action="append", metavar="KVER",
                        help="check this kernel (repeatable; default: every installed kernel)")
    parser.add_argument("--root", default="/", metavar="DIR", help="check the machine whose / is DIR (default: /)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.kbuild.doctor import Doctor

    report = Doctor(root=args.root, kernels=args.kernels).run()
    if args.json:
        print_json(report.to_json())
        return 0 if report.ready else 1
    from kmodkit.cli.output import paint

    out = sys.stdout
    for f in report.findings:
        out.write(f"{paint(_MARK[f.status.value], f.status.value)}  {f.check:<15} {f.message}\n")
        if f.fix:
            out.write(f"{'':6}{'':<15} fix: {f.fix}\n")
    ready = [k.kernel.release for k in report.kernels if k.ready]
    blocked = [k.kernel.release for k in report.kernels if not k.ready]
    out.write("\n")
    if ready:
        out.write(f"build targets: {' '.join(ready)}\n")
    if blocked:
        out.write(f"blocked: {' '.join(blocked)}\n")
    out.write(paint("ready to build", "ok") + "\n" if report.ready
              else paint("not ready", "fail") + ": fix the FAIL lines above\n")
    return 0 if report.ready else 1
