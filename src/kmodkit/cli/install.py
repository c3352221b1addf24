"""``kmodkit install`` and ``kmodkit uninstall``: a project's built modules into (out of) a kernel's tree."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", nargs="?", default=".", metavar="DIR",
                        help="the project directory, holding kmodkit.toml (default: .)")
    parser.add_argument("-k", "--kernel", dest="kernels", action="append", default=[], metavar="KVER",
                        help="this kernel (repeatable; default: every kernel the project is built for, "
                        "or installed for when uninstalling)")
    parser.add_argument("--root", metavar="DIR", default=None,
                        help="the root of the machine to install into (default: /)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    return _run(args, remove=False)


def run_uninstall(args: argparse.Namespace) -> int:
    return _run(args, remove=True)


def _run(args: argparse.Namespace, remove: bool) -> int:
    from kmodkit.cli.output import print_json, report_item
    from kmodkit.errors import UserError
    from kmodkit.kbuild.install import Install
    from kmodkit.sysroot import Root

    job = Install(Path(args.project), args.kernels, Root.of(args.root))
    if not job.kernels and not remove:
        raise UserError(str(job.project), "is built for no kernel installed below " + str(job.root),
                        "run 'kmodkit build' first, or name kernels with -k")
    results = job.uninstall() if remove else job.install()
    if args.json:
        print_json({"project": str(job.project), "root": str(job.root), "kernels": [r.to_json() for r in results]})
    else:
        verb = "removed" if remove else "installed"
        for r in results:
            if r.error is not None:
                report_item(r.error)
                continue
            for f in r.files:
                sys.stdout.write(f"{r.kernel}: {verb} {f}\n")
            for f in r.kept:
                sys.stderr.write(f"warning: {f}: changed since kmodkit installed it; left in place\n")
        if not results:
            sys.stdout.write("nothing to do\n")
    return max((r.error.exit_status for r in results if r.error is not None), default=0)
