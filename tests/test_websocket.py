"""Upgrade requests (WebSocket) become tunnels through an HTTP listener."""

from __future__ import annotations

import base64
import hashlib

from tests.support.backends import BackendProcess, build_request, connect, read_response
from tests.support.balancer import BalancerFactory, pool_yaml

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def upgrade_request(key: bytes, extra: bytes = b"") -> bytes:
    return (
        b"GET /chat HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        + key
        + b"\r\n\r\n"
        + extra
    )


def read_head(sock: object) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)  # type: ignore[attr-defined]
        assert chunk, "closed before the end of the head"
        data += chunk
    return data


def test_websocket_upgrade_becomes_an_echoing_tunnel(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml([backends[0].address]))
    key = base64.b64encode(b"0123456789abcdef")
    with connect("127.0.0.1", lb.port) as sock:
        # Bytes right behind the head are the new protocol's: they must reach the server.
        sock.sendall(upgrade_request(key, extra=b"early:"))
        head = read_head(sock).decode("latin-1")
        assert head.startswith("HTTP/1.1 101 ")
        lowered = head.lower()
        assert "upgrade: websocket" in lowered
        assert "connection: upgrade" in lowered
        accept = base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode()
        assert accept.lower() in lowered
        received = b""
        sock.sendall(b"hello through the tunnel")
        while len(received) < len(b"early:hello through the tunnel"):
            chunk = sock.recv(4096)
            assert chunk
            received += chunk
        assert received == b"early:hello through the tunnel"
        big = bytes(range(256)) * 4096  # 1 MiB each way, with flow control
        sock.sendall(big)
        echoed = b""
        while len(echoed) < len(big):
            chunk = sock.recv(65536)
            assert chunk
            echoed += chunk
        assert echoed == big


def test_h2c_upgrade_is_not_tunnelled(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml([backends[0].address]))
    with connect("127.0.0.1", lb.port) as sock:
        sock.sendall(
            build_request(
                "GET",
                "/echo",
                {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AA"},
            )
            + build_request("GET", "/echo?second")
        )
        first = read_response(sock)
        assert first.status == 200
        sent = {name.lower() for name, _ in first.json()["headers"]}
        assert "upgrade" not in sent and "http2-settings" not in sent
        assert read_response(sock).json()["path"] == "/echo?second"
