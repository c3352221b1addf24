"""``kmodkit health``: are a manifest's modules loaded, Live, the right version, untainted, and has the
kernel not died or warned in their code (the kernel log's reports, read with klog)?"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", default="kmodkit.toml", metavar="FILE",
                        help="the manifest naming the expected modules (default kmodkit.toml)")
    parser.add_argument("--log", metavar="FILE", help="the kernel log to look for crashes in (default /dev/kmsg)")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")


def run(args: argparse.Namespace) -> int:
    from kmodkit.cli.output import print_json
    from kmodkit.runtime.health import KMSG, check, kernel_reports, read_manifest
    from kmodkit.runtime.modules import KernelModules

    expectations = read_manifest(args.manifest)
    results = check(expectations, KernelModules(), kernel_reports(args.log or KMSG))
    healthy = all(r.healthy for r in results)
    if args.json:
        print_json({"healthy": healthy, "modules": [r.to_json() for r in results]})
    else:
        from kmodkit.cli.output import paint

        for r in results:
            said = paint("ok", "ok") if r.healthy else paint("UNHEALTHY", "fail") + ": " + "; ".join(r.problems)
            print(f"{r.expectation.name}: {said}")
    return 0 if healthy else 1
