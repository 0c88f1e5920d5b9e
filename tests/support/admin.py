"""Talking to a running balancer's admin listener, and configurations that have one."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.support.backends import (
    BackendProcess,
    Response,
    build_request,
    connect,
    http_request,
    read_response,
)
from tests.support.balancer import BalancerProcess

T = TypeVar("T")


def admin_config(
    backends: list[BackendProcess],
    state_dir: Path,
    *,
    token: str | None = None,
    pool_extra: str = "",
    top_extra: str = "",
    drain_timeout: str = "10s",
) -> str:
    """One listener and a pool ``web`` of ``backends``, the admin API on a free port."""
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends)
    token_line = f"\n  token: {token}" if token else ""
    return f"""
admin:
  bind: 127.0.0.1:0{token_line}
state_dir: {state_dir}
drain_timeout: {drain_timeout}
{top_extra}
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
pools:
  web:
{pool_extra}    servers:
{servers}
"""


def api(
    lb: BalancerProcess,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
) -> Response:
    """One admin request; ``body`` is sent as JSON, ``raw`` as is."""
    headers = []
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        headers.append(("Content-Type", "application/json"))
    if raw is not None:
        data = raw
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    host, port = lb.admin
    return http_request(host, port, method, path, headers, data)


def servers_by_id(lb: BalancerProcess, token: str | None = None) -> dict[str, dict[str, Any]]:
    response = api(lb, "GET", "/api/v1/servers", token=token)
    assert response.status == 200, response.body
    return {server["id"]: server for server in response.json()["servers"]}


def spread(lb: BalancerProcess, count: int, path: str = "/") -> Counter[str]:
    """Which backends answer ``count`` requests on one keep-alive connection."""
    seen: Counter[str] = Counter()
    with connect("127.0.0.1", lb.port) as sock:
        for _ in range(count):
            sock.sendall(build_request("GET", path))
            response = read_response(sock)
            seen[response.header("X-Backend") or str(response.status)] += 1
    return seen


def sid(backend: BackendProcess, pool: str = "web") -> str:
    return f"{pool}-{backend.host}-{backend.port}"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> None:
    """Poll ``condition`` (an observable state, e.g. through the API) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(every)


def eventually(read: Callable[[], T], done: Callable[[T], bool], timeout: float = 15.0) -> T:
    """Poll ``read`` until ``done`` holds or ``timeout`` passes; the last value read.
    (Worker processes report their counters to the supervisor once a second.)"""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def metric(lb: BalancerProcess, name: str) -> dict[str, float]:
    """The samples of one Prometheus metric on /metrics, by their label text."""
    text = http_request(*lb.admin, "GET", "/metrics").body.decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(name):
            labels, value = line.rsplit(" ", 1)
            values[labels] = float(value)
    return values
