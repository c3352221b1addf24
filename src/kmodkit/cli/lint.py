"""``kmodkit lint``: check module source for outdated or unsafe conventions; ``FILE:LINE: RULE: MESSAGE``."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default=".", metavar="PATH",
                        help="a module's .c file or project directory (default: .)")
    parser.add_argument("-k", "--kernel", metavar="KVER", help="check GPL-only symbols against this kernel's headers")
    parser.add_argument("--symvers", metavar="FILE", help="check GPL-only symbols against this Module.symvers")
    parser.add_argument("--rule", dest="rules", action="append", metavar="RULE", help="run only this rule (repeatable)")
    parser.add_argument("--list-rules", action="store_true", help="print every rule with its bad and good example")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.lint.linter import Linter
    from kmodkit.lint.rules import rules

    if args.list_rules:
        for r in rules().values():
            sys.stdout.write(f"{r.id}: {r.summary}\n  why: {r.why}\n  bad:\n")
            sys.stdout.write("".join(f"    {line}\n" for line in r.bad.splitlines()))
            sys.stdout.write("  good:\n" + "".join(f"    {line}\n" for line in r.good.splitlines()) + "\n")
        return 0
    report = Linter(args.path, symvers=args.symvers, kernel=args.kernel, only=args.rules).run()
    if args.json:
        print_json(report.to_json())
    else:
        from kmodkit.cli.output import paint

        for f in report.findings:
            sys.stdout.write(f"{f.file}:{f.line}: {paint(f.rule, 'warn')}: {f.message}\n")
        for s in report.skipped:
            sys.stderr.write(f"lint: skipped {s}\n")
    return 1 if report.findings else 0
