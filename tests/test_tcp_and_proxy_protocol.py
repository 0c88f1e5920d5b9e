"""Layer 4 (`protocol: tcp`) and the PROXY protocol in and out, through real processes."""

from __future__ import annotations

import hashlib
import socket
from collections import Counter

import pytest

from maitred.proxy.proxy_protocol import header_v1, header_v2
from tests.support.admin import eventually, metric
from tests.support.backends import BackendProcess, build_request, connect, read_response
from tests.support.balancer import BalancerFactory


def tcp_config(backends: list[BackendProcess], extra: str = "") -> str:
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends)
    return f"""
listeners:
  - name: l4
    bind: 127.0.0.1:0
    protocol: tcp
    pool: raw
pools:
  raw:
{extra}    servers:
{servers}
"""


def test_tcp_listener_round_robins_connections(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(tcp_config(backends[:2]))
    seen = Counter()
    for _ in range(6):
        with connect("127.0.0.1", lb.port) as sock:
            # Two requests on one connection: a TCP balancer keeps the connection's server.
            sock.sendall(build_request("GET", "/") + build_request("GET", "/"))
            first, second = read_response(sock), read_response(sock)
            assert first.header("X-Backend") == second.header("X-Backend")
            seen[first.header("X-Backend")] += 1
    assert seen == {"b1": 3, "b2": 3}


def test_tcp_carries_10_mb_both_ways_with_half_close(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(tcp_config(backends[:1]))
    payload = bytes(range(256)) * 40960  # 10 MiB
    with connect("127.0.0.1", lb.port, timeout=30) as sock:
        request = build_request(
            "POST", "/upload", {"Connection": "close", "Content-Length": str(len(payload))}
        )
        sock.sendall(request + payload)
        sock.shutdown(socket.SHUT_WR)  # half-close: the answer must still come back
        response = read_response(sock)
        assert response.status == 200
        assert response.json()["body_length"] == len(payload)
        assert response.json()["body_sha256"] == hashlib.sha256(payload).hexdigest()
    with connect("127.0.0.1", lb.port, timeout=30) as sock:
        sock.sendall(build_request("GET", f"/bytes?n={len(payload)}", {"Connection": "close"}))
        download = read_response(sock)
        assert len(download.body) == len(payload)
        assert download.body == payload


def test_tcp_skips_a_server_that_refuses(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    config = f"""
listeners:
  - name: l4
    bind: 127.0.0.1:0
    protocol: tcp
    pool: raw
pools:
  raw:
    servers:
      - {{address: 127.0.0.1:{port}}}
      - {{address: {backends[0].address}}}
"""
    lb = balancer(config)
    for _ in range(4):
        with connect("127.0.0.1", lb.port) as sock:
            sock.sendall(build_request("GET", "/", {"Connection": "close"}))
            assert read_response(sock).header("X-Backend") == "b1"


def proxy_in_config(backend: BackendProcess) -> str:
    return f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
    proxy_protocol: true
pools:
  web:
    servers: [{{address: {backend.address}}}]
"""


@pytest.mark.parametrize("build", [header_v1, header_v2], ids=["v1", "v2"])
def test_proxy_protocol_in_sets_the_client_address(
    backends: list[BackendProcess], balancer: BalancerFactory, build: object
) -> None:
    lb = balancer(proxy_in_config(backends[0]))
    header = build(("203.0.113.9", 40000), ("198.51.100.1", 443))  # type: ignore[operator]
    with connect("127.0.0.1", lb.port) as sock:
        sock.sendall(header + build_request("GET", "/echo"))
        echo = read_response(sock).json()
        sent = {name.lower(): value for name, value in echo["headers"]}
        assert sent["x-forwarded-for"] == "203.0.113.9"
        # Later requests on the connection keep the announced client.
        sock.sendall(build_request("GET", "/echo"))
        again = {n.lower(): v for n, v in read_response(sock).json()["headers"]}
        assert again["x-forwarded-for"] == "203.0.113.9"


def test_proxy_protocol_in_refuses_connections_without_it(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(proxy_in_config(backends[0]))
    with connect("127.0.0.1", lb.port) as sock:
        sock.sendall(build_request("GET", "/echo"))
        try:
            data = sock.recv(1024)
        except ConnectionResetError:
            data = b""  # the connection is aborted: nothing was answered or forwarded
        assert data == b""


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_send_proxy_protocol_announces_the_client(
    backends: list[BackendProcess], balancer: BalancerFactory, version: str
) -> None:
    config = f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
pools:
  web:
    send_proxy_protocol: {version}
    servers: [{{address: {backends[0].address}}}]
"""
    lb = balancer(config)
    before = backends[0].stats()["connections_accepted"]
    with connect("127.0.0.1", lb.port) as sock:
        local_port = sock.getsockname()[1]
        for _ in range(3):
            sock.sendall(build_request("GET", "/echo"))
            proxy = read_response(sock).json()["proxy"]
            assert proxy["version"] == int(version[1])
            assert proxy["source"] == f"127.0.0.1:{local_port}"
    # The announcing connection was reused for this client's later requests.
    assert backends[0].stats()["connections_accepted"] - before - 1 == 1


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_tcp_listener_bytes_appear_in_metrics(
    backends: list[BackendProcess], balancer: BalancerFactory, zero_copy: str
) -> None:
    config = tcp_config(backends[:1]).replace(
        "    protocol: tcp\n", f"    protocol: tcp\n    zero_copy: {zero_copy}\n"
    )
    lb = balancer("admin: {bind: 127.0.0.1:0}\n" + config)
    request = build_request("GET", "/", {"Connection": "close"})
    with connect("127.0.0.1", lb.port) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    label = '{listener="l4"}'
    received = eventually(
        lambda: metric(lb, "maitred_listener_received_bytes_total"),
        lambda values: values.get(f"maitred_listener_received_bytes_total{label}") == len(request),
    )
    sent = metric(lb, "maitred_listener_sent_bytes_total")
    assert received[f"maitred_listener_received_bytes_total{label}"] == len(request)
    assert sent[f"maitred_listener_sent_bytes_total{label}"] == len(answer)
