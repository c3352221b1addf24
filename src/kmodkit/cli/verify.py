"""``kmodkit verify``: check module signatures against certificates or a kernel's own trusted keys."""

from __future__ import annotations

import argparse
import os
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
    from kmodkit.errors import UserError
    from kmodkit.signing.sign import find_modules
    from kmodkit.signing.trust import TrustStore
    from kmodkit.signing.verify import Verdict, Verifier

    paths = find_modules(args.targets)
    store = TrustStore()
    kernel = None
    named_kernel = args.kver or args.vmlinuz
    if named_kernel or not (args.cert or args.certs_dir):
        from kmodkit.signing.kernel import kernel_keys

        if not named_kernel and not os.path.exists(f"/boot/vmlinuz-{os.uname().release}"):
            raise UserError("verify", "no certificates and no kernel named, and the running kernel has no image in "
                            "/boot", "pass --cert, --certs-dir, -k KVER or --vmlinuz PATH")
        keys = kernel_keys(release=args.kver, vmlinuz=args.vmlinuz)
        kernel = keys.label
        for der in keys.certs:
            store.add_der(der, f"vmlinuz-{keys.label}")
    # with a kernel named, other certificates only show whether a signature is genuine: the kernel does not trust them
    extra_trusted = kernel is None
    store.add_files(args.cert, trusted=extra_trusted)
    for d in args.certs_dir:
        store.add_dir(d, trusted=extra_trusted)
    store.add_files(args.mok, trusted=True)
    results = Verifier(store, kernel).verify_files(paths, jobs=args.jobs)
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
        line += (f"; {r.kernel} accepts it" if r.kernel_accepts
                 else f"; {r.kernel} refuses it with module.sig_enforce=1 (without, it loads and taints the kernel)")
    return line

