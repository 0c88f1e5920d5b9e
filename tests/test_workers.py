"""Several worker processes under one supervisor, through real processes."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator

import pytest

from tests.support.admin import eventually, metric
from tests.support.backends import (
    BackendProcess,
    build_request,
    connect,
    http_request,
    read_response,
)
from tests.support.balancer import BalancerFactory, BalancerProcess
from tests.support.load import SteadyLoad


def workers_config(backends: list[BackendProcess], extra_server: str = "") -> str:
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends)
    return f"""
workers: 2
admin: {{bind: 127.0.0.1:0}}
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
pools:
  web:
    servers:
{servers}
{extra_server}"""


@pytest.fixture
def lb(backends: list[BackendProcess], balancer: BalancerFactory) -> Iterator[BalancerProcess]:
    process = balancer(workers_config(backends[:2]))
    for index in range(2):
        process.log.wait_for(rf"worker {index} started")
    process.log.wait_for_count(r"worker \d+ serving", 2)
    yield process


def test_every_worker_takes_connections(lb: BalancerProcess) -> None:
    # One accept queue is shared: which worker wins a connection is the kernel's
    # choice, so open waves of connections until both have taken some (bounded).
    sent = 0
    accepted: dict[str, float] = {}
    for _ in range(10):
        sockets = [connect("127.0.0.1", lb.port) for _ in range(60)]
        try:
            for sock in sockets:
                sock.sendall(build_request("GET", "/"))
            for sock in sockets:
                assert read_response(sock).status == 200
        finally:
            for sock in sockets:
                sock.close()
        sent += 60
        accepted = eventually(
            lambda: metric(lb, "maitred_worker_connections_accepted_total"),
            lambda values, sent=sent: sum(values.values()) >= sent,
        )
        if len(accepted) == 2 and all(count > 0 for count in accepted.values()):
            break
    assert len(accepted) == 2
    assert all(count > 0 for count in accepted.values()), accepted


def test_metrics_cover_all_workers(lb: BalancerProcess) -> None:
    sockets = [connect("127.0.0.1", lb.port) for _ in range(20)]
    try:
        for _ in range(5):
            for sock in sockets:
                sock.sendall(build_request("GET", "/"))
            for sock in sockets:
                assert read_response(sock).status == 200
    finally:
        for sock in sockets:
            sock.close()
    total = eventually(
        lambda: http_request(*lb.admin, "GET", "/api/v1/metrics").json()["total_requests"],
        lambda value: value >= 100,
    )
    assert total == 100


def test_a_killed_worker_is_replaced_and_no_new_request_fails(lb: BalancerProcess) -> None:
    pids = [int(m) for m in re.findall(r"worker \d+ started \(pid (\d+)\)", lb.log.text())]
    start = len(lb.log.lines)
    os.kill(pids[0], signal.SIGKILL)
    lb.log.wait_for(r"died with .*starting a new one", start=start)
    # Connections made from now on are accepted by the survivor or the replacement.
    for _ in range(50):
        assert http_request("127.0.0.1", lb.port, "GET", "/").status == 200
    lb.log.wait_for(r"worker 0 started", start=start)
    lb.log.wait_for_count(r"worker \d+ serving", 3)


def test_reload_under_load_drops_nothing(
    backends: list[BackendProcess], lb: BalancerProcess
) -> None:
    with SteadyLoad(lb.port) as load:
        load.wait_for_total(200)
        lb.reload(workers_config(backends[:3]))
        load.wait_for_total(load.total() + 500)
    assert load.failures == []
    # The reload kept the listeners: the running workers applied it, none was replaced.
    assert "starting a new one" not in lb.log.text()
