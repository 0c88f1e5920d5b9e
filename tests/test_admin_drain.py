"""Draining through the admin API: in-flight requests finish, new ones go elsewhere."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support.admin import admin_config, api, servers_by_id, sid, spread, wait_until
from tests.support.backends import (
    BackendProcess,
    Response,
    build_request,
    connect,
    read_response,
)
from tests.support.balancer import BalancerFactory, BalancerProcess
from tests.support.load import SteadyLoad


class SlowRequest(threading.Thread):
    """A request the backend answers after ``ms`` milliseconds, on its own connection."""

    def __init__(self, lb: BalancerProcess, ms: int) -> None:
        super().__init__(daemon=True)
        self.lb = lb
        self.ms = ms
        self.response: Response | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect("127.0.0.1", self.lb.port, timeout=30) as sock:
                sock.sendall(build_request("GET", f"/delay?ms={self.ms}"))
                self.response = read_response(sock)
        except BaseException as exc:  # reported by the test
            self.error = exc


def in_flight_on(lb: BalancerProcess, server: str, ms: int) -> SlowRequest:
    """Start a slow request that lands on ``server`` (the others drained meanwhile)."""
    others = [other for other in servers_by_id(lb) if other != server]
    for other in others:
        api(lb, "PATCH", f"/api/v1/servers/{other}", {"state": "drain"})
    slow = SlowRequest(lb, ms)
    slow.start()
    wait_until(lambda: servers_by_id(lb)[server]["active_connections"] == 1)
    for other in others:
        api(lb, "PATCH", f"/api/v1/servers/{other}", {"state": "ready"})
    return slow


@pytest.fixture
def lb(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> BalancerProcess:
    return balancer(admin_config(backends[:2], tmp_path / "state", drain_timeout="10s"))


def test_delete_lets_in_flight_finish_and_sends_nothing_new(
    lb: BalancerProcess, backends: list[BackendProcess]
) -> None:
    b1 = sid(backends[0])
    slow = in_flight_on(lb, b1, ms=1500)
    start = len(lb.log.lines)
    assert api(lb, "DELETE", f"/api/v1/servers/{b1}").status == 204

    leaving = servers_by_id(lb)[b1]
    assert (leaving["status"], leaving["removing"], leaving["active_connections"]) == (
        "draining",
        True,
        1,
    )
    assert spread(lb, 10) == {"b2": 10}  # nothing new for the leaving server

    slow.join(10)
    assert slow.error is None and slow.response is not None
    assert (slow.response.status, slow.response.header("X-Backend")) == (200, "b1")
    lb.log.wait_for(rf"server {b1} removed from pool web once idle", start=start)
    assert set(servers_by_id(lb)) == {sid(backends[1])}


def test_delete_under_load_fails_no_request(
    lb: BalancerProcess, backends: list[BackendProcess]
) -> None:
    with SteadyLoad(lb.port, path="/delay?ms=5") as load:
        load.wait_for("b1", 20)
        load.wait_for("b2", 20)
        start = len(lb.log.lines)
        assert api(lb, "DELETE", f"/api/v1/servers/{sid(backends[0])}").status == 204
        lb.log.wait_for(rf"server {sid(backends[0])} removed from pool web", start=start)
        # Answers b1 gave before it left may still be on their way to the clients.
        load.wait_for_answers_to_sent()
        after_removal = load.answered["b1"]
        load.wait_for_total(load.total() + 100)
    assert load.failures == []
    assert load.answered["b1"] == after_removal  # none after the server left


def test_drain_timeout_removes_a_busy_server_without_cutting_its_request(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    lb = balancer(admin_config(backends[:2], tmp_path / "state", drain_timeout="500ms"))
    b1 = sid(backends[0])
    slow = in_flight_on(lb, b1, ms=2500)
    start = len(lb.log.lines)
    deleted_at = time.monotonic()
    assert api(lb, "DELETE", f"/api/v1/servers/{b1}").status == 204
    lb.log.wait_for(rf"server {b1} removed from pool web at the drain timeout", start=start)
    assert time.monotonic() - deleted_at < 2.0
    assert b1 not in servers_by_id(lb)
    slow.join(10)
    assert slow.response is not None and slow.response.status == 200


def test_state_drain_keeps_the_server_and_lets_in_flight_finish(
    lb: BalancerProcess, backends: list[BackendProcess]
) -> None:
    b1 = sid(backends[0])
    slow = in_flight_on(lb, b1, ms=1000)
    drained = api(lb, "PATCH", f"/api/v1/servers/{b1}", {"state": "drain"})
    assert drained.status == 200 and drained.json()["status"] == "draining"
    assert spread(lb, 6) == {"b2": 6}
    slow.join(10)
    assert slow.response is not None and slow.response.status == 200
    assert servers_by_id(lb)[b1]["status"] == "draining"  # drained, not removed


def test_a_leaving_server_added_back_stays(
    lb: BalancerProcess, backends: list[BackendProcess]
) -> None:
    b1 = backends[0]
    slow = in_flight_on(lb, sid(b1), ms=1000)
    assert api(lb, "DELETE", f"/api/v1/servers/{sid(b1)}").status == 204
    assert_conflict = api(lb, "PATCH", f"/api/v1/servers/{sid(b1)}", {"weight": 2})
    assert assert_conflict.status == 409
    back = api(lb, "POST", "/api/v1/servers", {"host": b1.host, "port": b1.port, "weight": 2})
    assert back.status == 201 and back.json()["status"] == "healthy"
    slow.join(10)
    assert set(spread(lb, 6)) == {"b1", "b2"}
    assert servers_by_id(lb)[sid(b1)]["weight"] == 2
