"""Decisions shared by worker processes: rate limits, least connections, listener metrics.

The shared-memory parts are tested on their own (including from several real
processes at once), then through a real maitred with ``workers: 2``.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

import pytest

from maitred.balancing import Balancer, LiveServer
from maitred.control.active_counts import SlotAssigner, WorkerActiveCounts, region_bytes
from maitred.control.shared_memory import RegionAddress, SharedRegion
from maitred.policies.gcra import NANOSECONDS, GcraRate
from maitred.policies.rate_limit_shared import (
    SLOTS_PER_BUCKET,
    SharedLimit,
    SharedRateTable,
    table_bytes,
)
from tests.support.admin import eventually, metric, servers_by_id
from tests.support.backends import (
    BackendProcess,
    build_request,
    connect,
    read_response,
)
from tests.support.balancer import BalancerFactory, BalancerProcess

SECOND = NANOSECONDS
#: Burst 3, then one request per hour: nothing refills during a test.
SLOW = GcraRate.of(1, 3600.0, 3)


# -- the shared rate limit table -------------------------------------------------------


@pytest.fixture
def table_region() -> Iterator[Callable[[int], tuple[SharedRegion, SharedRateTable]]]:
    regions: list[SharedRegion] = []
    tables: list[SharedRateTable] = []

    def make(capacity: int) -> tuple[SharedRegion, SharedRateTable]:
        region = SharedRegion.create("test-rate-limits", table_bytes(capacity))
        SharedRateTable.initialize(region.memory, capacity)
        table = SharedRateTable(region.memory, region.fd)
        regions.append(region)
        tables.append(table)
        return region, table

    yield make
    for table in tables:
        table.close()
    for region in regions:
        region.close()


def admitted(table: SharedRateTable, limit: SharedLimit, key: bytes, now: int) -> bool:
    return table.decide([limit], [key], lambda: now)[1]


def test_a_key_gets_its_burst_then_its_rate(table_region) -> None:  # type: ignore[no-untyped-def]
    _, table = table_region(1000)
    limit = SharedLimit(GcraRate.of(1, 1.0, 3), b"limit-a")
    now = 1000 * SECOND
    assert [admitted(table, limit, b"k", now) for _ in range(4)] == [True, True, True, False]
    decisions, allowed = table.decide([limit], [b"k"], lambda: now)
    assert not allowed and decisions[0].retry_after == pytest.approx(1.0)
    assert admitted(table, limit, b"k", now + SECOND)
    assert not admitted(table, limit, b"k", now + SECOND)


def test_keys_and_limits_have_their_own_budgets(table_region) -> None:  # type: ignore[no-untyped-def]
    _, table = table_region(1000)
    first, second = SharedLimit(SLOW, b"first"), SharedLimit(SLOW, b"second")
    now = 5 * SECOND
    for _ in range(3):
        assert admitted(table, first, b"alice", now)
    assert not admitted(table, first, b"alice", now)
    assert admitted(table, first, b"bob", now)
    assert admitted(table, second, b"alice", now)


def test_a_request_under_two_limits_counts_only_when_both_admit(table_region) -> None:  # type: ignore[no-untyped-def]
    _, table = table_region(1000)
    tight = SharedLimit(GcraRate.of(1, 3600.0, 1), b"tight")
    loose = SharedLimit(SLOW, b"loose")
    now = 5 * SECOND
    assert table.decide([tight, loose], [b"k", b"k"], lambda: now)[1]
    for _ in range(5):
        decisions, allowed = table.decide([tight, loose], [b"k", b"k"], lambda: now)
        assert not allowed and not decisions[0].allowed and decisions[1].allowed
    # The refusals by ``tight`` were not counted by ``loose``: two of its three are left.
    assert [admitted(table, loose, b"k", now) for _ in range(3)] == [True, True, False]


def test_colliding_keys_share_a_bucket_without_sharing_budgets(table_region) -> None:  # type: ignore[no-untyped-def]
    _, table = table_region(1)  # one bucket: every key collides
    assert table.buckets == 1
    limit = SharedLimit(SLOW, b"limit")
    now = 5 * SECOND
    keys = [b"key-%d" % index for index in range(SLOTS_PER_BUCKET)]
    for key in keys:
        assert admitted(table, limit, key, now)
    for key in keys:
        assert admitted(table, limit, key, now)
        assert admitted(table, limit, key, now)
        assert not admitted(table, limit, key, now)
    assert table.used_slots() == SLOTS_PER_BUCKET


def test_idle_keys_expire_and_make_room(table_region) -> None:  # type: ignore[no-untyped-def]
    _, table = table_region(1)
    limit = SharedLimit(GcraRate.of(1, 1.0, 3), b"limit")
    now = 5 * SECOND
    for index in range(SLOTS_PER_BUCKET):
        assert admitted(table, limit, b"old-%d" % index, now)
    assert table.active_keys(now) == SLOTS_PER_BUCKET
    later = now + 2 * SECOND  # every old key's bucket is full again
    assert table.active_keys(later) == 0
    for index in range(SLOTS_PER_BUCKET):
        assert admitted(table, limit, b"new-%d" % index, later)
    assert table.active_keys(later) == SLOTS_PER_BUCKET
    assert table.used_slots() == SLOTS_PER_BUCKET  # idle slots were reused, none added


def test_a_full_bucket_forgets_the_key_closest_to_idle(table_region) -> None:  # type: ignore[no-untyped-def]
    _, table = table_region(1)
    limit = SharedLimit(SLOW, b"limit")
    now = 5 * SECOND
    assert admitted(table, limit, b"light", now)  # one request: the earliest TAT
    heavy = [b"heavy-%d" % index for index in range(SLOTS_PER_BUCKET - 1)]
    for key in heavy:
        for _ in range(3):
            assert admitted(table, limit, key, now)
    assert admitted(table, limit, b"newcomer", now)  # the bucket was full
    # "light" was forgotten (a fresh burst); the heavy keys were not.
    assert [admitted(table, limit, b"light", now) for _ in range(4)] == [True] * 3 + [False]
    assert not any(admitted(table, limit, key, now) for key in heavy[1:])


HAMMER_RATE = GcraRate.of(500, 1.0, 20)  # one more every 2 ms after a burst of 20
HAMMER_SECONDS = 0.5


def _hammer(address: RegionAddress, ready: Barrier, results: Queue[tuple[int, int, int]]) -> None:
    region = SharedRegion.attach(address)
    table = SharedRateTable(region.memory, region.fd)
    limit = SharedLimit(HAMMER_RATE, b"hammered")
    ready.wait()
    first = time.monotonic_ns()
    deadline = first + int(HAMMER_SECONDS * NANOSECONDS)
    passed = 0
    while time.monotonic_ns() < deadline:
        passed += table.decide([limit], [b"one key"])[1]
    now = time.monotonic_ns()
    table.close()
    region.close()
    results.put((passed, first, now))


def test_concurrent_processes_never_exceed_the_limit(table_region) -> None:  # type: ignore[no-untyped-def]
    region, _ = table_region(1000)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(4)
    results: Queue[tuple[int, int, int]] = context.Queue()
    processes = [
        context.Process(target=_hammer, args=(region.address, ready, results)) for _ in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(10)
    passed = [count for count, _, _ in outcomes]
    began = min(first for _, first, _ in outcomes)
    ended = max(last for _, _, last in outcomes)
    # GCRA's exact bound over the window: the burst, plus one per interval elapsed.
    bound = HAMMER_RATE.burst + (ended - began) // HAMMER_RATE.interval + 1
    assert sum(passed) <= bound, (passed, bound)
    assert sum(passed) >= HAMMER_RATE.burst
    assert sum(1 for count in passed if count) >= 2, passed  # they did contend


# -- active counts in shared memory ------------------------------------------------------


def test_slots_stay_with_their_server_and_free_slots_are_reused_last() -> None:
    slots = SlotAssigner(slots=4)
    assert slots.assign(["a", "b", "c"]) == {"a": 0, "b": 1, "c": 2}
    assert slots.assign(["c", "a"]) == {"a": 0, "c": 2}
    assert slots.assign(["c", "a", "d"]) == {"a": 0, "c": 2, "d": 3}  # unused before freed
    assert slots.assign(["c", "a", "d", "e"])["e"] == 1


def test_least_connections_counts_the_other_workers_requests() -> None:
    rows = 4
    region = SharedRegion.create("test-active", region_bytes(rows, 8))
    view = memoryview(region.memory).cast("q")
    try:
        workers = []
        for row in (0, 1):
            counts = WorkerActiveCounts(view, rows, row)
            counts.slots = {"a": 0, "b": 1}
            servers = [LiveServer("a", "127.0.0.1", 1), LiveServer("b", "127.0.0.1", 2)]
            balancer = Balancer("least_connections", servers)
            for server in servers:
                counts.bind(server)
            balancer.remote_load = counts
            workers.append((balancer, servers, counts))
        (first, first_servers, _), (second, second_servers, counts) = workers
        now = 10.0
        for _ in range(3):
            picked = first.pick("", {}, now)
            assert picked is not None
            picked.active += 1
        # The first worker holds two on one server, one on the other; the second
        # worker, idle itself, sends its next two to the server with one.
        loads = {s.id: s.active for s in first_servers}
        lighter = min(loads, key=lambda sid: loads[sid])
        for step in range(2):
            now += 1.0
            picked = second.pick("", {}, now)
            assert picked is not None
            if step == 0:
                assert picked.id == lighter
            picked.active += 1
        assert sorted(s.load for s in second_servers) == [2, 3]
        # A removed server stops counting.
        counts.unbind(second_servers[0])
        assert view[0 * rows + 1] == 0
    finally:
        view.release()
        region.close()


# -- through a real maitred with two workers ---------------------------------------------


def accepted_by_worker(lb: BalancerProcess) -> dict[str, float]:
    return metric(lb, "maitred_worker_connections_accepted_total")


def wait_for_workers(lb: BalancerProcess, count: int = 2) -> None:
    lb.log.wait_for_count(r"worker \d+ serving", count)


LIMITED = """
workers: 2
admin: {{bind: 127.0.0.1:0}}
listeners:
  - name: by-address
    bind: 127.0.0.1:0
    pool: web
    rate_limit: {{key: client_ip, rate: 1, per: 1h, burst: {burst}}}
  - name: by-header
    bind: 127.0.0.1:0
    pool: web
    rate_limit: {{key: "header:X-Client", rate: 1, per: 1h, burst: {burst}}}
