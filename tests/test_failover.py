"""Health checks, passive ejection, retries, limits and backups, end to end."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.support.backends import (
    BackendProcess,
    build_request,
    connect,
    http_request,
    read_response,
    start_backends,
)
from tests.support.balancer import BalancerFactory, BalancerProcess, pool_config
from tests.support.load import SteadyLoad


@pytest.fixture
def own_backends() -> Iterator[list[BackendProcess]]:
    """Fresh backends for tests that kill, freeze or sicken them."""
    started = start_backends(3, prefix="f")
    yield started
    for backend in started:
        backend.kill()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def checked_pool(
    servers: list[str],
    *,
    # Generous timeouts: the checks must not flap on a loaded 2-core machine.
    check: str = "{path: /health, interval: 250ms, timeout: 1s, "
    "healthy_threshold: 2, unhealthy_threshold: 2}",
    extra: str = "",
) -> str:
    lines = "\n".join(f"      - {server}" for server in servers)
    return f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
pools:
  web:
    health_check: {check}
    timeouts: {{connect: 500ms, response: 2s}}
{extra}    servers:
{lines}
"""


def server_line(backend: BackendProcess, extra: str = "") -> str:
    return f"{{address: {backend.address}{extra}}}"


def sid(backend: BackendProcess) -> str:
    return f"web-{backend.host}-{backend.port}"


