"""Active-active (issue 12): instances sharing one Redis behave as one.

The pure parts first (subjects, versions, echo suppression, resync decisions),
then the Redis store on a real redis-server, then real ``maitred run``
processes sharing a real redis-server: runtime changes made through one
instance's admin API reach the others, a late instance catches up, a sticky
cookie from one is honoured by another, one rate limit covers them all, and a
Redis that is down at start or restarts empty is caught up with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maitred.config import ConfigError, parse_config_text
from maitred.config.model import ClusterSettings
from maitred.control.cluster_store import ClusterStore
from maitred.control.cluster_sync import (
    ChangeMessage,
    ClusterReplica,
    Snapshot,
    decode_message,
    diff,
    flatten,
    subject,
    unflatten,
)
from maitred.control.overlay import Overlay
from tests.support.admin import api, servers_by_id, sid, wait_until
from tests.support.backends import BackendProcess, Response, http_request
from tests.support.balancer import BalancerFactory, BalancerProcess
from tests.support.redis_server import RedisServer, free_port, requires_redis, running_redis

FILE = parse_config_text(
    """
listeners: [{name: public, bind: 127.0.0.1:0, pool: web}]
pools:
  web: {servers: [{address: 127.0.0.1:9001}, {address: 127.0.0.1:9002}]}
  api: {servers: [{address: 127.0.0.1:9101}]}
