"""``kmodkit exporter``: serve module metrics for Prometheus (loopback unless told otherwise)."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:9417", metavar="HOST:PORT",
                        help="address to serve /metrics on, [V6]:PORT for IPv6 (default 127.0.0.1:9417)")
    parser.add_argument("--manifest", action="append", default=[], metavar="FILE",
                        help="also export the health of this manifest's modules (repeatable)")
    parser.add_argument("--once", action="store_true", help="print one scrape to stdout and exit")


def run(args: argparse.Namespace) -> int:
    from kmodkit.runtime.exporter import Listen, make_server, registry, render
    from kmodkit.runtime.health import read_manifest
    from kmodkit.runtime.modules import KernelModules

    listen = Listen.parse(args.listen)
    expectations = [e for m in args.manifest for e in read_manifest(m)]  # a bad manifest is the user's error first
    kernel = KernelModules()
    kernel.proc_modules()  # fail now, with the fix, where the kernel has no module support
    reg = registry(kernel, expectations)
    if args.once:
        sys.stdout.buffer.write(render(reg))
        return 0
    server = make_server(listen, reg)
    sys.stderr.write(f"serving metrics on {listen.url(server.server_port)}\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