pools:
  web:
    servers:
      - {{address: {backend}}}
"""


def statuses_over_connections(
    port: int, count: int, headers: list[tuple[str, str]] | None = None
) -> tuple[list[int], int]:
    """``count`` requests, each on its own connection, all open at once (so the
    kernel hands them to different workers); their statuses and the bytes sent."""
    request = build_request("GET", "/", headers=headers or [])
    sockets = [connect("127.0.0.1", port) for _ in range(count)]
    try:
        for sock in sockets:
            sock.sendall(request)
        return [read_response(sock).status for sock in sockets], len(request) * count
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def limited(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> Iterator[tuple[BalancerProcess, int]]:
    burst = 7
    lb = balancer(LIMITED.format(burst=burst, backend=backends[0].address))
    wait_for_workers(lb)
    yield lb, burst


def test_a_client_limit_holds_across_workers(limited: tuple[BalancerProcess, int]) -> None:
    lb, burst = limited
    by_address = lb.listeners["by-address"][1]
    statuses: list[int] = []
    accepted: dict[str, float] = {}
    # Waves of simultaneous connections until both workers took some (bounded).
    for _ in range(8):
        wave, _ = statuses_over_connections(by_address, 30)
        statuses += wave
        sent = len(statuses)
        accepted = eventually(
            lambda: accepted_by_worker(lb),
            lambda values, sent=sent: sum(values.values()) >= sent,
        )
        if len(accepted) == 2 and all(count > 0 for count in accepted.values()):
            break
    assert len(accepted) == 2 and all(count > 0 for count in accepted.values()), accepted
    assert statuses.count(200) == burst, statuses
    assert statuses.count(429) == len(statuses) - burst


def test_header_keys_have_their_own_budget_across_workers(
    limited: tuple[BalancerProcess, int],
) -> None:
    lb, burst = limited
    by_header = lb.listeners["by-header"][1]
    for client in ("alice", "bob"):
        statuses, _ = statuses_over_connections(by_header, 40, [("X-Client", client)])
        assert statuses.count(200) == burst, (client, statuses)
        assert statuses.count(429) == 40 - burst


def test_listener_metrics_sum_over_workers(limited: tuple[BalancerProcess, int]) -> None:
    lb, burst = limited
    by_header = lb.listeners["by-header"][1]
    sent_bytes = 0
    refused = 0
    accepted: dict[str, float] = {}
    for wave in range(8):
        statuses, sent = statuses_over_connections(by_header, 30, [("X-Client", f"c{wave}")])
        sent_bytes += sent
        refused += statuses.count(429)
        accepted = eventually(
            lambda: accepted_by_worker(lb),
            lambda values, total=30 * (wave + 1): sum(values.values()) >= total,
        )
        if len(accepted) == 2 and all(count > 0 for count in accepted.values()):
            break
    assert len(accepted) == 2 and all(count > 0 for count in accepted.values()), accepted
    label = '{listener="by-header"}'
    received = eventually(
        lambda: metric(lb, "maitred_listener_received_bytes_total").get(
            "maitred_listener_received_bytes_total" + label, 0
        ),
        lambda value: value >= sent_bytes,
    )
    assert received == sent_bytes
    limited_total = metric(lb, "maitred_listener_rate_limited_requests_total")
    assert limited_total["maitred_listener_rate_limited_requests_total" + label] == refused
    sent_out = metric(lb, "maitred_listener_sent_bytes_total")
    assert sent_out["maitred_listener_sent_bytes_total" + label] > 0
    own = metric(lb, "maitred_listener_balancer_responses_total")
    assert own['maitred_listener_balancer_responses_total{code="4xx",listener="by-header"}'] == (
        refused
    )


LEAST_CONNECTIONS = """
workers: 2
admin: {{bind: 127.0.0.1:0}}
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
    timeouts: {{idle: 1h}}
