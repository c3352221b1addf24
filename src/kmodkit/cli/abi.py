"""``kmodkit abi diff K1 K2``: what changed in the exported ABI between two kernels, and what it breaks."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    diff = sub.add_parser("diff", help="compare two kernels' exports, CRCs, struct module and vermagic")
    diff.add_argument("old", metavar="K1", help="the kernel a module was built for (release or directory)")
    diff.add_argument("new", metavar="K2", help="the kernel it is to load on (release or directory)")
    diff.add_argument("--for", dest="modules", action="append", default=[], metavar="MODULE",
                      help="say which imports of this module K2 refuses; repeatable")
    diff.add_argument("--symbols", action="store_true", help="list every changed symbol, not only the counts")
    diff.add_argument("--json", action="store_true", help="print the differences as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.check.abi import Change, abi_diff, breaks, module_imports
    from kmodkit.check.run import target_kernel
    from kmodkit.cli.output import print_json

    diff = abi_diff(target_kernel(args.old), target_kernel(args.new))
    broken = {}
    for path in args.modules:
        imports = module_imports(path)
        broken[path] = breaks(diff, imports.symbols, imports.gpl, imports.namespaces)
    rebuild = diff.module_layout or diff.struct_module is not None or diff.vermagic is not None
    if args.json:
        print_json({"diff": diff, "modules": [{"path": p, "rebuild_needed": rebuild or bool(b), "broken_imports": b}
                                              for p, b in broken.items()]})
        return 1 if rebuild or any(broken.values()) else 0
    out = sys.stdout
    out.write(f"{diff.old} -> {diff.new}\n")
    if diff.vermagic:
        out.write(f"  vermagic: '{diff.vermagic[0].strip()}' -> '{diff.vermagic[1].strip()}'\n")
    if diff.struct_module:
        out.write(f"  struct module: {diff.struct_module[0]} -> {diff.struct_module[1]} bytes\n")
    out.write(f"  module_layout: {'changed: every module must be rebuilt' if diff.module_layout else 'same'}\n")
    out.write("  exports: " + ", ".join(f"{diff.count(c)} {c.value}" for c in Change) + "\n")
    if args.symbols:
        for s in diff.symbols:
            out.write(f"    {s.change.value:14} {s.name}\n")
    for path, b in broken.items():
        if rebuild:
            out.write(f"{path}: rebuild needed (the kernels' module ABI differs)\n")
        elif not b:
            out.write(f"{path}: none of its imports changed\n")
        else:
            out.write(f"{path}: rebuild needed: {len(b)} import(s) break\n")
        for imp in b:
            out.write(f"    {imp.symbol}: {imp.detail}\n")
    return 1 if rebuild or any(broken.values()) else 0
