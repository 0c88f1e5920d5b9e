"""Connection-pool warm-up: ``connection_pool: {min_idle: N}`` keeps N connections
open to every available server, at start, on reload, when a server comes back,
and while idle connections time out.

Counted from the servers' side: each demo backend reports the connections it
has open and has accepted (``/stats``; the stats request itself is one of them).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maitred.config import parse_config_text
from maitred.control.warmup import ConnectionWarmup
from maitred.control.worker import Worker
from tests.support.backends import BackendProcess, http_request
from tests.support.balancer import BalancerFactory


class Observed:
    """One backend as the test sees it through ``/stats``, minus the test's own asking:
    every /stats request is a connection of its own, open while it is answered."""

    def __init__(self, backend: BackendProcess) -> None:
        self.backend = backend
        self._asked = 0
        self._base = 0
        self._base = self.accepted()

    def held(self) -> int:
        """Connections open at the backend, not counting the /stats request asking."""
        return int(self._stats()["connections_open"]) - 1

    def accepted(self) -> int:
        """Connections the backend accepted since this observer began, /stats ones aside."""
        total = int(self._stats()["connections_accepted"])
        return total - self._asked - self._base

    def _stats(self) -> dict[str, int]:
        self._asked += 1
        return self.backend.stats()


def observe(backends: list[BackendProcess]) -> list[Observed]:
    return [Observed(backend) for backend in backends]


def wait_for_held(servers: list[Observed], count: int, timeout: float = 10.0) -> None:
    """Poll the servers (outside processes) until each holds ``count`` connections."""
    deadline = time.monotonic() + timeout
    while True:
        held = [server.held() for server in servers]
        if all(h == count for h in held):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"servers hold {held} connections, expected {count} each")
        time.sleep(0.05)


def config(backends: list[BackendProcess], connection_pool: str, extra: str = "") -> str:
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends)
    return f"""
listeners:
  - {{name: public, bind: 127.0.0.1:0, pool: web}}
pools:
  web:
    connection_pool: {connection_pool}
{extra}    servers:
{servers}
"""


def test_start_opens_min_idle_connections_and_the_first_request_uses_one(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    servers = observe(backends)
    lb = balancer(config(backends, "{min_idle: 3, max_idle: 8}"))
    wait_for_held(servers, 3)
    # No more than min_idle: the round at start is the only one for a while.
    assert [server.accepted() for server in servers] == [3, 3, 3]
    for _ in servers:  # round robin: one request per server
        assert http_request("127.0.0.1", lb.port, "GET", "/").status == 200
    # The requests went out on warm connections: nothing new was accepted.
    assert [server.accepted() for server in servers] == [3, 3, 3]
    assert [int(server.backend.stats()["requests"]) > 0 for server in servers] == [True] * 3


def test_without_min_idle_nothing_is_opened_ahead(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    servers = observe(backends)
    lb = balancer(config(backends, "{max_idle: 8}"))
    assert [server.held() for server in servers] == [0, 0, 0]
    for _ in servers:
        assert http_request("127.0.0.1", lb.port, "GET", "/").status == 200
    # Each first request paid for its own connection.
    assert [server.accepted() for server in servers] == [1, 1, 1]


def test_reload_that_sets_min_idle_warms_the_servers(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    servers = observe(backends)
    lb = balancer(config(backends, "{max_idle: 8}"))
    assert [server.held() for server in servers] == [0, 0, 0]
    lb.reload(config(backends, "{min_idle: 2, max_idle: 8}"))
    wait_for_held(servers, 2)


def test_idle_connections_that_time_out_are_replaced_before_they_go(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    [server] = observe(backends[:1])
    balancer(config(backends[:1], "{min_idle: 2, max_idle: 8, idle_timeout: 1s}"))
    wait_for_held([server], 2)
    first = server.accepted()
    held = []
    deadline = time.monotonic() + 3.5  # three idle timeouts and a half
    while time.monotonic() < deadline:
        held.append(server.held())
        time.sleep(0.05)  # sampling an outside process, not waiting for an event
    # Rounds every 1/3 s open replacements for what times out before the next one,
    # so the server never sees fewer than min_idle, and never more than the
    # replacements beside those they replace.
    assert min(held) >= 2, held
    assert max(held) <= 4, held
    # Each set lives two rounds before its replacement: 2 connections per 2/3 s.
    assert 6 <= server.accepted() - first <= 16


def test_a_server_that_comes_back_is_warmed_at_once(balancer: BalancerFactory) -> None:
    backend = BackendProcess("phoenix")
    try:
        # idle_timeout 60s: the periodic round is 20 s away, only the health hook acts.
        lb = balancer(
            config(
                [backend],
                "{min_idle: 3, max_idle: 8, idle_timeout: 60s}",
                "    health_check: {path: /health, interval: 100ms, timeout: 1s,"
                " healthy_threshold: 1, unhealthy_threshold: 1}\n",
            )
        )
        wait_for_held([Observed(backend)], 3)
        backend.kill()  # its connections die with it
        lb.log.wait_for(r"unhealthy", timeout=10)
        backend = BackendProcess("phoenix", port=backend.port)
        # Health-check connections come and go beside the three kept open.
        server = Observed(backend)
        deadline = time.monotonic() + 5
        while server.held() < 3:
            assert time.monotonic() < deadline, "the returning server was not warmed"
            time.sleep(0.05)
    finally:
        backend.kill()


def test_min_idle_above_max_idle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "maitred.yaml"
    path.write_text(
        config([], "{min_idle: 10, max_idle: 4}").replace("servers:\n", "servers: []\n")
    )
    result = subprocess.run(
        [sys.executable, "-m", "maitred", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "pools.web.connection_pool: min_idle (10) must be <= max_idle (4)" in result.stdout


# -- which connections a round warms (in process, no traffic) -------------------------


@pytest.mark.parametrize("protocol_line", ["", "    send_proxy_protocol: v2\n"])
def test_rounds_skip_unavailable_servers_and_pools_that_cannot_reuse(
    protocol_line: str,
) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        worker = Worker(loop)
        settings = parse_config_text(
            f"""
listeners:
  - {{name: public, bind: 127.0.0.1:0, pool: web}}
  - {{name: l4, bind: 127.0.0.1:0, pool: stream, protocol: tcp}}
pools:
  web:
    connection_pool: {{min_idle: 2}}
{protocol_line}    servers: [{{address: 127.0.0.1:1}}, {{address: 127.0.0.1:2}}]
  stream:
    connection_pool: {{min_idle: 2}}
    servers: [{{address: 127.0.0.1:3}}]
  spare:
    connection_pool: {{min_idle: 2}}
    servers: [{{address: 127.0.0.1:4}}]
"""
        )
        await worker.apply(settings)
        warmup = ConnectionWarmup(loop, worker)
        warmup.apply(settings)
        web = worker.pools["web"]
        first, second = web.balancer.servers
        second.available = False
        warmed = {(t.connections.port, t.min_idle) for t in warmup.targets()}
        # stream: a tcp listener's pool; spare: no listener sends to it.
        assert warmed == (set() if protocol_line else {(1, 2)})
        warmup.close()
        await worker.drain(1.0)

    asyncio.run(scenario())
