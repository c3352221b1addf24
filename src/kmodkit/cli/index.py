"""``kmodkit index``: write a kernel tree's module index, as depmod does."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("kver", metavar="KVER", help="kernel release (the directory under lib/modules)")
    parser.add_argument("-b", "--basedir", metavar="BASEDIR", help="root of a module tree image (default /)")
    parser.add_argument("-o", "--outdir", metavar="OUTDIR",
                        help="write the index here instead of BASEDIR/lib/modules/KVER")
    parser.add_argument("-C", "--config", metavar="PATH", action="append",
                        help="depmod.d directory or file (repeatable; default: the system's)")
    parser.add_argument("-E", "--symvers", metavar="FILE", help="Module.symvers: the kernel's symbols and CRCs")
    parser.add_argument("-F", "--filesyms", metavar="FILE", help="System.map: the kernel's symbols")
    parser.add_argument("-e", "--errsyms", action="store_true",
                        help="report symbols no module or kernel provides (needs -E or -F)")
    parser.add_argument("-n", "--dry-run", action="store_true", help="write modules.dep to stdout, nothing else")
    parser.add_argument("--no-cache", action="store_true", help="read every module, ignoring the cache")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="processes reading modules (default 2)")
    parser.add_argument("--kmod-compat", choices=("30", "34"), metavar="30|34",
                        help="write the files as this kmod's depmod does: 30 (Debian 12) or 34 (Debian 13: "
                             "modules.weakdep, pre-order tries); default: the kmod installed here")
    parser.add_argument("--json", action="store_true", help="print a summary as JSON")


def run(args: argparse.Namespace) -> int:
    """Compute and write the index; 1 when modules could not be read or symbols are unknown with -e."""
    import os

    from kmodkit.index.indexer import Indexer
    from kmodkit.index.inputs import KmodCompat

    from kmodkit.index.lookup import kernel_basedir

    basedir = args.basedir if args.basedir is not None else kernel_basedir(args.kver)
    ix = Indexer(args.kver, basedir, outdir=args.outdir, config_paths=args.config, symvers=args.symvers,
                 system_map=args.filesyms, errsyms=args.errsyms, jobs=args.jobs, use_cache=not args.no_cache,
                 compat=KmodCompat(args.kmod_compat) if args.kmod_compat else None)
    read = None if args.dry_run else ix.up_to_date()
    if read is not None:
        if args.json:
            from kmodkit.cli.output import print_json

            print_json({"outdir": os.path.abspath(ix.outdir), "modules": ix.module_count, "files": [],
                        "unchanged": list(ix.inputs.compat.index_files), "read": read, "failures": [], "issues": []})
        return 0

    from kmodkit.cli.output import print_json, report_item

    from kmodkit.index.depmod import DependencyCycleError

    try:
        result, files = ix.rebuild()
    except DependencyCycleError as exc:  # depmod's lines and status; nothing is written
        if args.json:
            raise  # the error boundary's JSON document
        sys.stderr.writelines(f"error: {line}\n" for line in exc.lines())
        return exc.exit_status
    for problem in ix.inputs.config.problems:  # skipped lines: the run goes on and may exit 0
        sys.stderr.write(f"warning: {problem}\n")
    for path, kind in result.walk.unsupported if result.walk is not None else ():
        sys.stderr.write(f"warning: {path}: {kind}, not a module file: skipped (depmod: unsupported file type)\n")
    for failure in result.failures:
        report_item(failure)
    for issue in result.issues:
        sys.stderr.write(f"warning: {issue}\n")
    if args.dry_run:
        sys.stdout.buffer.write(files["modules.dep"])
        return 1 if result.failures else 0
    written = ix.write(result, files)
    if args.json:
        print_json({"outdir": os.path.abspath(ix.outdir), "modules": len(result.modules),
                    "files": list(written.files), "unchanged": list(written.unchanged),
                    "read": result.read_count,
                    "failures": [{"path": f.path, "reason": f.message} for f in result.failures],
                    "issues": [str(i) for i in result.issues]})
    return 1 if result.failures or (args.errsyms and result.issues) else 0
