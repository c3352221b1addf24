"""``kmodkit init [DIR]``: write a kmodkit.toml for an existing Kbuild tree (nothing else is touched)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", nargs="?", default=".", metavar="DIR",
                        help="the tree make builds with M=DIR (default: .)")


def run(args: argparse.Namespace) -> int:
    from kmodkit.kbuild.adopt import Adoption

    adoption = Adoption(Path(args.directory))
    path = adoption.write()
    for m in adoption.modules:
        where = f" (in {m.subdir}/)" if m.subdir else ""
        sys.stdout.write(f"module {m.name}{where}: {', '.join(m.sources) or 'no .c source found'}\n")
    for s in adoption.skipped:
        sys.stderr.write(f"warning: {s}\n")
    sys.stdout.write(f"created {path}\nnext: kmodkit build {adoption.directory}\n")
    return 0
