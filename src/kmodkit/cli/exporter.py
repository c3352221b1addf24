"""``kmodkit exporter``: serve module metrics for Prometheus (loopback unless told otherwise)."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:9417", metavar="HOST:PORT",
                        help="address to serve /metrics on (default 127.0.0.1:9417)")
    parser.add_argument("--manifest", action="append", default=[], metavar="FILE",
                        help="also export the health of this manifest's modules (repeatable)")
    parser.add_argument("--once", action="store_true", help="print one scrape to stdout and exit")


def run(args: argparse.Namespace) -> int:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app

    from kmodkit.runtime.exporter import Listen, registry, render
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

    class _Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *a: object) -> None:  # noqa: A002 - the base class's name
            pass

    server = make_server(listen.host, listen.port, make_wsgi_app(reg), handler_class=_Quiet)
    sys.stderr.write(f"serving metrics on http://{listen.host}:{server.server_port}/metrics\n")
    sys.stderr.flush()
    server.serve_forever()
    return 0
