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
    kernel.add_argument("-k", "--kernel", dest="kvers", action="append", default=[], metavar="KVER",
                        help="trust what the installed kernel KVER trusts (/boot/vmlinuz-KVER); repeatable: each "
                             "module is verified for each kernel")
    parser.add_argument("--mok", action="append", default=[], metavar="CERT",
                        help="a certificate enrolled with mokutil: the kernel trusts it too; repeatable")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="worker processes (default: CPUs)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only modules that fail, and the summary")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json, report_item
    from kmodkit.signing.sign import gather_modules
    from kmodkit.signing.verify import Verdict, VerifyRequest

    paths, missing = gather_modules(args.targets)
    for err in missing:
        report_item(err)
    if not paths:
        return max((e.exit_status for e in missing), default=2)
    store_certs: list[object] = []
    kernels: list[str | None] = []
    results: list[ModuleVerdict] = []
    for kver in args.kvers or [None]:
        request = VerifyRequest(certs=tuple(args.cert), cert_dirs=tuple(args.certs_dir), kernel_release=kver,
                                vmlinuz=args.vmlinuz, mok=tuple(args.mok))
        verifier = request.verifier()
        kernels.append(verifier.kernel)
        store_certs.extend(c for c in verifier.store.certs if c not in store_certs)
        results.extend(verifier.verify_files(paths, jobs=args.jobs))
    kernel = kernels[0]
    if args.json:
        print_json({"kernel": kernel, "kernels": kernels, "certificates": store_certs, "modules": results})
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
        named = [k for k in kernels if k]
        where = f" against the keys of {', '.join(named)}" if named else ""
        out(f"{len(results)} module(s){where}: {summary}\n")
    return max([0 if all(r.ok for r in results) else 1] + [e.exit_status for e in missing])


def _line(r: ModuleVerdict) -> str:
    from kmodkit.cli.output import paint
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
    status = "ok" if r.ok else "fail" if r.verdict in (Verdict.INVALID, Verdict.MALFORMED) else "warn"
    line = f"{r.path}: {paint(text, status)}"
    if facts:
        line += " (" + ", ".join(facts) + ")"
    if r.detail:
        line += f": {r.detail}"
    if r.kernel:
        if r.verdict is Verdict.VALID:
            line += f"; {r.kernel} accepts it, also where signatures are enforced"
        elif r.kernel_fatal:
            said = f": {r.kernel_log}" if r.kernel_log else ""
            why = f" ({r.kernel_errno}{said})" if r.kernel_errno else ""
            line += f"; {r.kernel} refuses it{why}, even where nothing is enforced"
        else:
            line += (f"; {r.kernel} refuses it where signatures are enforced (module.sig_enforce=1, "
                     "CONFIG_MODULE_SIG_FORCE, UEFI Secure Boot) or it is locked down; elsewhere it loads and taints "
                     "the kernel (E)")
    return line

