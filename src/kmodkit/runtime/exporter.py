"""Prometheus metrics of the running kernel's modules, served with prometheus_client.

A custom collector reads /proc/modules and /sys/module on every scrape, so the
numbers are never stale; the health verdicts come from the manifests given.
:func:`make_server` serves them one thread per connection, each connection
closed after :data:`CONNECTION_TIMEOUT` seconds of silence, so an idle or
half-sent request never holds up a scrape; IPv4 and IPv6 alike.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from kmodkit.errors import EnvironmentNotReady, UserError
from kmodkit.runtime.health import KMSG, Expectation, check, kernel_reports
from kmodkit.runtime.modules import KernelModules, ModuleState
from kmodkit.runtime.taint import flags

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

DEFAULT_LISTEN = "127.0.0.1:9417"
#: seconds a connection may stay silent (idle, or a request half sent) before the server closes it
CONNECTION_TIMEOUT = 10.0


@dataclass(frozen=True)
class Listen:
    """Where the exporter listens."""

    host: str  #: address to bind (loopback by default)
    port: int  #: TCP port

    @classmethod
    def parse(cls, text: str) -> Listen:
        """``HOST:PORT``, ``[V6]:PORT`` for IPv6; UserError when malformed."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--listen {text}", "is not HOST:PORT", "write e.g. 127.0.0.1:9417 or [::1]:9417")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            if ":" not in host:
                raise UserError(f"--listen {text}", "brackets are for IPv6 addresses", "write e.g. 127.0.0.1:9417")
        elif ":" in host or "[" in host or "]" in host:
            raise UserError(f"--listen {text}", "an IPv6 address needs brackets", "write e.g. [::1]:9417")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise UserError(f"--listen {text}", f"'{host}' is not an IP address",
                                "give an address, e.g. 127.0.0.1, [::1] or 0.0.0.0") from None
        return cls(host, int(port))

    @property
    def family(self) -> socket.AddressFamily:
        """AF_INET6 for an IPv6 address, else AF_INET."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def url(self, port: int | None = None) -> str:
        """``http://HOST:PORT/metrics`` (brackets around IPv6), with ``port`` instead of :attr:`port` when given."""
        host = f"[{self.host}]" if self.family is socket.AF_INET6 else self.host
        return f"http://{host}:{self.port if port is None else port}/metrics"


def make_server(listen: Listen, reg: CollectorRegistry, timeout: float = CONNECTION_TIMEOUT) -> WSGIServer:
    """A server for ``reg``'s metrics bound to ``listen``: a thread per connection, silent ones closed after
    ``timeout`` seconds.  Run it with ``serve_forever()``.

    Raises UserError when the address is not this machine's, EnvironmentNotReady when it cannot be bound
    (in use, not permitted, no IPv6).
    """
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server as wsgi_server

    from prometheus_client import make_wsgi_app

    silence = timeout

    class Handler(WSGIRequestHandler):
        timeout = silence  # StreamRequestHandler.setup() sets it on each connection's socket

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    class Server(ThreadingMixIn, WSGIServer):
        address_family = listen.family
        daemon_threads = True  # a connection still open never keeps the process from exiting

    try:
        return wsgi_server(listen.host, listen.port, make_wsgi_app(reg), server_class=Server, handler_class=Handler)
    except OSError as exc:
        what = f"--listen {listen.host}:{listen.port}"
        reason = (exc.strerror or str(exc)).lower()
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
            raise UserError(what, f"cannot listen there: {reason}", "give an address of this machine") from None
        raise EnvironmentNotReady(what, f"cannot listen there: {reason}",
                                  "choose another port, or stop what listens there") from None


class ModuleCollector(Collector):
    """Collects module, taint and health metrics on each scrape."""

    def __init__(self, kernel: KernelModules, expectations: list[Expectation], log: str | None = KMSG) -> None:
        self.kernel = kernel
        self.expectations = expectations
        #: the kernel log whose reports make a module unhealthy (read on each scrape), None for none
        self.log = log

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["module", "version", "srcversion"]
        loaded = GaugeMetricFamily("kmodkit_module_loaded", "1 when the module is loaded", labels=labels)
        state = GaugeMetricFamily("kmodkit_module_state", "1 for the module's current state",
                                  labels=[*labels, "state"])
        refcount = GaugeMetricFamily("kmodkit_module_refcount", "users holding the module", labels=labels)
        size = GaugeMetricFamily("kmodkit_module_size_bytes", "memory the module takes", labels=labels)
        mtaint = GaugeMetricFamily("kmodkit_module_taint", "1 for each taint flag the module carries",
                                   labels=[*labels, "flag", "letter"])
        for st in self.kernel.status():
            values = [st.name, st.version or "", st.srcversion or ""]
            loaded.add_metric(values, 1)
            for s in (ModuleState.LIVE, ModuleState.LOADING, ModuleState.UNLOADING):
                state.add_metric([*values, s.value], 1 if st.state is s else 0)
            refcount.add_metric(values, st.refcount)
            size.add_metric(values, st.size)
            for f in st.taint_flags:
                mtaint.add_metric([*values, f.name, f.letter], 1)
        yield from (loaded, state, refcount, size, mtaint)
        mask = self.kernel.kernel_taint()
        ktaint = GaugeMetricFamily("kmodkit_kernel_tainted", "the kernel's taint mask (/proc/sys/kernel/tainted)")
        ktaint.add_metric([], mask if mask is not None else float("nan"))
        yield ktaint
        kflags = GaugeMetricFamily("kmodkit_kernel_taint_flag", "1 when the kernel carries the taint flag",
                                   labels=["flag", "letter"])
        for f in flags():
            kflags.add_metric([f.name, f.letter], 1 if mask and mask >> f.bit & 1 else 0)
        yield kflags
        if self.expectations:
            health = GaugeMetricFamily("kmodkit_health_ok", "1 when the manifest's module is healthy",
                                       labels=["module"])
            reports = kernel_reports(self.log) if self.log is not None else None
            for r in check(self.expectations, self.kernel, reports):
                health.add_metric([r.expectation.name], 1 if r.healthy else 0)
            yield health


def registry(kernel: KernelModules, expectations: list[Expectation], log: str | None = KMSG) -> CollectorRegistry:
    """A registry holding only kmodkit's collector (``log``: the kernel log health reads crashes from)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ModuleCollector(kernel, expectations, log))
    return reg


def render(reg: CollectorRegistry) -> bytes:
    """One scrape in the Prometheus text format."""
    from prometheus_client import generate_latest

    return generate_latest(reg)
