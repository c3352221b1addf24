"""The exporter's server with real sockets on loopback: scrapes go through while other connections sit idle or
half-sent, silent connections are closed, IPv6 works.  /proc and /sys are a fake standing for a guest with one
module loaded (this host has no module support)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kmodkit.errors import EnvironmentNotReady, UserError
from kmodkit.runtime.exporter import Listen, make_server, registry
from kmodkit.runtime.modules import KernelModules
from kmodkit.sysroot import Root

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer


@pytest.fixture
def fake_kernel(tmp_path: Path) -> KernelModules:
    """/proc and /sys of a guest with hello (out-of-tree, unsigned) loaded."""
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "modules").write_text("hello 16384 0 - Live 0x0000000000000000 (OE)\n")
    (proc / "sys/kernel/tainted").write_text("12288\n")
    (sys / "module/hello").mkdir(parents=True)
    return KernelModules.of(Root(tmp_path))


def _serve(host: str, kernel: KernelModules, timeout: float = 10.0) -> Iterator[tuple[WSGIServer, Listen]]:
    where = Listen(host, 0)  # port 0: any free one (the parser asks for a real port)
    server = make_server(where, registry(kernel, []), timeout=timeout)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, where
    finally:
        server.shutdown()
        server.server_close()


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def test_scrape_succeeds_while_connections_sit_idle_and_half_sent(fake_kernel: KernelModules) -> None:
    for server, where in _serve("127.0.0.1", fake_kernel):
        port = server.server_port
        idle = socket.create_connection(("127.0.0.1", port))
        half = socket.create_connection(("127.0.0.1", port))
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")  # never finished
        try:
            start = time.monotonic()
            text = _scrape(where.url(port))
            assert time.monotonic() - start < 3.0  # the single-threaded server waited for the idle one forever
            assert 'kmodkit_module_loaded{module="hello"' in text
        finally:
            idle.close()
            half.close()


def test_a_silent_connection_is_closed_after_the_timeout(fake_kernel: KernelModules) -> None:
    for server, _ in _serve("127.0.0.1", fake_kernel, timeout=0.5):
        conn = socket.create_connection(("127.0.0.1", server.server_port))
        conn.settimeout(5)
        conn.sendall(b"GET /metr")
        start = time.monotonic()
        assert conn.recv(1024) == b""  # the server closed it
        assert time.monotonic() - start < 4.0
        conn.close()


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_loopback_scrape(fake_kernel: KernelModules) -> None:
    if not _has_ipv6_loopback():
        pytest.skip("this host has no ::1")
    for server, where in _serve("::1", fake_kernel):
        assert where.url(server.server_port).startswith("http://[::1]:")
        assert 'kmodkit_module_loaded{module="hello"' in _scrape(where.url(server.server_port))


@pytest.mark.parametrize("text", ["9417", "::1:9417", "[127.0.0.1]:80", "[::1]", "[::1:80", "host:80", "1.2.3.4:0x10"])
def test_listen_forms_that_are_refused_at_parse_time(text: str) -> None:
    with pytest.raises(UserError):
        Listen.parse(text)


def test_listen_forms_that_parse() -> None:
    assert Listen.parse("[::1]:80") == Listen("::1", 80)
    assert Listen.parse("[::1]:80").family is socket.AF_INET6
    assert Listen.parse("localhost:80").family is socket.AF_INET


def test_a_port_in_use_is_environment_not_ready(fake_kernel: KernelModules) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(EnvironmentNotReady, match="address already in use"):
            make_server(Listen("127.0.0.1", taken.getsockname()[1]), registry(fake_kernel, []))


def test_an_address_not_of_this_machine_is_a_user_error(fake_kernel: KernelModules) -> None:
    with pytest.raises(UserError, match="cannot listen there"):
        make_server(Listen("192.0.2.1", 9417), registry(fake_kernel, []))  # TEST-NET-1, never local
