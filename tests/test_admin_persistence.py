"""Runtime changes survive restarts and reloads; `maitred check` reports conflicts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.admin import admin_config, api, servers_by_id, sid, spread
from tests.support.backends import BackendProcess
from tests.support.balancer import BalancerFactory


def test_changes_survive_a_restart(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    b1, b2, b3 = backends
    config = admin_config([b1, b2], tmp_path / "state")
    first = balancer(config)
    assert (
        api(
            first, "POST", "/api/v1/servers", {"host": b3.host, "port": b3.port, "weight": 3}
        ).status
        == 201
    )
    assert (
        api(first, "PATCH", f"/api/v1/servers/{sid(b1)}", {"weight": 4, "state": "maint"}).status
        == 200
    )
    start = len(first.log.lines)
    assert api(first, "DELETE", f"/api/v1/servers/{sid(b2)}").status == 204
    first.log.wait_for(rf"server {sid(b2)} removed", start=start)
    pool = {"name": "api", "servers": [{"address": b2.address}]}
    assert api(first, "POST", "/api/v1/pools", pool).status == 201
    assert first.stop() == 0

    second = balancer(config)
    assert "replaying runtime changes" in second.log.text()
    servers = servers_by_id(second)
    assert set(servers) == {sid(b1), sid(b3), sid(b2, "api")}
    assert (servers[sid(b1)]["weight"], servers[sid(b1)]["status"]) == (4, "maint")
    assert servers[sid(b3)]["weight"] == 3
    assert spread(second, 4) == {"b3": 4}
    runtime = api(second, "GET", "/api/v1/runtime").json()
    assert runtime["state_file"] == str(tmp_path / "state" / "runtime.json")
    assert runtime["conflicts"] == []


def test_state_file_is_written_whole(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    lb = balancer(admin_config(backends[:1], state))
    for weight in range(2, 12):
        assert (
            api(lb, "PATCH", f"/api/v1/servers/{sid(backends[0])}", {"weight": weight}).status
            == 200
        )
    # Written through a temporary file and renamed: nothing else is left behind.
    assert [path.name for path in state.iterdir()] == ["runtime.json"]
    saved = json.loads((state / "runtime.json").read_text())
    assert saved["weights"] == {"web": {backends[0].address: 11}}


def maitred_check(config_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "maitred", "check", "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_check_and_restart_report_conflicts_with_the_file(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    b1, b2, b3 = backends
    state = tmp_path / "state"
    first = balancer(admin_config([b1, b2], state))
    assert api(first, "POST", "/api/v1/servers", {"host": b3.host, "port": b3.port}).status == 201
    start = len(first.log.lines)
    assert api(first, "DELETE", f"/api/v1/servers/{sid(b1)}").status == 204
    first.log.wait_for(rf"server {sid(b1)} removed", start=start)
    assert first.stop() == 0

    # The file changed meanwhile: b1 is gone from it, and b3 is in it now.
    edited = admin_config([b2, b3], state)
    config_path = tmp_path / "edited.yaml"
    config_path.write_text(edited)
    result = maitred_check(config_path)
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    deleted = f"server {b1.address} was deleted at runtime, but the file no longer has it"
    assert f"pools.web: warning: runtime change: {deleted}" in lines
    assert any(
        line.startswith(f"pools.web: warning: runtime change: server {b3.address} was added")
        for line in lines
    )

    second = balancer(edited)
    second.log.wait_for(f"runtime change skipped: pools.web: server {b1.address} was deleted")
    assert set(servers_by_id(second)) == {sid(b2), sid(b3)}
    assert len(api(second, "GET", "/api/v1/runtime").json()["conflicts"]) == 2


def test_check_is_quiet_without_runtime_changes(
    backends: list[BackendProcess], tmp_path: Path
) -> None:
    config_path = tmp_path / "plain.yaml"
    config_path.write_text(admin_config(backends[:1], tmp_path / "state"))
    result = maitred_check(config_path)
    assert result.returncode == 0 and "warning" not in result.stdout


def test_unreadable_state_is_moved_aside(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "runtime.json").write_text("{not json")
    lb = balancer(admin_config(backends[:1], state))
    assert "runtime changes not replayed" in lb.log.text()
    assert (state / "runtime.json.unreadable").read_text() == "{not json"
    assert set(servers_by_id(lb)) == {sid(backends[0])}