def spread(lb: BalancerProcess, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    with connect("127.0.0.1", lb.port) as sock:
        for _ in range(count):
            sock.sendall(build_request("GET", "/"))
            response = read_response(sock)
            seen[response.header("X-Backend") or str(response.status)] += 1
    return seen


def test_failing_server_leaves_and_returns(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    f1, f2, f3 = own_backends
    lb = balancer(checked_pool([server_line(b) for b in own_backends]))
    start = len(lb.log.lines)
    failed_at = time.monotonic()
    f1.set_health(False)
    lb.log.wait_for(rf"server {sid(f1)} is now unhealthy", start=start)
    # interval (250 ms) x unhealthy_threshold (2), plus one interval of phase and slack.
    assert time.monotonic() - failed_at < 2.0
    assert spread(lb, 20) == {"f2": 10, "f3": 10}

    start = len(lb.log.lines)
    f1.set_health(True)
    lb.log.wait_for(rf"server {sid(f1)} is now healthy", start=start)
    assert set(spread(lb, 9)) == {"f1", "f2", "f3"}


def test_killed_backend_under_load_costs_no_failed_request(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(checked_pool([server_line(b) for b in own_backends]))
    with SteadyLoad(lb.port, clients=8) as load:
        load.wait_for_total(300)
        own_backends[0].kill()
        load.wait_for_total(load.total() + 1500)
    assert load.failures == []
    assert load.answered["f2"] > 0 and load.answered["f3"] > 0


def test_frozen_backend_leaves_rotation_within_five_seconds(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    f1, _, _ = own_backends
    check = (
        "{path: /health, interval: 1s, timeout: 500ms, healthy_threshold: 2, "
        "unhealthy_threshold: 2}"
    )
    lb = balancer(checked_pool([server_line(b) for b in own_backends], check=check))
    start = len(lb.log.lines)
    frozen_at = time.monotonic()
    f1.pause()
    try:
        lb.log.wait_for(rf"server {sid(f1)} is now unhealthy", start=start, timeout=10)
        assert time.monotonic() - frozen_at < 5.0
        assert set(spread(lb, 10)) == {"f2", "f3"}
    finally:
        f1.resume()


def test_everything_down_answers_503_at_once(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(checked_pool([server_line(b) for b in own_backends]))
    start = len(lb.log.lines)
    for backend in own_backends:
        backend.set_health(False)
    for backend in own_backends:
        lb.log.wait_for(rf"server {sid(backend)} is now unhealthy", start=start)
    began = time.monotonic()
    response = http_request("127.0.0.1", lb.port, "GET", "/")
    assert response.status == 503
    assert time.monotonic() - began < 0.5


def test_backup_takes_over_and_gives_back(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    primary, backup, _ = own_backends
    lb = balancer(checked_pool([server_line(primary), server_line(backup, ", backup: true")]))
    assert spread(lb, 4) == {"f1": 4}
    start = len(lb.log.lines)
    primary.set_health(False)
    lb.log.wait_for(rf"server {sid(primary)} is now unhealthy", start=start)
    assert spread(lb, 4) == {"f2": 4}
    start = len(lb.log.lines)
    primary.set_health(True)
    lb.log.wait_for(rf"server {sid(primary)} is now healthy", start=start)
    assert spread(lb, 4) == {"f1": 4}


def test_connect_failures_are_retried_and_the_dead_server_ejected(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    dead = f"{{address: 127.0.0.1:{closed_port()}}}"
    config = pool_config(
        [dead, server_line(own_backends[0])],
        extra="    outlier_detection: {consecutive_failures: 3, base_ejection_time: 30s}\n",
    )
    lb = balancer(config)
    # POST too: a connect failure means nothing was sent, so it is safe to retry.
    for method in ("GET", "POST") * 5:
        assert http_request("127.0.0.1", lb.port, method, "/echo").status == 200
    lb.log.wait_for(r"ejected for 30s")


def test_retry_budget_caps_retries(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    dead = f"{{address: 127.0.0.1:{closed_port()}}}"
    config = pool_config(
        [dead, server_line(own_backends[0])],
        extra="    outlier_detection: {enabled: false}\n"
        "    retries: {attempts: 2, budget_percent: 0, min_per_second: 1}\n",
    )
    lb = balancer(config)
    statuses = Counter(http_request("127.0.0.1", lb.port, "GET", "/").status for _ in range(40))
    # Round robin's turn moves on with each retry, so every request meets the dead
    # server first; the budget (0 % of requests, floor 1/s over a 10 s window) lets
    # only about ten of them be retried, and only those succeed.
    assert 1 <= statuses[200] <= 11, statuses
    assert statuses[502] == 40 - statuses[200]
    # One logged retry per success (the log may trail the answers by a moment).
    assert lb.log.wait_for_count(r"retrying GET", statuses[200]) == statuses[200]


def test_full_servers_queue_then_overflow_with_503(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    config = pool_config(
        [server_line(own_backends[0], ", max_connections: 1")],
        extra="    queue: {size: 1, timeout: 5s}\n",
    )
    lb = balancer(config)
    first = connect("127.0.0.1", lb.port)
    second = connect("127.0.0.1", lb.port)
    with first, second:
        before = own_backends[0].stats()["requests"]
        first.sendall(build_request("GET", "/delay?ms=800"))
        wait_for_requests(own_backends[0], before, 1)
        second.sendall(build_request("GET", "/echo?queued"))
        lb_waiting_deadline = time.monotonic() + 5
        # The third request finds the one server full and the queue full: 503 at once.
        third = None
        while time.monotonic() < lb_waiting_deadline:
            third = http_request("127.0.0.1", lb.port, "GET", "/echo?third")
            if third.status == 503:
                break
        assert third is not None and third.status == 503
        assert b"full" in third.body
        assert read_response(first).status == 200
        queued = read_response(second)
        assert queued.status == 200 and queued.json()["path"] == "/echo?queued"


def test_queue_timeout_answers_503(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    config = pool_config(
        [server_line(own_backends[0], ", max_connections: 1")],
        extra="    queue: {size: 10, timeout: 300ms}\n",
    )
    lb = balancer(config)
    with connect("127.0.0.1", lb.port) as first:
        before = own_backends[0].stats()["requests"]
        first.sendall(build_request("GET", "/delay?ms=1500"))
        wait_for_requests(own_backends[0], before, 1)
        began = time.monotonic()
        response = http_request("127.0.0.1", lb.port, "GET", "/")
        assert response.status == 503
        assert b"timed out waiting" in response.body
        assert 0.25 < time.monotonic() - began < 1.4
        assert read_response(first).status == 200


def wait_for_requests(backend: BackendProcess, before: int, count: int) -> None:
    """Until ``count`` requests beyond ``before`` (a /stats reading taken before they
    were sent) reached the backend; each /stats poll counts itself."""
    deadline = time.monotonic() + 10
    polls = 0
    while backend.stats()["requests"] - before - polls - 1 < count:
        polls += 1
        assert time.monotonic() < deadline, "requests never reached the backend"


def test_idempotent_request_to_a_frozen_server_is_retried_after_the_timeout(
    own_backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    frozen, alive, _ = own_backends
    config = pool_config(
        [server_line(frozen), server_line(alive)],
        extra="    timeouts: {connect: 500ms, response: 300ms}\n",
    )
    lb = balancer(config)
    frozen.pause()
    try:
        # Round robin sends one of the two to the frozen server: it times out, then
        # goes to the other; a POST there is not retried (it may have been acted on).
        for _ in range(2):
            assert http_request("127.0.0.1", lb.port, "GET", "/").header("X-Backend") == "f2"
        statuses = [http_request("127.0.0.1", lb.port, "POST", "/upload").status for _ in range(4)]
        assert 504 in statuses, statuses
        assert set(statuses) <= {200, 504}
    finally:
        frozen.resume()
