"""Sticky sessions end to end: real balancer processes, real backends, real sockets."""

from __future__ import annotations

import base64
import socket
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.backends import (
    BackendProcess,
    Response,
    build_request,
    connect,
    read_response,
    start_backends,
)
from tests.support.balancer import BalancerFactory, BalancerProcess

SECRET = "integration-test-secret-0123456789"
HEALTH_CHECK = (
    "{path: /health, interval: 200ms, timeout: 150ms, healthy_threshold: 2, unhealthy_threshold: 2}"
)
ALGORITHMS = (
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "weighted_least_connections",
    "ip_hash",
    "consistent_hash",
    "least_response_time",
    "power_of_two",
    "random",
)


@pytest.fixture
def own_backends() -> Iterator[list[BackendProcess]]:
    """Fresh backends for tests that sicken them."""
    started = start_backends(3, prefix="s")
    yield started
    for backend in started:
        backend.kill()


def sticky_config(
    addresses: list[str],
    sticky: str,
    *,
    algorithm: str = "round_robin",
    health_check: bool = False,
    top: str = "",
) -> str:
    servers = "\n".join(f"      - {{address: {address}}}" for address in addresses)
    check = f"    health_check: {HEALTH_CHECK}\n" if health_check else ""
    return f"""
{top}listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
pools:
  web:
    algorithm: {algorithm}
    sticky: {sticky}
{check}    servers:
{servers}
"""


def cookie_mode(**keys: str) -> str:
    options = "".join(f", {key}: {value}" for key, value in keys.items())
    return f"{{mode: cookie, cookie: LB_SESSION, max_age: 1h{options}}}"


def get(port: int, headers: dict[str, str] | None = None, source: str | None = None) -> Response:
    """One request on a fresh connection, from ``source`` (a 127.x.y.z address) if given."""
    address = (source, 0) if source else None
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=address) as sock:
        sock.settimeout(10)
        sock.sendall(build_request("GET", "/", {**(headers or {}), "Connection": "close"}))
        return read_response(sock)


def session_cookie(response: Response) -> str:
    """``LB_SESSION=...`` from the balancer's Set-Cookie (exactly one)."""
    ours = [value for value in response.header_values("Set-Cookie") if value.startswith("LB_")]
    assert len(ours) == 1, response.headers
    return ours[0].split(";")[0]


def new_session(lb: BalancerProcess) -> tuple[str, str]:
    """A new client's first request: (its cookie, the backend that answered)."""
    response = get(lb.port)
    assert response.status == 200
    return session_cookie(response), response.header("X-Backend") or ""


def assert_sticks(lb: BalancerProcess, cookie: str, backend: str, count: int = 20) -> None:
    """``count`` requests with ``cookie`` on one connection all reach ``backend``, quietly."""
    with connect("127.0.0.1", lb.port) as sock:
        for _ in range(count):
            sock.sendall(build_request("GET", "/", {"Cookie": f"theme=dark; {cookie}"}))
            response = read_response(sock)
            assert (response.status, response.header("X-Backend")) == (200, backend)
            assert response.header_values("Set-Cookie") == []  # no useless Set-Cookie


def sid(backend: BackendProcess) -> str:
    return f"web-{backend.host}-{backend.port}"


# -- cookie mode ----------------------------------------------------------------------