"""
)
#: What "appears on the other instance within a second" is measured against.
PROPAGATION_LIMIT = 1.0


# -- subjects ----------------------------------------------------------------------


def server(address: str, weight: int = 1) -> dict[str, Any]:
    return {"address": address, "weight": weight}


def changed_overlay() -> Overlay:
    overlay = Overlay()
    overlay.add_server("web", server("127.0.0.1:9003", 3), FILE)
    overlay.add_server("web", server("127.0.0.1:9001", 2), FILE)  # replaces the file's
    overlay.remove_server("web", "127.0.0.1:9002", FILE)
    overlay.set_weight("api", "127.0.0.1:9101", 7)
    overlay.set_state("api", "127.0.0.1:9101", "maint")
    overlay.add_pool("extra", {"servers": []}, FILE)
    overlay.remove_pool("api", FILE)
    overlay.add_pool("api", {"algorithm": "random", "servers": [server("127.0.0.1:9200")]}, FILE)
    return overlay


def test_an_overlay_survives_flattening() -> None:
    overlay = changed_overlay()
    assert unflatten(flatten(overlay)).to_json() == overlay.to_json()
    # An empty list stays a list (the Lua script splices values in as text for this).
    assert flatten(overlay)[subject("pool_added", "extra")] == {"servers": []}


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["add", "remove", "weight", "state", "add_pool", "remove_pool"]),
        st.sampled_from(["web", "api", "new"]),
        st.sampled_from(["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9101", "[::1]:80"]),
        st.integers(min_value=1, max_value=1000),
        st.sampled_from(["ready", "drain", "maint"]),
    ),
    max_size=12,
)


def apply_operation(overlay: Overlay, operation: tuple[str, str, str, int, str]) -> None:
    kind, pool, address, weight, state = operation
    if kind == "add":
        overlay.add_server(pool, server(address, weight), FILE)
    elif kind == "remove":
        overlay.remove_server(pool, address, FILE)
    elif kind == "weight":
        overlay.set_weight(pool, address, weight)
    elif kind == "state":
        overlay.set_state(pool, address, state)
    elif kind == "add_pool":
        overlay.add_pool(pool, {"servers": [server(address, weight)]}, FILE)
    else:
        overlay.remove_pool(pool, FILE)


@settings(max_examples=200, deadline=None)
@given(OPERATIONS, OPERATIONS)
def test_publishing_the_diff_of_any_change_reproduces_it_elsewhere(
    before_ops: list[tuple[str, str, str, int, str]],
    change_ops: list[tuple[str, str, str, int, str]],
) -> None:
    before = Overlay()
    for operation in before_ops:
        apply_operation(before, operation)
    after = before.copy()
    for operation in change_ops:
        apply_operation(after, operation)
    assert unflatten(flatten(after)).to_json() == after.to_json()
    # Another instance holding ``before`` receives only the diff, and ends up equal.
    sender, receiver = ClusterReplica(), ClusterReplica()
    receiver.resync(Snapshot(1, {}), {})
    sender.record_local(before, after)
    message = ChangeMessage(2, "a", sender.to_publish())
    step = receiver.receive(message, flatten(before))
    assert unflatten(step.flat).to_json() == after.to_json()


def test_the_diff_names_only_what_changed_and_clears_what_went() -> None:
    before = changed_overlay()
    before.set_state("web", "127.0.0.1:9003", "drain")
    after = before.copy()
    after.set_weight("web", "127.0.0.1:9003", 9)  # an added server: its data changes
    after.set_state("web", "127.0.0.1:9003", "ready")  # no state kept any more
    assert diff(flatten(before), flatten(after)) == {
        subject("server_added", "web", "127.0.0.1:9003"): server("127.0.0.1:9003", 9),
        subject("state", "web", "127.0.0.1:9003"): None,
    }


def test_subjects_this_version_cannot_read_are_left_out() -> None:
    flat = {
        subject("weight", "web", "127.0.0.1:9001"): 4,
        subject("weight", "web", "127.0.0.1:9002"): "heavy",
        subject("colour", "web", "127.0.0.1:9001"): "blue",
        "not json": 1,
    }
    assert unflatten(flat).to_json() == unflatten({list(flat)[0]: 4}).to_json()


def test_change_messages_are_checked() -> None:
    message = decode_message(b'{"v":3,"node":"a","changes":{"x":null}}')
    assert message == ChangeMessage(3, "a", {"x": None})
    for bad in (b"[]", b'{"v":0,"node":"a","changes":{}}', b'{"v":1,"changes":{}}'):
        with pytest.raises(ValueError):
            decode_message(bad)


# -- one instance's decisions ----------------------------------------------------------

WEIGHT_1 = subject("weight", "web", "127.0.0.1:9001")
WEIGHT_2 = subject("weight", "web", "127.0.0.1:9002")


def synced(version: int = 1, entries: dict[str, tuple[int, Any]] | None = None) -> ClusterReplica:
    replica = ClusterReplica()
    replica.resync(Snapshot(version, entries or {}), {})
    return replica


def weights(**by_server: int) -> Overlay:
    overlay = Overlay()
    for name, weight in by_server.items():
        overlay.set_weight("web", f"127.0.0.1:900{name[-1]}", weight)
    return overlay


def test_an_own_change_is_published_once_and_its_echo_changes_nothing() -> None:
    replica = synced(4)
    assert replica.record_local(Overlay(), weights(s1=5))
    assert replica.to_publish() == {WEIGHT_1: 5}
    replica.published({WEIGHT_1: 5}, 5)
    assert replica.pending == {}
    echo = ChangeMessage(5, "me", {WEIGHT_1: 5})
    step = replica.receive(echo, flatten(weights(s1=5)))
    assert step.action == "none"
    assert replica.followed == 5
    assert replica.pending == {}  # nothing to publish again: no echo loop


def test_a_received_change_is_applied_and_never_published_again() -> None:
    replica = synced(4)
    step = replica.receive(ChangeMessage(5, "other", {WEIGHT_1: 3}), {})
    assert step == ("apply", {WEIGHT_1: 3})
    assert replica.pending == {}
    # Receiving is not a local commit: only record_local feeds what gets published.
    assert replica.to_publish() == {}


def test_an_echo_arriving_before_the_publish_reply_is_harmless() -> None:
    replica = synced(4)
    replica.record_local(Overlay(), weights(s1=5))
    step = replica.receive(ChangeMessage(5, "me", {WEIGHT_1: 5}), flatten(weights(s1=5)))
    assert step.action == "none"


def test_old_or_repeated_messages_are_ignored_and_a_gap_asks_for_a_resync() -> None:
    replica = synced(7)
    assert replica.receive(ChangeMessage(7, "x", {WEIGHT_1: 1}), {}).action == "none"
    assert replica.receive(ChangeMessage(3, "x", {WEIGHT_1: 1}), {}).action == "none"
    assert replica.receive(ChangeMessage(9, "x", {WEIGHT_1: 1}), {}).action == "resync"
    assert replica.followed == 7


def test_messages_before_the_first_snapshot_are_not_applied() -> None:
    replica = ClusterReplica()
    assert replica.receive(ChangeMessage(1, "x", {WEIGHT_1: 1}), {}).action == "none"


def test_last_writer_wins_per_subject_by_version() -> None:
    # A's change went out as version 6; B's older write of the same subject (5)
    # is read afterwards on A's subscription: A keeps its own, as every instance will.
    replica = synced(4)
    replica.record_local(Overlay(), weights(s1=6))
    replica.published({WEIGHT_1: 6}, 6)
    step = replica.receive(ChangeMessage(5, "b", {WEIGHT_1: 5, WEIGHT_2: 2}), {WEIGHT_1: 6})
    assert step == ("apply", {WEIGHT_1: 6, WEIGHT_2: 2})
    # A newer write of the subject wins over A's.
    replica.receive(ChangeMessage(6, "a", {WEIGHT_1: 6}), step.flat)
    step = replica.receive(ChangeMessage(7, "b", {WEIGHT_1: 7}), step.flat)
    assert step == ("apply", {WEIGHT_1: 7, WEIGHT_2: 2})


def test_own_changes_not_yet_published_win_over_received_ones() -> None:
    replica = synced(4)
    replica.record_local(Overlay(), weights(s1=9))  # Redis away: pending
    step = replica.receive(ChangeMessage(5, "b", {WEIGHT_1: 5}), {WEIGHT_1: 9})
    assert step.action == "none"
    assert replica.to_publish() == {WEIGHT_1: 9}


def test_a_resync_takes_the_clusters_state_but_keeps_pending_changes() -> None:
    replica = synced(1)
    replica.record_local(weights(s2=3), weights(s2=4))
    entries = {
        WEIGHT_1: (8, 2),
        WEIGHT_2: (9, 3),
        subject("state", "web", "127.0.0.1:9001"): (10, None),
    }
    mine = flatten(weights(s2=4))
    assert replica.resync(Snapshot(10, entries), mine) == {WEIGHT_1: 2, WEIGHT_2: 4}
    assert replica.followed == 10
    assert replica.to_publish() == {WEIGHT_2: 4}


def test_an_empty_cluster_is_seeded_with_the_instances_changes() -> None:
    replica = ClusterReplica()
    mine = flatten(changed_overlay())
    assert replica.resync(Snapshot(0), mine) == mine
    assert replica.to_publish() == mine


def test_a_heartbeat_asks_for_a_resync_when_lagging_twice_or_when_redis_forgot() -> None:
    replica = synced(5)
    assert not replica.needs_resync(5)
    assert not replica.needs_resync(6)  # the message may be on its way
    replica.receive(ChangeMessage(6, "x", {}), {})
    assert not replica.needs_resync(7)
    assert replica.needs_resync(7)  # still not there one heartbeat later
    replica.resync(Snapshot(7), {})
    assert replica.needs_resync(0)  # Redis restarted empty


def test_the_cluster_key_is_validated_like_the_rate_limit_store() -> None:
    text = """
