"""The admin API against a running balancer: every route, its answers and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
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

CONTRACT_SERVER_FIELDS = {
    "id",
    "pool",
    "host",
    "port",
    "weight",
    "status",
    "active_connections",
    "requests_per_second",
    "avg_response_time_ms",
}
CONTRACT_METRICS_FIELDS = {
    "total_requests",
    "requests_per_second",
    "active_connections",
    "avg_response_time_ms",
    "error_rate",
    "backends_healthy",
    "backends_unhealthy",
}


@pytest.fixture
def lb(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> BalancerProcess:
    """Pool web with b1 and b2 from the file; b3 is free for the API to add."""
    return balancer(admin_config(backends[:2], tmp_path / "state"))


def assert_refused(response: Response, status: int, field: str | None) -> None:
    assert response.status == status, response.body
    assert response.header("Content-Type") == "application/json"
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert body.get("field") == field


# -- health, readiness, routing ---------------------------------------------------


def test_healthz_readyz_and_unknown_routes(lb: BalancerProcess, backends: list) -> None:
    assert api(lb, "GET", "/healthz").json() == {"status": "ok"}
    ready = api(lb, "GET", "/readyz")
    assert ready.status == 200 and ready.json()["ready"] is True

    missing = api(lb, "GET", "/api/v1/nothing")
    assert missing.status == 404 and "error" in missing.json()
    wrong_method = api(lb, "PUT", "/api/v1/servers", {})
    assert wrong_method.status == 405
    assert wrong_method.header("Allow") == "GET, HEAD, POST"
    assert api(lb, "DELETE", "/api/v1/metrics").status == 405

    # Every server of the listener's pool drained: not ready (503) until one is back.
    for backend in backends[:2]:
        assert api(lb, "PATCH", f"/api/v1/servers/{sid(backend)}", {"state": "drain"}).status == 200
    not_ready = api(lb, "GET", "/readyz")
    assert not_ready.status == 503 and not_ready.json()["ready"] is False
    api(lb, "PATCH", f"/api/v1/servers/{sid(backends[0])}", {"state": "ready"})
    assert api(lb, "GET", "/readyz").status == 200


def test_keep_alive_serves_several_requests_on_one_connection(lb: BalancerProcess) -> None:
    with connect(*lb.admin) as sock:
        for path in ("/healthz", "/api/v1/metrics", "/api/v1/servers"):
            sock.sendall(build_request("GET", path))
            assert read_response(sock).status == 200


def test_body_over_the_limit_is_refused(lb: BalancerProcess) -> None:
    response = api(lb, "POST", "/api/v1/servers", raw=b"x" * (1024 * 1024 + 1))
    assert response.status == 413


# -- servers ------------------------------------------------------------------------


def test_list_servers_has_the_contract_fields(lb: BalancerProcess, backends: list) -> None:
    spread(lb, 10)
    servers = servers_by_id(lb)
    assert set(servers) == {sid(backends[0]), sid(backends[1])}
    for backend in backends[:2]:
        server = servers[sid(backend)]
        assert set(server) >= CONTRACT_SERVER_FIELDS
        assert server["pool"] == "web"
        assert (server["host"], server["port"]) == (backend.host, backend.port)
        assert server["weight"] == 1
        assert server["status"] == "healthy"
        assert server["total_requests"] == 5
        assert server["responses"]["2xx"] == 5
        assert server["requests_per_second"] > 0
        assert server["avg_response_time_ms"] > 0
        assert server["active_connections"] == 0
    only_web = api(lb, "GET", "/api/v1/servers?pool=web").json()["servers"]
    assert len(only_web) == 2
    one = api(lb, "GET", f"/api/v1/servers/{sid(backends[0])}")
    assert one.status == 200 and one.json()["id"] == sid(backends[0])
    assert_refused(api(lb, "GET", "/api/v1/servers/web-nowhere-1"), 404, "id")


def test_added_server_takes_traffic(lb: BalancerProcess, backends: list) -> None:
    b3 = backends[2]
    response = api(
        lb,
        "POST",
        "/api/v1/servers",
        {
            "host": b3.host,
            "port": b3.port,
            "weight": 2,
            "health_check_path": "/health",
            "pool": "web",
        },
    )
    assert response.status == 201, response.body
    server = response.json()
    assert server["id"] == sid(b3)
    assert response.header("Location") == f"/api/v1/servers/{sid(b3)}"
    assert (server["host"], server["port"], server["weight"]) == (b3.host, b3.port, 2)
    assert server["health_check_path"] == "/health"
    assert server["status"] == "healthy"
    assert set(spread(lb, 9)) == {"b1", "b2", "b3"}
    effective = api(lb, "GET", "/api/v1/config").json()
    addresses = [s["address"] for s in effective["pools"]["web"]["servers"]]
    assert b3.address in addresses

    # Once more: the same server is a conflict.
    again = api(lb, "POST", "/api/v1/servers", {"host": b3.host, "port": b3.port})
    assert_refused(again, 409, "port")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"port": 9000}, "host"),
        ({"host": "", "port": 9000}, "host"),
        ({"host": "bad host!", "port": 9000}, "host"),
        ({"host": "127.0.0.1"}, "port"),
        ({"host": "127.0.0.1", "port": 0}, "port"),
        ({"host": "127.0.0.1", "port": "9000"}, "port"),
        ({"host": "127.0.0.1", "port": 9000, "weight": 0}, "weight"),
        ({"host": "127.0.0.1", "port": 9000, "weight": 1001}, "weight"),
        ({"host": "127.0.0.1", "port": 9000, "weight": True}, "weight"),
        ({"host": "127.0.0.1", "port": 9000, "pool": "wbe"}, "pool"),
        ({"host": "127.0.0.1", "port": 9000, "health_check_path": "health"}, "health_check_path"),
        ({"host": "127.0.0.1", "port": 9000, "colour": "red"}, "colour"),
        ([1, 2], None),
    ],
)
def test_bad_server_bodies_name_the_field(
    lb: BalancerProcess, body: object, field: str | None
) -> None:
    assert_refused(api(lb, "POST", "/api/v1/servers", body), 400, field)


def test_malformed_json_is_a_400(lb: BalancerProcess) -> None:
    assert_refused(api(lb, "POST", "/api/v1/servers", raw=b"{nope"), 400, None)
    assert_refused(api(lb, "POST", "/api/v1/servers", raw=b""), 400, None)


def test_patch_weight_and_state(lb: BalancerProcess, backends: list) -> None:
    b1, b2 = backends[:2]
    path = f"/api/v1/servers/{sid(b1)}"
    changed = api(lb, "PATCH", path, {"weight": 7})
    assert changed.status == 200 and changed.json()["weight"] == 7
    pool = api(lb, "GET", "/api/v1/config").json()["pools"]["web"]
    assert {s["address"]: s["weight"] for s in pool["servers"]}[b1.address] == 7

    drained = api(lb, "PATCH", path, {"state": "drain"}).json()
    assert (drained["status"], drained["state"]) == ("draining", "drain")
    assert spread(lb, 6) == {"b2": 6}
    maint = api(lb, "PATCH", path, {"state": "maint", "weight": 3}).json()
    assert (maint["status"], maint["weight"]) == ("maint", 3)
    assert spread(lb, 4) == {"b2": 4}
    ready = api(lb, "PATCH", path, {"state": "ready"}).json()
    assert ready["status"] == "healthy"
    assert set(spread(lb, 6)) == {"b1", "b2"}

    metrics = api(lb, "GET", "/api/v1/metrics").json()
    assert (metrics["backends_healthy"], metrics["backends_unhealthy"]) == (2, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "weight"),
        ({"weight": 0}, "weight"),
        ({"weight": "5"}, "weight"),
        ({"state": "asleep"}, "state"),
        ({"state": "ready", "colour": "red"}, "colour"),
    ],
)
def test_bad_patches_name_the_field(
    lb: BalancerProcess, backends: list, body: object, field: str
) -> None:
    assert_refused(api(lb, "PATCH", f"/api/v1/servers/{sid(backends[0])}", body), 400, field)


def test_patch_and_delete_of_unknown_servers_are_404(lb: BalancerProcess) -> None:
    assert_refused(api(lb, "PATCH", "/api/v1/servers/web-nowhere-1", {"weight": 2}), 404, "id")
    assert_refused(api(lb, "DELETE", "/api/v1/servers/web-nowhere-1"), 404, "id")


def test_delete_removes_an_idle_server(lb: BalancerProcess, backends: list) -> None:
    b1 = backends[0]
    start = len(lb.log.lines)
    response = api(lb, "DELETE", f"/api/v1/servers/{sid(b1)}")
    assert response.status == 204 and response.body == b""
    lb.log.wait_for(rf"server {sid(b1)} removed from pool web once idle", start=start)
    assert set(servers_by_id(lb)) == {sid(backends[1])}
    assert spread(lb, 4) == {"b2": 4}
    assert_refused(api(lb, "GET", f"/api/v1/servers/{sid(b1)}"), 404, "id")


def test_several_pools_need_the_pool_field(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    config = admin_config(backends[:1], tmp_path / "state") + (
        f"  other:\n    servers:\n      - {{address: {backends[1].address}}}\n"
    )
    lb = balancer(config)
    body = {"host": backends[2].host, "port": backends[2].port}
    assert_refused(api(lb, "POST", "/api/v1/servers", body), 400, "pool")
    added = api(lb, "POST", "/api/v1/servers", {**body, "pool": "other"})
    assert added.status == 201 and added.json()["id"] == sid(backends[2], "other")


# -- pools ----------------------------------------------------------------------------


def test_pools_list_add_get_delete(lb: BalancerProcess, backends: list) -> None:
    listed = api(lb, "GET", "/api/v1/pools").json()["pools"]
    assert [pool["name"] for pool in listed] == ["web"]
    web = listed[0]
    assert web["servers"] == [sid(backends[0]), sid(backends[1])]
    assert web["used_by"] == ["listeners[0] (public)"] and web["source"] == "file"

    body = {
        "name": "api",
        "algorithm": "least_connections",
        "servers": [{"address": backends[2].address, "weight": 2}],
        "health_check": {"path": "/health", "interval": "2s"},
    }
    created = api(lb, "POST", "/api/v1/pools", body)
    assert created.status == 201, created.body
    pool = created.json()
    assert pool["name"] == "api" and pool["algorithm"] == "least_connections"
    assert pool["servers"] == [sid(backends[2], "api")]
    assert pool["config"]["health_check"]["interval"] == 2.0
    assert pool["source"] == "runtime"
    assert created.header("Location") == "/api/v1/pools/api"
    assert api(lb, "GET", "/api/v1/pools/api").json()["name"] == "api"
    assert sid(backends[2], "api") in servers_by_id(lb)

    assert_refused(api(lb, "POST", "/api/v1/pools", {"name": "api"}), 409, "name")
    assert_refused(api(lb, "DELETE", "/api/v1/pools/web"), 409, "name")
    assert api(lb, "DELETE", "/api/v1/pools/api").status == 204
    assert_refused(api(lb, "GET", "/api/v1/pools/api"), 404, "name")
    assert_refused(api(lb, "DELETE", "/api/v1/pools/api"), 404, "name")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": "bad name"}, "name"),
        ({"name": "api", "algorithm": "fastest"}, "algorithm"),
        ({"name": "api", "servers": [{"address": "nowhere"}]}, "servers[0].address"),
        ({"name": "api", "health_check": {"interval": 0}}, "health_check.interval"),
        ({"name": "api", "colour": "red"}, "colour"),
    ],
)
def test_bad_pool_bodies_name_the_field(lb: BalancerProcess, body: object, field: str) -> None:
    assert_refused(api(lb, "POST", "/api/v1/pools", body), 400, field)


# -- metrics, config, reload ----------------------------------------------------------


def test_metrics_and_history(lb: BalancerProcess) -> None:
    spread(lb, 20)
    spread(lb, 2, path="/status?code=503")
    metrics = api(lb, "GET", "/api/v1/metrics").json()
    assert set(metrics) >= CONTRACT_METRICS_FIELDS
    assert metrics["total_requests"] == 22
    assert metrics["requests_per_second"] > 0
    assert metrics["avg_response_time_ms"] > 0
    assert metrics["error_rate"] == pytest.approx(2 / 22, abs=0.001)
    assert (metrics["backends_healthy"], metrics["backends_unhealthy"]) == (2, 0)
    assert metrics["latency_ms"]["p50"] is not None

    # One point per sampled second, once the sampler has ticked past the traffic.
    def traffic_charted() -> bool:
        points = api(lb, "GET", "/api/v1/metrics/history?seconds=60").json()["points"]
        return sum(point["requests_per_second"] for point in points) > 0

    wait_until(traffic_charted, timeout=5)
    history = api(lb, "GET", "/api/v1/metrics/history?seconds=60").json()
    assert history["interval_seconds"] == 1
    point = history["points"][-1]
    assert {"time", "requests_per_second", "error_rate", "latency_ms", "pools"} <= set(point)
    assert_refused(api(lb, "GET", "/api/v1/metrics/history?seconds=0"), 400, "seconds")
    assert_refused(api(lb, "GET", "/api/v1/metrics/history?seconds=x"), 400, "seconds")
    assert_refused(api(lb, "GET", "/api/v1/metrics/history?seconds="), 400, "seconds")


def test_reload_keeps_runtime_changes_and_reports_a_bad_file(
    lb: BalancerProcess, backends: list
) -> None:
    b3 = backends[2]
    assert api(lb, "POST", "/api/v1/servers", {"host": b3.host, "port": b3.port}).status == 201
    reloaded = api(lb, "POST", "/api/v1/reload")
    assert reloaded.status == 200 and reloaded.json() == {"reloaded": True, "conflicts": []}
    assert sid(b3) in servers_by_id(lb)

    good = lb.config_path.read_text()
    lb.config_path.write_text(good.replace("pool: web", "pool: wbe"))
    refused = api(lb, "POST", "/api/v1/reload")
    assert refused.status == 422
    assert any("wbe" in problem for problem in refused.json()["problems"])
    assert sid(b3) in servers_by_id(lb)


def test_config_is_the_effective_one_without_secrets(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    lb = balancer(admin_config(backends[:1], tmp_path / "state", token="s3cret-token"))
    config = api(lb, "GET", "/api/v1/config", token="s3cret-token").json()
    assert config["admin"]["token"] == "<redacted>"
    assert "s3cret-token" not in json.dumps(config)
    assert config["pools"]["web"]["servers"][0]["address"] == backends[0].address


# -- auth -----------------------------------------------------------------------------


def test_token_guards_every_api_route_but_not_health_metrics_or_page(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    lb = balancer(admin_config(backends[:1], tmp_path / "state", token="s3cret-token"))
    for method, path in [
        ("GET", "/api/v1/servers"),
        ("POST", "/api/v1/servers"),
        ("GET", "/api/v1/metrics"),
        ("GET", "/api/v1/pools"),
        ("POST", "/api/v1/reload"),
        ("GET", "/api/v1/config"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/api/v1/nothing"),
    ]:
        missing = api(lb, method, path)
        assert missing.status == 401, (method, path)
        assert missing.header("WWW-Authenticate") == 'Bearer realm="maitred"'
        assert api(lb, method, path, token="wrong-token").status == 401
    assert api(lb, "GET", "/api/v1/servers", token="s3cret-token").status == 200
    assert api(lb, "GET", "/healthz").status == 200
    assert api(lb, "GET", "/readyz").status == 200
    assert api(lb, "GET", "/metrics").status == 200
    page = api(lb, "GET", "/")
    assert page.status == 200 and b"<title>maitred</title>" in page.body


def test_admin_without_token_refuses_a_public_bind(tmp_path: Path) -> None:
    config = tmp_path / "open.yaml"
    config.write_text(
        "admin: {bind: 0.0.0.0:0}\n"
        "listeners: [{name: public, bind: 127.0.0.1:0, pool: web}]\n"
        "pools: {web: {servers: [{address: 127.0.0.1:9}]}}\n"
    )
    for command in ("check", "run"):
        result = subprocess.run(
            [sys.executable, "-m", "maitred", command, "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result
        output = result.stdout + result.stderr
        assert "admin" in output and "not a loopback address: set admin.token" in output