pools:
  web:
    algorithm: least_connections
    # Longer than the test, however long it runs: a request held past it would be
    # retried on the other server (the held requests must stay where they went).
    timeouts: {{response: 1h}}
    servers:
{servers}
"""


def active_by_server(lb: BalancerProcess) -> dict[str, int]:
    return {sid: int(view["active_connections"]) for sid, view in servers_by_id(lb).items()}


class HeldRequests:
    """Long requests through the balancer, one at a time, each on a new connection,
    with which worker accepted it and which server it went to."""

    def __init__(self, lb: BalancerProcess) -> None:
        self.lb = lb
        self.held: list[tuple[socket.socket, str, str]] = []
        self.accepted = accepted_by_worker(lb)

    def loads(self) -> dict[str, int]:
        return active_by_server(self.lb)

    def own(self, worker: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, took, server in self.held:
            if took == worker:
                counts[server] = counts.get(server, 0) + 1
        return counts

    def add(self) -> tuple[str, str, dict[str, int]]:
        """Hold one more: (worker, server, the loads it was chosen against)."""
        before = self.loads()
        expected = sum(before.values()) + 1
        sock = connect("127.0.0.1", self.lb.port)
        # Held for an hour, like the balancer's response timeout: longer than the
        # test, however many tries it takes.
        sock.sendall(build_request("GET", "/delay?ms=3600000"))
        after = eventually(self.loads, lambda loads: sum(loads.values()) >= expected)
        accepted = eventually(
            lambda: accepted_by_worker(self.lb),
            lambda values: sum(values.values()) > sum(self.accepted.values()),
        )
        took = [w for w in accepted if accepted[w] > self.accepted.get(w, 0)]
        chosen = [sid for sid in after if after[sid] > before.get(sid, 0)]
        assert len(took) == 1 and len(chosen) == 1, (took, before, after)
        self.accepted = accepted
        self.held.append((sock, took[0], chosen[0]))
        return took[0], chosen[0], before

    def release(self, keep: Callable[[str, str], bool]) -> None:
        """Close the held requests ``keep(worker, server)`` refuses; wait until they end."""
        kept = []
        for sock, worker, server in self.held:
            if keep(worker, server):
                kept.append((sock, worker, server))
            else:
                sock.close()
        self.held = kept
        eventually(self.loads, lambda loads: sum(loads.values()) == len(kept))

    def close(self) -> None:
        for sock, _, _ in self.held:
            sock.close()


def keeping(wanted: dict[tuple[str, str], int]) -> Callable[[str, str], bool]:
    """Keep up to ``wanted[(worker, server)]`` held requests of each kind."""
    left = dict(wanted)

    def keep(worker: str, server: str) -> bool:
        count = left.get((worker, server), 0)
        left[(worker, server)] = count - 1
        return count > 0

    return keep


def test_least_connections_counts_every_workers_requests(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends[:2])
    lb = balancer(LEAST_CONNECTIONS.format(servers=servers))
    wait_for_workers(lb)
    requests = HeldRequests(lb)
    try:
        # Every request goes to a server with the fewest requests over both workers,
        # until one worker holds one on a server S and the other two on the other, T.
        setup = None
        for _ in range(60):
            _, server, before = requests.add()
            assert before.get(server, 0) == min(before.values()), (server, before)
            workers = {worker for _, worker, _ in requests.held}
            for w, other in ((a, b) for a in workers for b in workers if a != b):
                mine, theirs = requests.own(w), requests.own(other)
                for s in mine:
                    t = next((t for t in theirs if t != s and theirs[t] >= 2), None)
                    if t is not None:
                        setup = (w, s, other, t)
            if setup is not None:
                break
            # Which worker accepts is the kernel's choice and may favour one for a
            # while: hold at most two per worker and server, and try again.
            requests.release(keeping({(took, on): 2 for _, took, on in requests.held}))
        assert setup is not None, f"both workers never took enough: {requests.held}"
        w, s, other, t = setup
        # Keep w's one request on S and the other worker's two on T: over both
        # workers S is the less loaded, though w alone has nothing on T.
        # Which worker accepts a connection is the kernel's choice (one shared listen
        # queue) and may favour one worker for a while: try until w takes one.
        for _ in range(60):
            requests.release(keeping({(w, s): 1, (other, t): 2}))
            took, server, before = requests.add()
            assert before == {s: 1, t: 2}, before
            assert server == s, (took, server, before)
            if took == w:
                break  # w counted the other worker's requests: it did not go to T
        else:
            pytest.fail(f"worker {w} never took a connection")
    finally:
        requests.close()
