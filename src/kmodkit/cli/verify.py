"""``kmodkit verify``: check module signatures against certificates or a kernel's own trusted keys."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kmodkit.signing.verify import ModuleVerdict


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="+", metavar="MODULE|DIR", help="module files, or directories to search")
    parser.add_argument("--cert", action="append", default=[], metavar="CERT",
                        help="a certificate (DER or PEM) to check with; repeatable")
    parser.add_argument("--certs-dir", action="append", default=[], metavar="DIR",
                        help="every certificate file in DIR (e.g. the output of 'keys extract')")
    kernel = parser.add_mutually_exclusive_group()
    kernel.add_argument("--vmlinuz", metavar="PATH", help="trust what this kernel image trusts")
    kernel.add_argument("-k", "--kernel", dest="kver", metavar="KVER",
                        help="trust what the installed kernel KVER trusts (/boot/vmlinuz-KVER)")
    parser.add_argument("--mok", action="append", default=[], metavar="CERT",
                        help="a certificate enrolled with mokutil: the kernel trusts it too; repeatable")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="worker processes (default: CPUs)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only modules that fail, and the summary")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.signing.sign import find_modules
    from kmodkit.signing.verify import Verdict, VerifyRequest

    paths = find_modules(args.targets)
    request = VerifyRequest(certs=tuple(args.cert), cert_dirs=tuple(args.certs_dir), kernel_release=args.kver,
                            vmlinuz=args.vmlinuz, mok=tuple(args.mok))
    verifier = request.verifier()
    store, kernel = verifier.store, verifier.kernel
    results = verifier.verify_files(paths, jobs=args.jobs)
    if args.json:
        print_json({"kernel": kernel, "certificates": store.certs, "modules": results})
    else:
        out = sys.stdout.write
        for r in results:
            if args.quiet and r.ok:
                continue
            out(_line(r) + "\n")
        counts: dict[Verdict, int] = {}
        for r in results:
            counts[r.verdict] = counts.get(r.verdict, 0) + 1
        summary = ", ".join(f"{n} {v.value}" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        where = f" against the keys of {kernel}" if kernel else ""
        out(f"{len(results)} module(s){where}: {summary}\n")
    return 0 if all(r.ok for r in results) else 1


def _line(r: ModuleVerdict) -> str:
    from kmodkit.signing.verify import Verdict

    text = r.verdict.text
    if r.verdict is Verdict.UNTRUSTED and r.kernel:
        text = f"valid signature, key not trusted by {r.kernel}"
    facts = []
    if r.signer:
        facts.append(f"signer '{r.signer}'")
    if r.key_id:
        facts.append(f"sig_key {r.key_id}")
    if r.hash:
        facts.append(r.hash)
    if r.key_type:
        facts.append(r.key_type)
    line = f"{r.path}: {text}"
    if facts:
        line += " (" + ", ".join(facts) + ")"
    if r.detail:
        line += f": {r.detail}"
    if r.kernel:
        if r.kernel_accepts:
            line += f"; {r.kernel} accepts it"
        elif r.kernel_fatal:
            said = f": {r.kernel_log}" if r.kernel_log else ""
            why = f" ({r.kernel_errno}{said})" if r.kernel_errno else ""
            line += f"; {r.kernel} refuses it{why}, even without module.sig_enforce"
        else:
            line += f"; {r.kernel} refuses it with module.sig_enforce=1 (without, it loads and taints the kernel)"
    return line