def test_a_client_sticks_for_20_requests_and_new_clients_are_spread(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(sticky_config([b.address for b in backends], cookie_mode(secret=SECRET)))
    sessions = [new_session(lb) for _ in range(6)]
    assert Counter(backend for _, backend in sessions) == {"b1": 2, "b2": 2, "b3": 2}
    assert len({cookie for cookie, _ in sessions}) == 3  # one token per server
    for cookie, backend in sessions[:3]:
        assert_sticks(lb, cookie, backend)


def test_the_cookie_has_the_documented_attributes_and_hides_the_server(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(sticky_config([b.address for b in backends], cookie_mode(secret=SECRET)))
    (set_cookie,) = get(lb.port).header_values("Set-Cookie")
    name_value, *attributes = set_cookie.split("; ")
    assert attributes == ["Max-Age=3600", "Path=/", "SameSite=Lax", "HttpOnly"]
    value = name_value.removeprefix("LB_SESSION=")
    assert len(value) == 39
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    for backend in backends:
        # The token is a MAC, not an encoding of the server: neither its address nor
        # its port shows, in the text or in the decoded bytes. (Its two-letter name
        # is too short to test: random base64 text contains "b1" about 1% of the time.)
        assert str(backend.port) not in value
        assert backend.address.encode() not in raw and str(backend.port).encode() not in raw


def test_a_forged_cookie_is_replaced(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(sticky_config([b.address for b in backends], cookie_mode(secret=SECRET)))
    genuine, _ = new_session(lb)
    value = genuine.removeprefix("LB_SESSION=")
    flipped = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]
    for forged in ("LB_SESSION=web-127.0.0.1-9001", "LB_SESSION=" + flipped):
        response = get(lb.port, {"Cookie": forged})
        assert response.status == 200
        fresh = session_cookie(response)
        assert fresh != forged
        assert_sticks(lb, fresh, response.header("X-Backend") or "", count=5)


def test_a_cookie_signed_with_another_secret_is_replaced(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    addresses = [b.address for b in backends]
    other = balancer(sticky_config(addresses, cookie_mode(secret="a-different-secret-98765")))
    cookie, _ = new_session(other)
    lb = balancer(sticky_config(addresses, cookie_mode(secret=SECRET)))
    response = get(lb.port, {"Cookie": cookie})
    assert response.status == 200 and session_cookie(response) != cookie


class _CookieSettingBackend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's naming)
        body = b"app\n"
        self.send_response(200)
        self.send_header("X-Backend", "app")
        self.send_header("Set-Cookie", "app_session=abc; Path=/; HttpOnly")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_backends_own_set_cookie_passes_through(balancer: BalancerFactory) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CookieSettingBackend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        lb = balancer(sticky_config([address], cookie_mode(secret=SECRET)))
        cookies = get(lb.port).header_values("Set-Cookie")
        assert "app_session=abc; Path=/; HttpOnly" in cookies
        assert len(cookies) == 2 and any(value.startswith("LB_SESSION=") for value in cookies)
    finally:
        server.shutdown()
        server.server_close()


def test_failover_rewrites_the_cookie_and_then_sticks_to_the_new_server(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(
        sticky_config(
            [b.address for b in own_backends], cookie_mode(secret=SECRET), health_check=True
        )
    )
    cookie, home = new_session(lb)
    sick = next(b for b in own_backends if b.name == home)
    start = len(lb.log.lines)
    sick.set_health(False)
    lb.log.wait_for(rf"server {sid(sick)} is now unhealthy", start=start)

    moved = get(lb.port, {"Cookie": cookie})
    assert moved.status == 200
    new_home = moved.header("X-Backend")
    assert new_home in {b.name for b in own_backends} - {home}
    new_cookie = session_cookie(moved)
    assert new_cookie != cookie
    assert_sticks(lb, new_cookie, new_home or "")

    # The old server coming back does not pull the moved session back.
    start = len(lb.log.lines)
    sick.set_health(True)
    lb.log.wait_for(rf"server {sid(sick)} is now healthy", start=start)
    assert_sticks(lb, new_cookie, new_home or "", count=5)


def test_strict_answers_503_instead_of_moving_the_session(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(
        sticky_config(
            [b.address for b in own_backends],
            cookie_mode(secret=SECRET, strict="true"),
            health_check=True,
        )
    )
    cookie, home = new_session(lb)
    sick = next(b for b in own_backends if b.name == home)
    start = len(lb.log.lines)
    sick.set_health(False)
    lb.log.wait_for(rf"server {sid(sick)} is now unhealthy", start=start)
    refused = get(lb.port, {"Cookie": cookie})
    assert refused.status == 503
    assert refused.header_values("Set-Cookie") == []
    fresh = get(lb.port)  # a client without a session is still served
    assert fresh.status == 200 and fresh.header("X-Backend") != home

    start = len(lb.log.lines)
    sick.set_health(True)
    lb.log.wait_for(rf"server {sid(sick)} is now healthy", start=start)
    assert_sticks(lb, cookie, home, count=5)  # the session was kept, not moved


def test_two_balancers_with_the_same_secret_agree(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    config = sticky_config([b.address for b in backends], cookie_mode(secret=SECRET))
    first, second = balancer(config), balancer(config)
    for _ in range(3):
        cookie, backend = new_session(first)
        assert_sticks(second, cookie, backend, count=5)
    cookie, backend = new_session(second)
    assert_sticks(first, cookie, backend, count=5)


def test_a_generated_secret_is_kept_so_a_restarted_balancer_honours_its_cookies(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    config = sticky_config(
        [b.address for b in backends], cookie_mode(), top=f"state_dir: {state_dir}\n"
    )
    first = balancer(config)
    sessions = [new_session(first) for _ in range(3)]
    assert first.stop() == 0
    secret_file = state_dir / "sticky-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    restarted = balancer(config)
    for cookie, backend in sessions:
        assert_sticks(restarted, cookie, backend, count=5)


def test_stickiness_composes_with_every_algorithm(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    servers = "".join(f"\n      - {{address: {b.address}}}" for b in backends)
    listeners = "".join(
        f"\n  - {{name: {name}, bind: 127.0.0.1:0, pool: {name}}}" for name in ALGORITHMS
    )
    pools = "".join(
        f"\n  {name}:\n    algorithm: {name}\n    sticky: {cookie_mode(secret=SECRET)}"
        f"\n    servers:{servers}"
        for name in ALGORITHMS
    )
    lb = balancer(f"listeners:{listeners}\npools:{pools}\n")
    for name in ALGORITHMS:
        port = lb.listeners[name][1]
        response = get(port)
        assert response.status == 200, name
        cookie, backend = session_cookie(response), response.header("X-Backend") or ""
        with connect("127.0.0.1", port) as sock:
            for _ in range(10):
                sock.sendall(build_request("GET", "/", {"Cookie": cookie}))
                answer = read_response(sock)
                assert answer.header("X-Backend") == backend, name
                assert answer.header_values("Set-Cookie") == [], name


# -- ip and header modes -----------------------------------------------------------------

CLIENT_ADDRESSES = [f"127.0.{i // 200}.{i % 200 + 2}" for i in range(40)]


def test_ip_mode_sticks_spreads_and_moves_few_clients_when_a_server_joins(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    addresses = [b.address for b in backends]
    lb = balancer(sticky_config(addresses, "{mode: ip}"))
    placed = {}
    for source in CLIENT_ADDRESSES:
        first, second = get(lb.port, source=source), get(lb.port, source=source)
        assert first.header("X-Backend") == second.header("X-Backend"), source
        assert first.header_values("Set-Cookie") == []
        placed[source] = first.header("X-Backend")
    assert set(placed.values()) == {"b1", "b2", "b3"}

    with BackendProcess("b4") as joining:
        lb.reload(sticky_config([*addresses, joining.address], "{mode: ip}"))
        after = {source: get(lb.port, source=source).header("X-Backend") for source in placed}
    moved = [source for source in placed if after[source] != placed[source]]
    assert moved, "the new server took no client"
    assert all(after[source] == "b4" for source in moved)
    assert len(moved) < len(placed) / 2


def test_header_mode_sticks_spreads_and_falls_back_without_the_header(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(sticky_config([b.address for b in backends], "{mode: 'header:X-User'}"))
    placed = Counter()
    with connect("127.0.0.1", lb.port) as sock:
        for user in range(30):
            seen = set()
            for _ in range(3):
                sock.sendall(build_request("GET", "/", {"X-User": f"user-{user}"}))
                seen.add(read_response(sock).header("X-Backend"))
            assert len(seen) == 1, user
            placed[seen.pop()] += 1
        assert set(placed) == {"b1", "b2", "b3"}
        # Without the header the algorithm (round robin) spreads the requests.
        without = Counter()
        for _ in range(6):
            sock.sendall(build_request("GET", "/"))
            without[read_response(sock).header("X-Backend")] += 1
        assert without == {"b1": 2, "b2": 2, "b3": 2}
