"""``kmodkit load``: load a module and its dependencies, rolling back on failure."""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="NAME|PATH", help="module name, alias, or module file")
    parser.add_argument("params", nargs="*", metavar="PARAM=VALUE", help="parameters for the module")
    parser.add_argument("-k", "--set-version", dest="kver", metavar="KVER",
                        help="kernel tree to resolve names in (default: the running kernel)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, load nothing")
    parser.add_argument("--json", action="store_true", help="print the plan and result as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.index.lookup import kernel_dir
    from kmodkit.loader.loader import LoadFailed, Loader
    from kmodkit.loader.plan import DependencyTree, build_plan
    from kmodkit.runtime.modules import KernelModules

    moddir = kernel_dir(args.kver, None)
    if args.dry_run:
        loaded = KernelModules().loaded_names() if os.path.exists("/proc/modules") else frozenset()
        plan = build_plan(args.target, args.params, DependencyTree(moddir), loaded)
        if args.json:
            print_json(plan)
        else:
            for s in plan.steps:
                extra = f" {' '.join(s.params)}" if s.params else ""
                print(f"{'skip (loaded)' if s.already_loaded else 'load'} {s.name} {s.path}{extra}")
            for b in plan.builtin:
                print(f"builtin {b}")
        return 0
    loader = Loader()
    plan = loader.plan(args.target, args.params, moddir)
    try:
        result = loader.load(plan)
    except LoadFailed as exc:
        if args.json:
            print_json({"ok": False, "explanation": exc.explanation, "rolled_back": exc.rolled_back,
                        "left_loaded": exc.left_loaded})
        else:
            why = exc.explanation
            sys.stderr.write(f"error: {why.module}: {why.problem}; {why.fix}\n")
            for line in why.kernel_lines:
                sys.stderr.write(f"  kernel: {line}\n")
            if exc.rolled_back:
                sys.stderr.write(f"  rolled back: {', '.join(exc.rolled_back)}\n")
            if exc.left_loaded:
                sys.stderr.write(f"  could not unload: {', '.join(exc.left_loaded)}\n")
        return exc.exit_status
    if args.json:
        print_json({"ok": True, **result.to_json()})
    else:
        for name in result.skipped:
            print(f"already loaded {name}")
        for name in result.loaded:
            print(f"loaded {name}")
        for line in result.kernel_lines:
            print(f"  kernel: {line}")
    return 0
