"""``kmodkit new NAME``: create a module project (source, Kbuild, Makefile, manifest, VM test) that builds as it is."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME",
                        help="module name: a C identifier of at most 55 characters that the kernel does not use")
    parser.add_argument("--dir", metavar="DIR", help="create the project here (default: ./NAME)")
    parser.add_argument("--version", dest="module_version", default="0.1.0", help="MODULE_VERSION (default 0.1.0)")
    parser.add_argument("--description", default="", help="MODULE_DESCRIPTION")
    parser.add_argument("--author", default="kmodkit", help="MODULE_AUTHOR")


def run(args: argparse.Namespace) -> int:
    from kmodkit.kbuild.project import NewProject

    project = NewProject(args.name, Path(args.dir if args.dir else args.name), version=args.module_version,
                         description=args.description, author=args.author)
    for path in project.create():
        sys.stdout.write(f"created {path}\n")
    sys.stdout.write(f"next: cd {project.directory} && kmodkit build --all-installed\n")
    return 0
