"""``kmodkit info``: what a module file holds, printed as kmod's modinfo prints it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.modfile.info import Rendered


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("modules", nargs="*", metavar="MODULE", help="module file (.ko, .ko.xz, .ko.zst, .ko.gz), name or alias")
    parser.add_argument("-F", "--field", help="print only this field's values")
    parser.add_argument("-a", "--author", dest="field", action="store_const", const="author", help="print only 'author'")
    parser.add_argument("-d", "--description", dest="field", action="store_const", const="description",
                        help="print only 'description'")
    parser.add_argument("-l", "--license", dest="field", action="store_const", const="license", help="print only 'license'")
    parser.add_argument("-p", "--parameters", dest="field", action="store_const", const="parm", help="print only 'parm'")
    parser.add_argument("-n", "--filename", dest="field", action="store_const", const="filename",
                        help="print only 'filename'")
    parser.add_argument("-0", "--null", action="store_true", help="end each value with NUL instead of newline")
    parser.add_argument("-m", "--modname", action="store_true", help="take arguments as module names, not aliases or files")
    parser.add_argument("-k", "--set-version", dest="kver", metavar="KVER", help="resolve names in this kernel's tree")
    parser.add_argument("-b", "--basedir", metavar="DIR", help="root under which /lib/modules is found")
    parser.add_argument("--json", action="store_true", help="print everything as JSON, including symbols and signature")
    parser.add_argument("--summary", action="store_true",
                        help="summarize the modules (default: every module of the -k KVER tree) instead of listing them")
    parser.add_argument("--no-cache", action="store_true",
                        help="with --json, neither read nor fill the cache of described files (~/.cache/kmodkit)")
    parser.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                        help="worker processes for large batches (default: one per CPU)")


def run(args: argparse.Namespace) -> int:
    import json

    from kmodkit.cli.output import error_record, mark_printed, report_item
    from kmodkit.errors import UserError
    from kmodkit.modfile.info import View, render_all
    from kmodkit.names import ModuleQuery

    if args.summary:
        return _summary(args)
    if not args.modules:
        raise UserError("info", "no module given", "name module files, names or aliases (or use --summary -k KVER)")

    query = ModuleQuery(
        targets=args.modules,
        kver=args.kver,
        basedir=args.basedir,
        modname_only=args.modname,
        cwd=_cwd(),
    )
    view = View.JSON if args.json else View.MODINFO
    items = render_all(query, view, field=args.field, separator=b"\0" if args.null else b"\n", jobs=args.jobs,
                       cache=not args.no_cache)
    if view is View.JSON and len(query.targets) == 1:
        return _one_json(list(items)[0])  # the whole generator: the cache is written when it ends
    out = sys.stdout.buffer
    status = 0
    first = True
    if view is View.JSON:
        out.write(b"[")
    for item in items:
        if item.error is not None:
            status = max(status, item.error.exit_status)
            if view is View.JSON:  # the item's error object in the list, where its document would be
                record = json.dumps(error_record(item.error), ensure_ascii=False).encode()
                out.write(record if first else b"," + record)
                first = False
            else:
                report_item(item.error)  # flushes stdout first
            continue
        if view is View.JSON and item.output:
            out.write(item.output if first else b"," + item.output)
            first = False
        else:
            out.write(item.output)
    if view is View.JSON:
        out.write(b"]\n")
        mark_printed()
    return status


def _summary(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.errors import NotFoundError
    from kmodkit.index.lookup import kernel_dir
    from kmodkit.modfile.summary import format_summary, summarize, tree_modules

    if args.modules:
        paths, title = list(args.modules), f"{len(args.modules)} module files"
    else:
        tree = kernel_dir(args.kver, args.basedir)
        paths, title = tree_modules(tree), tree
        if not paths:
            raise NotFoundError(tree, "no module files there", "install the kernel's modules or name another with -k")
    summary = summarize(paths, jobs=args.jobs)
    if args.json:
        print_json(summary.to_json())
    else:
        sys.stdout.write(format_summary(summary, title))
    return 1 if summary.errors else 0


def _one_json(item: Rendered) -> int:
    """One target (rendered as every batch is, cache included): indented JSON, for people reading it."""
    from kmodkit.cli.output import print_json, report_item

    if item.error is not None:
        report_item(item.error)
        return item.error.exit_status
    import json

    print_json(list(item.docs) or json.loads(b"[" + item.output + b"]"))
    return 0


def _cwd() -> str:
    # kmod (get_current_dir_name) prefers $PWD when it names the working directory
    pwd = os.environ.get("PWD")
    try:
        if pwd and os.path.isabs(pwd) and os.path.samestat(os.stat(pwd), os.stat(".")):
            return pwd
    except OSError:
        pass
    return os.getcwd()