cluster: {redis: "http://127.0.0.1:6379", key_prefix: "two words", timeout: 0}
listeners: [{name: public, bind: 127.0.0.1:0, pool: web}]
pools: {web: {servers: [{address: 127.0.0.1:9001}]}}
"""
    with pytest.raises(ConfigError) as refused:
        parse_config_text(text)
    problems = {problem.path: problem.message for problem in refused.value.problems}
    assert problems == {
        "cluster.redis": "must be a redis://, rediss:// or unix:// URL",
        "cluster.key_prefix": "must be a non-empty name without spaces, e.g. maitred:cluster",
        "cluster.timeout": "must be > 0",
    }
    valid = parse_config_text(
        text.replace('"http', '"redis').replace("two words", "lb").replace("0}", "1s}")
    )
    assert valid.cluster == ClusterSettings(
        redis="redis://127.0.0.1:6379", key_prefix="lb", node_id=None, timeout=1.0
    )


# -- the store on a real Redis -------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


@requires_redis
def test_the_store_publishes_atomically_and_reads_back_exactly(redis_server: RedisServer) -> None:
    changes = {
        subject("pool_added", "extra"): {"servers": [], "algorithm": "random"},
        WEIGHT_1: 5,
        subject("state", "web", "127.0.0.1:9001"): None,
    }

    async def go() -> tuple[int, int, Snapshot, Any]:
        store = ClusterStore(ClusterSettings(redis=redis_server.url, key_prefix="t"))
        try:
            async with store.subscription() as pubsub:
                first = await store.publish("node-a", {WEIGHT_1: 1})
                second = await store.publish("node-a", changes)
                messages = [await store.next_message(pubsub) for _ in range(2)]
                return first, second, await store.snapshot(), messages
        finally:
            await store.close()

    first, second, snapshot, messages = asyncio.run(go())
    assert (first, second) == (1, 2)
    assert messages == [
        ChangeMessage(1, "node-a", {WEIGHT_1: 1}),
        ChangeMessage(2, "node-a", changes),
    ]
    assert snapshot == Snapshot(2, {key: (2, value) for key, value in changes.items()})
    assert sorted(redis_server.client().keys("t:*")) == [b"t:state", b"t:version"]


# -- real instances sharing a real Redis ------------------------------------------------


def cluster_config(
    backends: list[BackendProcess],
    state_dir: Path,
    redis_url: str,
    node: str,
    *,
    pool_extra: str = "",
    listener_extra: str = "",
    top_extra: str = "",
) -> str:
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends)
    return f"""
