"""``kmodkit oops``: find, classify and decode the kernel reports (oops, WARNING, panic...) in logs.

Exit status: 0 when the logs hold no report, 1 when they hold at least one (the command "checked"
the logs and found a problem, as README's status 1 says), 2 for a log or directory that cannot be
read (the other logs are still read), 3 when the environment is not ready.  ``--vmcore FILE`` reads
the kernel log out of a crash dump; ``--dmesg`` prints that log (as makedumpfile does) and exits 0,
or 2 when a dump cannot be read.
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("logs", nargs="*", metavar="LOG", help="kernel log files (dmesg, journalctl -k, kern.log, "
                        "a serial console); '-' or none for standard input")
    parser.add_argument("--module-path", action="append", default=[], metavar="DIR",
                        help="look for module files (.ko, .ko.xz...) here first; may be repeated")
    parser.add_argument("-k", "--kver", metavar="KVER", help="the kernel release (default: the one each report names)")
    parser.add_argument("--follow", action="store_true", help="read standard input as a stream (dmesg -w) and print "
                        "each report as soon as it is complete")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON (one object per line with "
                        "--follow)")
    parser.add_argument("--vmcore", action="append", default=[], metavar="FILE",
                        help="read the kernel log out of a crash dump (an ELF vmcore with VMCOREINFO, as 'vm run "
                             "--dump-on-panic' writes) and decode its reports; no debug vmlinux needed (repeatable)")
    parser.add_argument("--dmesg", action="store_true",
                        help="with --vmcore: print the dump's kernel log as 'makedumpfile --dump-dmesg' does, "
                             "instead of its reports")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json, report_item
    from kmodkit.errors import KmodkitError, UserError
    from kmodkit.klog.diagnose import STDIN, OopsQuery, render_text

    if args.dmesg:
        return _dmesg(args)
    logs = tuple(args.logs) or (() if args.vmcore else (STDIN,))
    if not args.logs and not args.vmcore and sys.stdin.isatty():
        raise UserError("oops", "no log given", "name log files, or pipe one in: dmesg | kmodkit oops")
    if args.follow and (logs != (STDIN,) or args.vmcore):
        raise UserError("--follow", "reads standard input only", "pipe the stream in: dmesg -w | kmodkit oops --follow")
    query = OopsQuery(logs=logs, module_paths=tuple(args.module_path), kver=args.kver, vmcores=tuple(args.vmcore))
    found = 0
    worst = 0
    if args.follow:
        for d in query.follow(sys.stdin.fileno()):
            found += 1
            if args.json:
                print_json(d.to_json(), compact=True)
            else:
                sys.stdout.write(render_text(d))
            sys.stdout.flush()
        return 1 if found else 0
    docs = []
    for item in query.diagnose():
        if isinstance(item, KmodkitError):
            report_item(item)  # stdout flushed first
            worst = max(worst, item.exit_status)
            continue
        found += 1
        if args.json:
            docs.append(item.to_json())
        else:
            sys.stdout.write(render_text(item))
    if args.json:
        print_json(docs)
    return max(worst, 1 if found else 0)


def _dmesg(args: argparse.Namespace) -> int:
    """``--dmesg``: each vmcore's kernel log on stdout; a dump that cannot be read is one error line
    (exit 2) and the others are still printed."""
    from kmodkit.cli.output import error_line
    from kmodkit.errors import KmodkitError, UserError
    from kmodkit.vmcore.dump import Vmcore

    if not args.vmcore:
        raise UserError("--dmesg", "prints the kernel log of a crash dump", "name one: --vmcore FILE")
    if args.logs or args.json or args.follow:
        raise UserError("--dmesg", "reads --vmcore files only", "drop the logs, --json and --follow")
    worst = 0
    for path in args.vmcore:
        try:
            with Vmcore(path) as core:
                text = core.dmesg()
        except KmodkitError as exc:
            sys.stdout.flush()
            error_line(exc.subject, exc.problem + (f"; {exc.fix}" if exc.fix else ""))
            worst = max(worst, exc.exit_status)
            continue
        sys.stdout.buffer.write(text)
    sys.stdout.flush()
    return worst
