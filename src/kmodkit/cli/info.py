"""``kmodkit info``: what a module file holds, printed as kmod's modinfo prints it."""

from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("modules", nargs="+", metavar="MODULE", help="module file (.ko, .ko.xz, .ko.zst, .ko.gz), name or alias")
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


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import error_line, print_json
    from kmodkit.errors import KmodkitError
    from kmodkit.modfile.info import InfoQuery, ModuleInfo

    query = InfoQuery(
        targets=args.modules,
        kver=args.kver,
        basedir=args.basedir,
        modname_only=args.modname,
        cwd=_cwd(),
    )
    status = 0
    docs: list[dict[str, object]] = []
    out = sys.stdout.buffer
    sep = b"\0" if args.null else b"\n"
    for target in query.targets:
        try:
            infos: list[ModuleInfo] = query.resolve(target)
            for info in infos:
                if args.json:
                    docs.append(info.to_json())
                else:
                    out.write(info.modinfo_text(field=args.field, separator=sep))
                info.close()
        except KmodkitError as exc:
            status = max(status, exc.exit_status)
            out.flush()
            error_line(exc.subject or target, exc.problem + (f"; {exc.fix}" if exc.fix else ""))
    if args.json:
        print_json(docs, compact=len(docs) > 1)
    return status


def _cwd() -> str:
    # kmod (get_current_dir_name) prefers $PWD when it names the working directory
    pwd = os.environ.get("PWD")
    try:
        if pwd and os.path.isabs(pwd) and os.path.samestat(os.stat(pwd), os.stat(".")):
            return pwd
    except OSError:
        pass
    return os.getcwd()