admin:
  bind: 127.0.0.1:0
state_dir: {state_dir}
drain_timeout: 5s
cluster: {{redis: "{redis_url}", node_id: {node}}}
{top_extra}
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
{listener_extra}
pools:
  web:
{pool_extra}    servers:
{servers}
"""


def start_node(
    balancer: BalancerFactory,
    tmp_path: Path,
    backends: list[BackendProcess],
    redis_url: str,
    node: str,
    **extra: str,
) -> BalancerProcess:
    return balancer(cluster_config(backends, tmp_path / f"state-{node}", redis_url, node, **extra))


def get(lb: BalancerProcess, cookie: str | None = None) -> Response:
    headers = [("Cookie", cookie)] if cookie else []
    return http_request("127.0.0.1", lb.port, "GET", "/", headers)


def backends_answering(lb: BalancerProcess, count: int = 6) -> set[str]:
    return {get(lb).header("X-Backend") or "" for _ in range(count)}


def cluster_status(lb: BalancerProcess) -> dict[str, Any]:
    response = api(lb, "GET", "/api/v1/cluster")
    assert response.status == 200, response.body
    status: dict[str, Any] = response.json()
    return status


def seconds_until(condition: Any, timeout: float) -> float:
    start = time.monotonic()
    wait_until(condition, timeout=timeout, every=0.01)
    return time.monotonic() - start


@requires_redis
def test_changes_through_one_admin_api_reach_the_other_instance(
    backends: list[BackendProcess],
    balancer: BalancerFactory,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    first, second, third = backends
    a = start_node(balancer, tmp_path, [first], redis_server.url, "a")
    b = start_node(balancer, tmp_path, [first], redis_server.url, "b")
    new_id = sid(second)

    added = api(a, "POST", "/api/v1/servers", {"host": second.host, "port": second.port})
    assert added.status == 201, added.body
    assert added.json()["id"] == new_id  # ids come from pool and address: the same on B
    took = seconds_until(lambda: new_id in servers_by_id(b), PROPAGATION_LIMIT)
    print(f"add propagated in {took * 1000:.0f} ms")
    assert backends_answering(b) == {first.name, second.name}

    patched = api(a, "PATCH", f"/api/v1/servers/{new_id}", {"weight": 4, "state": "maint"})
    assert patched.status == 200, patched.body
    seconds_until(
        lambda: (
            servers_by_id(b)[new_id]["weight"] == 4
            and servers_by_id(b)[new_id]["status"] == "maint"
        ),
        PROPAGATION_LIMIT,
    )
    assert backends_answering(b) == {first.name}

    # Either side may change anything: B brings it back, A follows.
    assert api(b, "PATCH", f"/api/v1/servers/{new_id}", {"state": "ready"}).status == 200
    seconds_until(lambda: servers_by_id(a)[new_id]["status"] == "healthy", PROPAGATION_LIMIT)
    assert backends_answering(a) == {first.name, second.name}

    # A server of the file itself, deleted through B.
    assert api(b, "DELETE", f"/api/v1/servers/{sid(first)}").status == 204
    seconds_until(lambda: sid(first) not in servers_by_id(a), PROPAGATION_LIMIT + 5)
    assert backends_answering(a) == {second.name}
    assert set(servers_by_id(a)) == set(servers_by_id(b)) == {new_id}

    # Pools too.
    pool = {"name": "extra", "servers": [{"address": third.address}]}
    assert api(a, "POST", "/api/v1/pools", pool).status == 201
    seconds_until(lambda: api(b, "GET", "/api/v1/pools/extra").status == 200, PROPAGATION_LIMIT)
    assert sid(third, "extra") in servers_by_id(b)
    assert api(b, "DELETE", "/api/v1/pools/extra").status == 204
    seconds_until(lambda: api(a, "GET", "/api/v1/pools/extra").status == 404, PROPAGATION_LIMIT)

    # Peers are known from their heartbeats (every second).
    wait_until(lambda: cluster_status(a)["peers"] == ["b"], timeout=5)
    status = cluster_status(a)
    assert (status["redis"], status["node_id"]) == ("up", "a")
    assert status["version"] == cluster_status(b)["version"] == 6
    metrics = http_request(*a.admin, "GET", "/metrics").body.decode()
    assert "maitred_cluster_redis_up 1.0" in metrics
    # Each instance still keeps the changes in its own state file (starts without Redis).
    for node in ("a", "b"):
        saved = (tmp_path / f"state-{node}" / "runtime.json").read_text()
        assert second.address in saved and first.address in saved


@requires_redis
def test_an_instance_started_later_catches_up_before_it_serves(
    backends: list[BackendProcess],
    balancer: BalancerFactory,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    first, second, third = backends
    a = start_node(balancer, tmp_path, [first], redis_server.url, "a")
    assert (
        api(a, "POST", "/api/v1/servers", {"host": second.host, "port": second.port}).status == 201
    )
    assert api(a, "POST", "/api/v1/servers", {"host": third.host, "port": third.port}).status == 201
    assert api(a, "PATCH", f"/api/v1/servers/{sid(third)}", {"weight": 9}).status == 200
    assert api(a, "PATCH", f"/api/v1/servers/{sid(first)}", {"state": "drain"}).status == 200

    late = start_node(balancer, tmp_path, [first], redis_server.url, "late")
    # No waiting: "maitred ready" comes after the first sync.
    servers = servers_by_id(late)
    assert set(servers) == {sid(first), sid(second), sid(third)}
    assert servers[sid(third)]["weight"] == 9
    assert servers[sid(first)]["status"] == "draining"
    assert backends_answering(late) == {second.name, third.name}


STICKY = "    sticky: {mode: cookie, secret: shared-secret-of-the-cluster}\n"


@requires_redis
def test_a_sticky_cookie_from_one_instance_is_honoured_by_the_other(
    backends: list[BackendProcess],
    balancer: BalancerFactory,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    a = start_node(balancer, tmp_path, backends, redis_server.url, "a", pool_extra=STICKY)
    b = start_node(balancer, tmp_path, backends, redis_server.url, "b", pool_extra=STICKY)
    sessions = {}
    for _ in range(3):  # round robin on A: one session per backend
        response = get(a)
        (set_cookie,) = response.header_values("Set-Cookie")
        sessions[response.header("X-Backend")] = set_cookie.split(";")[0]
    assert set(sessions) == {backend.name for backend in backends}
    for backend_name, cookie in sessions.items():
        answers = [get(b, cookie) for _ in range(4)]
        assert {answer.header("X-Backend") for answer in answers} == {backend_name}
        assert all(not answer.header_values("Set-Cookie") for answer in answers)


@requires_redis
def test_one_rate_limit_covers_both_instances(
    backends: list[BackendProcess],
    balancer: BalancerFactory,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    limit = "    rate_limit: {rate: 5, per: 1m, burst: 5}"
    store = f"rate_limit_store: {{redis: {redis_server.url}}}"
    options = {"listener_extra": limit, "top_extra": store}
    a = start_node(balancer, tmp_path, backends, redis_server.url, "a", **options)
    b = start_node(balancer, tmp_path, backends, redis_server.url, "b", **options)
    for lb in (a, b):
        lb.log.wait_for("rate limit store: redis at")
    statuses = [get(lb).status for lb in (a, b, a, b, a, b)]
    assert statuses == [200, 200, 200, 200, 200, 429]
    assert get(a).status == 429


@requires_redis
def test_an_instance_started_while_redis_is_down_serves_then_syncs(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    first, second, _ = backends
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    b = start_node(balancer, tmp_path, [first], url, "b")
    b.log.wait_for("cluster: Redis at redis://127.0.0.1:\\d+/0 unreachable")
    assert get(b).status == 200
    assert cluster_status(b)["redis"] == "down"
    # Changed while Redis is away: kept, and published once it is back.
    assert api(b, "PATCH", f"/api/v1/servers/{sid(first)}", {"weight": 3}).status == 200
    assert cluster_status(b)["pending_changes"] == 1

    workdir = tmp_path / "redis-late"
    workdir.mkdir()
    redis_server = RedisServer(workdir, port)
    try:
        a = start_node(balancer, tmp_path, [first], url, "a")
        added = api(a, "POST", "/api/v1/servers", {"host": second.host, "port": second.port})
        assert added.status == 201
        # B retries with a growing delay (at most 5 s between attempts).
        wait_until(lambda: sid(second) in servers_by_id(b), timeout=15)
        wait_until(lambda: servers_by_id(a)[sid(first)]["weight"] == 3, timeout=5)
        assert cluster_status(b)["redis"] == "up"
        assert cluster_status(b)["pending_changes"] == 0
        b.log.wait_for("reachable again; resynced")
        assert backends_answering(b) == {first.name, second.name}
    finally:
        redis_server.kill()


@requires_redis
def test_redis_restarting_empty_is_reseeded_and_outage_changes_reach_the_others(
    backends: list[BackendProcess],
    balancer: BalancerFactory,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    first, second, third = backends
    a = start_node(balancer, tmp_path, [first], redis_server.url, "a")
    b = start_node(balancer, tmp_path, [first], redis_server.url, "b")
    assert (
        api(a, "POST", "/api/v1/servers", {"host": second.host, "port": second.port}).status == 201
    )
    wait_until(lambda: sid(second) in servers_by_id(b), timeout=PROPAGATION_LIMIT)

    redis_server.kill()
    wait_until(lambda: cluster_status(a)["redis"] == "down", timeout=10)
    # While Redis is away both keep serving, and A takes a change.
    assert backends_answering(b) == {first.name, second.name}
    assert api(a, "POST", "/api/v1/servers", {"host": third.host, "port": third.port}).status == 201

    redis_server.start()  # empty: no persistence
    wait_until(lambda: sid(third) in servers_by_id(b), timeout=15)
    assert set(servers_by_id(a)) == set(servers_by_id(b)) == {sid(first), sid(second), sid(third)}
    client = redis_server.client()
    assert int(client.get("maitred:cluster:version") or 0) >= 1
    assert len(client.hgetall("maitred:cluster:state")) == 2


@requires_redis
def test_worker_processes_follow_a_change_received_from_the_cluster(
    backends: list[BackendProcess],
    balancer: BalancerFactory,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    first, second, _ = backends
    a = start_node(balancer, tmp_path, [first], redis_server.url, "a")
    b = start_node(balancer, tmp_path, [first], redis_server.url, "b", top_extra="workers: 2")
    assert (
        api(a, "POST", "/api/v1/servers", {"host": second.host, "port": second.port}).status == 201
    )
    wait_until(lambda: backends_answering(b) == {first.name, second.name}, timeout=5)
    assert api(a, "PATCH", f"/api/v1/servers/{sid(second)}", {"state": "maint"}).status == 200
    wait_until(lambda: backends_answering(b, 10) == {first.name}, timeout=5)
