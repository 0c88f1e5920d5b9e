"""The HTTP/1.1 data plane through real sockets, real backends and a real balancer process."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections import Counter

from tests.support.backends import (
    BackendProcess,
    build_request,
    connect,
    http_request,
    read_response,
)
from tests.support.balancer import BalancerFactory, pool_yaml

PATTERN = bytes(range(256))


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(n, len(PATTERN))
    for _ in range(full):
        digest.update(PATTERN)
    digest.update(PATTERN[:rest])
    return digest.hexdigest()


def addresses(backends: list[BackendProcess]) -> list[str]:
    return [b.address for b in backends]


def keepalive_get(sock: socket.socket, path: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    sock.sendall(build_request("GET", path, headers))
    return read_response(sock)


def test_round_robin_spreads_requests_evenly(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml(addresses(backends)))
    seen = Counter()
    with connect("127.0.0.1", lb.port) as sock:
        for _ in range(30):
            response = keepalive_get(sock, "/")
            assert response.status == 200
            seen[response.header("X-Backend")] += 1
    assert seen == {"b1": 10, "b2": 10, "b3": 10}


def test_forwarding_headers_are_added_and_hop_by_hop_removed(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml(addresses(backends)))
    with connect("127.0.0.1", lb.port) as sock:
        response = keepalive_get(
            sock,
            "/echo?x=1",
            {
                "Host": "shop.example",
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "gopher",
                "Connection": "keep-alive, X-Secret",
                "X-Secret": "dropped",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Connection": "keep-alive",
                "X-Custom": "kept",
            },
        )
    assert response.status == 200
    echo = response.json()
    sent = {name.lower(): value for name, value in echo["headers"]}
    assert echo["path"] == "/echo?x=1"
    assert sent["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] == "shop.example"
    assert sent["host"] == "shop.example"
    assert sent["x-custom"] == "kept"
    for hop in ("connection", "x-secret", "keep-alive", "te", "proxy-connection"):
        assert hop not in sent, hop
    # A request id is generated, sent to the server and echoed to the client.
    assert sent["x-request-id"]
    assert response.header("X-Request-Id") == sent["x-request-id"]


def test_request_id_is_kept_when_present(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml(addresses(backends)))
    response = http_request("127.0.0.1", lb.port, "GET", "/echo", {"X-Request-Id": "abc-123"})
    sent = {name.lower(): value for name, value in response.json()["headers"]}
    assert sent["x-request-id"] == "abc-123"
    assert response.header_values("X-Request-Id") == ["abc-123"]


def test_backend_connections_are_reused(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    backend = backends[0]
    lb = balancer(pool_yaml([backend.address]))
    before = backend.stats()["connections_accepted"]
    for _ in range(3):  # three client connections, one after the other
        with connect("127.0.0.1", lb.port) as sock:
            for _ in range(20):
                assert keepalive_get(sock, "/").status == 200
    # /stats itself is a direct connection: subtract it.
    opened = backend.stats()["connections_accepted"] - before - 1
    assert opened == 1


def test_backend_connections_are_reused_after_long_answers(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    """Long Content-Length bodies are relayed past llhttp: the connection must come
    back in step, ready for the next answer."""
    backend = backends[0]
    lb = balancer(pool_yaml([backend.address]))
    before = backend.stats()["connections_accepted"]
    with connect("127.0.0.1", lb.port) as sock:
        for size in (60_000, 9_000, 5, 200_000, 60_000):
            answer = keepalive_get(sock, f"/bytes?n={size}")
            assert answer.status == 200
            assert hashlib.sha256(answer.body).hexdigest() == pattern_sha256(size)
    opened = backend.stats()["connections_accepted"] - before - 1  # minus /stats
    assert opened == 1


def test_chunked_upload_and_large_download_are_intact(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml(addresses(backends)))
    payload = bytes(range(256)) * 4096 * 3  # 3 MiB
    chunks = [payload[i : i + 65536] for i in range(0, len(payload), 65536)]
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    with connect("127.0.0.1", lb.port) as sock:
        sock.sendall(build_request("POST", "/upload", {"Transfer-Encoding": "chunked"}) + body)
        response = read_response(sock)
        assert response.status == 200
        assert response.json()["body_length"] == len(payload)
        assert response.json()["body_sha256"] == hashlib.sha256(payload).hexdigest()

        size = 10 * 1024 * 1024
        download = keepalive_get(sock, f"/bytes?n={size}")
        assert download.status == 200
        assert len(download.body) == size
        assert hashlib.sha256(download.body).hexdigest() == pattern_sha256(size)

        chunked = keepalive_get(sock, "/chunked?n=1000000&size=7000")
        assert chunked.header("Transfer-Encoding") == "chunked"
        assert hashlib.sha256(chunked.body).hexdigest() == pattern_sha256(1_000_000)


def test_content_length_upload(backends: list[BackendProcess], balancer: BalancerFactory) -> None:
    lb = balancer(pool_yaml(addresses(backends)))
    payload = b"x" * 200_000
    response = http_request("127.0.0.1", lb.port, "POST", "/upload", body=payload)
    assert response.json()["body_length"] == len(payload)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_reader_does_not_grow_balancer_memory(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml([backends[0].address]))
    size = 300 * 1024 * 1024
    with connect("127.0.0.1", lb.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(build_request("GET", f"/bytes?n={size}"))
        received = 0
        while received < 2 * 1024 * 1024:
            received += len(sock.recv(65536))
        baseline = _rss_kb(lb.proc.pid)
        # Stop reading. Without flow control the balancer would buffer the
        # remaining ~300 MB within a second; sample its memory meanwhile.
        peak = baseline
        done = threading.Event()
        for _ in range(20):
            done.wait(0.1)
            peak = max(peak, _rss_kb(lb.proc.pid))
    assert peak - baseline < 20 * 1024, f"balancer grew by {peak - baseline} KB"


def test_pipelined_requests_are_answered_in_order(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml(addresses(backends)))
    with connect("127.0.0.1", lb.port) as sock:
        sock.sendall(
            build_request("GET", "/delay?ms=200")
            + build_request("GET", "/echo?second")
            + build_request("GET", "/echo?third")
        )
        first = read_response(sock)
        second = read_response(sock)
        third = read_response(sock)
    assert first.status == 200 and first.body.endswith(b"\n")
    assert second.json()["path"] == "/echo?second"
    assert third.json()["path"] == "/echo?third"


def test_head_and_no_body_answers_keep_the_connection_in_step(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml([backends[0].address]))
    with connect("127.0.0.1", lb.port) as sock:
        sock.sendall(build_request("HEAD", "/bytes?n=5000"))
        head = read_response(sock, "HEAD")
        assert head.status == 200 and head.header("Content-Length") == "5000"
        assert head.body == b""
        assert keepalive_get(sock, "/status?code=204").status == 204
        assert keepalive_get(sock, "/echo").json()["path"] == "/echo"


# -- the balancer's own answers ---------------------------------------------------


def test_connect_refused_is_502_and_connection_stays_usable(balancer: BalancerFactory) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    lb = balancer(pool_yaml([f"127.0.0.1:{port}"]))
    with connect("127.0.0.1", lb.port) as sock:
        first = keepalive_get(sock, "/")
        assert first.status == 502
        assert b"connect" in first.body
        assert keepalive_get(sock, "/").status == 502


def test_server_closing_without_answer_is_502(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml([backends[0].address]))
    with connect("127.0.0.1", lb.port) as sock:
        assert keepalive_get(sock, "/close").status == 502
        assert keepalive_get(sock, "/").status == 200


def test_empty_pool_is_503(balancer: BalancerFactory) -> None:
    lb = balancer(pool_yaml([]).replace("    servers:\n", "    servers: []\n"))
    with connect("127.0.0.1", lb.port) as sock:
        assert keepalive_get(sock, "/").status == 503
        assert keepalive_get(sock, "/").status == 503


def test_slow_server_is_504(backends: list[BackendProcess], balancer: BalancerFactory) -> None:
    extra = "    timeouts: {connect: 1s, response: 300ms}\n"
    lb = balancer(pool_yaml([backends[0].address], extra=extra))
    with connect("127.0.0.1", lb.port) as sock:
        assert keepalive_get(sock, "/delay?ms=3000").status == 504
        assert keepalive_get(sock, "/").status == 200


def test_slow_client_headers_get_408(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    config = pool_yaml([backends[0].address]).replace(
        "    pool: web\n", "    pool: web\n    timeouts: {client_header: 300ms}\n"
    )
    lb = balancer(config)
    with connect("127.0.0.1", lb.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
        response = read_response(sock)
        assert response.status == 408
        assert sock.recv(1) == b""


LIMITS = "    limits: {max_header_size: 2048, max_uri_length: 256, max_body_size: 1000}\n"


def test_chunked_body_over_limit_is_413(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(
        pool_yaml([backends[0].address]).replace("    pool: web\n", "    pool: web\n" + LIMITS)
    )
    with connect("127.0.0.1", lb.port) as sock:
        chunk = b"y" * 800
        sock.sendall(
            build_request("POST", "/upload", {"Transfer-Encoding": "chunked"})
            + (b"%x\r\n%b\r\n" % (len(chunk), chunk)) * 2
        )
        assert read_response(sock).status == 413


# -- routing ----------------------------------------------------------------------


def test_routes_by_host_and_path_prefix(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    b1, b2, b3 = backends
    lb = balancer(
        f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    routes:
      - match: {{host: api.example.com, path_prefix: /v1/}}
        pool: api
      - match: {{path_prefix: /static/}}
        pool: static
    pool: web
pools:
  web: {{servers: [{{address: {b1.address}}}]}}
  api: {{servers: [{{address: {b2.address}}}]}}
  static: {{servers: [{{address: {b3.address}}}]}}
"""
    )

    def backend_for(path: str, host: str) -> str | None:
        return http_request("127.0.0.1", lb.port, "GET", path, {"Host": host}).header("X-Backend")

    assert backend_for("/v1/users", "api.example.com:8080") == "b2"
    assert backend_for("/v1/users", "API.EXAMPLE.COM") == "b2"
    assert backend_for("/v2/users", "api.example.com") == "b1"
    assert backend_for("/static/a.css", "api.example.com") == "b3"
    assert backend_for("/", "other.example") == "b1"


def test_no_matching_route_without_default_pool_is_404(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(
        f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    routes:
      - match: {{path_prefix: /app/}}
        pool: web
pools:
  web: {{servers: [{{address: {backends[0].address}}}]}}
"""
    )
    with connect("127.0.0.1", lb.port) as sock:
        assert keepalive_get(sock, "/other").status == 404
        assert keepalive_get(sock, "/app/x").status == 200


def test_server_connections_close_after_max_requests(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    backend = backends[0]
    extra = "    connection_pool: {max_requests: 2}\n"
    lb = balancer(pool_yaml([backend.address], extra=extra))
    before = backend.stats()["connections_accepted"]
    with connect("127.0.0.1", lb.port) as sock:
        for _ in range(6):
            assert keepalive_get(sock, "/").status == 200
    # Six requests, two per server connection; the /stats call itself is one more.
    assert backend.stats()["connections_accepted"] - before - 1 == 3
