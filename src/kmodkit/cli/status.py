"""``kmodkit status``: loaded modules, their state, parameters and taint, and the kernel's crashes in them."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="modules to show in detail (default: all, as a table)")
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    parser.add_argument("--built", nargs="?", const=".", metavar="DIR",
                        help="instead: what the project in DIR (default .) has built, signed and installed per "
                        "kernel, as 'dkms status' shows")
    parser.add_argument("--root", metavar="DIR", help="with --built: the machine's root to look at (default /)")


def run(args: argparse.Namespace) -> int:
    if args.built is not None:
        return _built(args)
    from kmodkit.cli.output import print_json
    from kmodkit.runtime.health import crash_problems, kernel_reports
    from kmodkit.runtime.modules import KernelModules
    from kmodkit.runtime.taint import decode_mask, mask_letters

    kernel = KernelModules()
    mods = kernel.status(args.names)
    mask = kernel.kernel_taint()
    reports = kernel_reports() if mask else []  # an untainted kernel has neither died nor warned
    crashes = {m.name: crash_problems(m.name, reports, mask_letters(mask or 0)) for m in mods}
    if args.json:
        print_json({"kernel_taint": {"mask": mask, "letters": mask_letters(mask or 0),
                                     "flags": [f.to_json() for f in decode_mask(mask or 0)]},
                    "modules": [{**m.to_json(), "crashes": crashes[m.name]} for m in mods]})
        return 0
    lines = []
    if args.names:
        for m in mods:
            lines.append(f"{m.name}: {m.state.value} (initstate {m.initstate or '-'})")
            lines.append(f"  refcount {m.refcount}, size {m.size}, holders {', '.join(m.holders) or '-'}")
            lines.append(f"  version {m.version or '-'}, srcversion {m.srcversion or '-'}")
            for f in m.taint_flags:
                lines.append(f"  taint {f.letter}: {f.meaning}")
            for p, v in m.parameters:
                lines.append(f"  parameter {p} = {v if v is not None else '(not readable)'}")
            for c in crashes[m.name]:
                lines.append(f"  crash: {c}")
    else:
        lines.append(f"{'MODULE':<24} {'STATE':<9} {'REFS':>4} {'SIZE':>8} {'TAINT':<5} {'VERSION':<12} HOLDERS")
        for m in mods:
            lines.append(f"{m.name:<24} {m.state.value:<9} {m.refcount:>4} {m.size:>8} {m.taint or '-':<5} "
                         f"{m.version or '-':<12} {','.join(m.holders) or '-'}")
        lines += [f"{name}: {c}" for name, cs in crashes.items() for c in cs]
    flags = decode_mask(mask or 0)
    lines.append(f"kernel taint: {mask if mask is not None else 'unknown'}"
                 + (f" ({', '.join(f'{f.letter} {f.name.lower()}' for f in flags)})" if flags else ""))
    print("\n".join(lines))
    return 0


def _built(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kmodkit.cli.output import print_json
    from kmodkit.kbuild.install import built_status
    from kmodkit.sysroot import Root

    rows = built_status(Path(args.built), Root.of(args.root))
    if args.json:
        print_json({"project": str(Path(args.built).resolve()), "modules": [r.to_json() for r in rows]})
        return 0
    lines = [f"{'KERNEL':<28} {'MODULE':<20} {'VERSION':<10} {'BUILT':<5} {'SIGNED':<6} INSTALLED"]
    for r in rows:
        installed = "-" if r.installed is None else f"{r.installed}" + ("" if r.current else " (not this build)")
        lines.append(f"{r.kernel:<28} {r.module:<20} {r.version:<10} {'yes' if r.built else 'no':<5} "
                     f"{'yes' if r.signed else 'no':<6} {installed}")
    print("\n".join(lines))
    return 0
