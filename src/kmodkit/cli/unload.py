"""``kmodkit unload``: unload a module, and with --with-deps what only it needed."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the loaded module's name")
    parser.add_argument("--with-deps", action="store_true",
                        help="also unload the dependencies nothing else holds, as modprobe -r does")
    parser.add_argument("--json", action="store_true", help="print what was unloaded as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.loader.loader import Loader

    removed = Loader().unload(args.name, with_deps=args.with_deps)
    if args.json:
        print_json({"unloaded": removed})
    else:
        for name in removed:
            print(f"unloaded {name}")
    return 0
