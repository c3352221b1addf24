"""``kmodkit load``: load a module and its dependencies as modprobe plans them, rolling back on failure."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.loader.plan import LoadPlan


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="NAME|PATH", help="module name, alias, or module file")
    parser.add_argument("params", nargs="*", metavar="PARAM=VALUE", help="parameters for the module")
    parser.add_argument("-k", "--set-version", dest="kver", metavar="KVER",
                        help="kernel tree to resolve names in (default: the running kernel)")
    parser.add_argument("--manifest", metavar="FILE",
                        help="kmodkit.toml whose [parameters] defaults apply to its module (default: the "
                             "project manifest found beside or above a module file)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, load nothing")
    parser.add_argument("--no-check", action="store_true",
                        help="hand every module to the kernel without predicting its verdict first (kmodkit check)")
    parser.add_argument("--json", action="store_true", help="print the plan and result as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.index.lookup import kernel_dir
    from kmodkit.kbuild.manifest import Manifest
    from kmodkit.loader.plan import Planner

    moddir = kernel_dir(args.kver, None)
    manifest = Manifest.load(args.manifest) if args.manifest else None
    loader = None
    if not args.dry_run:
        from kmodkit.loader.loader import Loader

        loader = Loader()  # a kernel without module support is said first: nothing could load there
    # one plan, made the same way whether it is shown or run
    plan: LoadPlan = Planner.for_running_kernel(moddir, manifest).plan(args.target, args.params)
    if loader is None:
        if args.json:
            print_json(plan)
        else:
            for line in describe_plan(plan):
                print(line)
        return 0
    from kmodkit.loader.loader import LoadFailed

    try:
        result = loader.load(plan, check=not args.no_check)
    except LoadFailed as exc:
        if args.json:
            print_json({"ok": False, "error": exc.to_json(), "explanation": exc.explanation, "rolled_back": exc.rolled_back,
                        "left_loaded": exc.left_loaded})
        else:
            why = exc.explanation
            sys.stderr.write(f"error: {why.module}: {why.problem}; {why.fix}\n")
            said = "kernel would say" if why.predicted else "kernel"
            for line in why.kernel_lines:
                sys.stderr.write(f"  {said}: {line}\n")
            if why.predicted:
                sys.stderr.write("  (predicted by kmodkit check; nothing was loaded: --no-check asks the kernel)\n")
            if exc.rolled_back:
                sys.stderr.write(f"  rolled back: {', '.join(exc.rolled_back)}\n")
            if exc.left_loaded:
                sys.stderr.write(f"  could not unload: {', '.join(exc.left_loaded)}\n")
        return exc.exit_status
    if args.json:
        print_json({"ok": True, **result.to_json()})
        return 0
    for name in result.skipped:
        print(f"already loaded {name}")
    for run_ in result.installed:
        print(f"ran install command of {run_.module}: {run_.command}")
        for line in run_.output.splitlines():
            print(f"  {line}")
    for name in result.loaded:
        print(f"loaded {name}")
    for why in result.softdep_failures:
        print(f"softdep {why.module} failed (ignored, as modprobe does): {why.problem}")
    for line in result.kernel_lines:
        print(f"  kernel: {line}")
    return 0


def describe_plan(plan: LoadPlan) -> list[str]:
    """One line per step of a load plan: what it does, the module, its file or command, its parameters, why."""
    from kmodkit.index.resolver import StepKind

    lines = []
    for s in plan.steps:
        params = f" {' '.join(s.params)}" if s.params else ""
        why = s.reason.value if s.required else f"{s.reason.value}, optional"
        if s.already_loaded:
            lines.append(f"skip    {s.name} (loaded already)")
        elif s.kind is StepKind.INSMOD:
            lines.append(f"load    {s.name} {s.path}{params}  ({why})")
        elif s.kind is StepKind.INSTALL:
            opts = f" with CMDLINE_OPTS='{' '.join(s.params)}'" if s.params else ""
            lines.append(f"install {s.name}: /bin/sh -c '{s.command}'{opts}  ({why})")
        elif s.kind is StepKind.BUILTIN:
            lines.append(f"builtin {s.name}  ({why})")
        else:
            lines.append(f"none    {s.name}: no file, not built in  ({why})")
    for name in plan.blacklisted:
        lines.append(f"blacklisted {name}")
    return lines
