"""``kmodkit package deb``: a project's built modules as Debian packages (thin leaf over kbuild.package)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kmodkit.cli.options import project_and_kernels


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    deb = sub.add_parser("deb", help="a binary .deb per kernel (or one with every kernel)",
                         description="Build Debian binary packages of a project's built modules: one per kernel, "
                         "named NAME-modules-KVER, each depending on its kernel's linux-image package.")
    project_and_kernels(deb, "package the build of", default="every kernel the project is built for",
                        project_help="the project directory, holding kmodkit.toml and its builds in out/ (default: .)")
    deb.add_argument("--one", action="store_true", help="one package, NAME-modules, holding every kernel's modules")
    deb.add_argument("--out", metavar="DIR", default=".", help="write the .deb files here (default: .)")
    deb.add_argument("--maintainer", metavar="'NAME <ADDRESS>'", default=None,
                     help="the Maintainer field (default: $DEBFULLNAME <$DEBEMAIL>, as dch, else kmodkit's)")
    deb.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json, report_item
    from kmodkit.errors import UserError
    from kmodkit.kbuild.package import DEFAULT_MAINTAINER, DebBuild

    maintainer = args.maintainer
    if maintainer is None:
        name, email = os.environ.get("DEBFULLNAME"), os.environ.get("DEBEMAIL")
        maintainer = f"{name} <{email}>" if name and email else DEFAULT_MAINTAINER
    job = DebBuild(Path(args.project), args.kernels, args.all_installed, args.one, Path(args.out), maintainer)
    if not job.kernels:
        raise UserError(str(job.project), "is built for no kernel", "run 'kmodkit build' first, or name kernels with -k")
    results = job.run()
    if args.json:
        print_json({"project": str(job.project), "packages": [r.to_json() for r in results]})
    else:
        for r in results:
            if r.error is not None:
                report_item(r.error)
            else:
                sys.stdout.write(f"{r.path}\n")
    return max((r.error.exit_status for r in results if r.error is not None), default=0)
