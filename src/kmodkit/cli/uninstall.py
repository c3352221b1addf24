"""``kmodkit uninstall``: remove exactly what ``kmodkit install`` put into a root (see cli/install.py)."""

from __future__ import annotations

import argparse

from kmodkit.cli import install


def configure(parser: argparse.ArgumentParser) -> None:
    install.configure(parser)


def run(args: argparse.Namespace) -> int:
    return install.run_uninstall(args)
