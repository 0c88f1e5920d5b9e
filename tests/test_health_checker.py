"""The active checker and its probes against real backend processes and real sockets.

Intervals are 100-300 ms so the file runs in seconds. Tests wait on the
monitor's transitions and the checker's results (an asyncio.Event woken by
each), never on sleeps; every wait has a guard timeout so a broken checker
fails the test instead of hanging it. Timing bounds are measured on the event
loop's monotonic clock.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from maitred.health.checker import ActiveChecker, CheckTarget
from maitred.health.monitor import HealthMonitor
from maitred.health.probe import USER_AGENT, probe
from maitred.health.spec import CheckSpec, parse_expect_status
from maitred.health.state import HealthState
from tests.support.backends import BackendProcess

HEALTHY = HealthState.HEALTHY
FAILING = HealthState.FAILING
UNHEALTHY = HealthState.UNHEALTHY
RECOVERING = HealthState.RECOVERING

GUARD = 10.0  # no wait in this file should come near this
SLACK = 0.4  # scheduling, process and thread-hop latency on a busy test machine

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


@pytest.fixture(scope="module")
def shared_backend() -> Iterator[BackendProcess]:
    """A backend whose health nobody changes."""
    with BackendProcess("shared") as process:
        yield process


@pytest.fixture
def backend() -> Iterator[BackendProcess]:
    """A backend of this test alone, free to fail, freeze or die."""
    process = BackendProcess("fresh")
    try:
        yield process
    finally:
        if process.paused:
            process.resume()
        process.kill()


def _target(backend: BackendProcess, spec: CheckSpec, server_id: str = "web-b") -> CheckTarget:
    return CheckTarget(server_id, backend.host, backend.port, spec)


@dataclass
class Result:
    time: float
    server_id: str
    ok: bool
    detail: str


@dataclass
class Change:
    time: float
    server_id: str
    old: HealthState
    new: HealthState
    #: How many results had been reported when the transition happened.
    results_so_far: int


@dataclass
class Harness:
    """A checker feeding a monitor, recording everything with loop timestamps."""

    monitor: HealthMonitor = field(default_factory=HealthMonitor)
    results: list[Result] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self.checker = ActiveChecker(
            self._on_result, wants_fast_checks=self.monitor.needs_fast_checks
        )
        self.monitor.on_transition.append(self._on_transition)

    def start(self, *targets: CheckTarget) -> None:
        self.monitor.set_targets(targets)
        self.checker.set_targets(targets)

    def _on_result(self, server_id: str, ok: bool, detail: str) -> None:
        self.results.append(Result(self.loop.time(), server_id, ok, detail))
        self.monitor.record(server_id, ok, detail)
        self._changed.set()

    def _on_transition(self, server_id: str, old: HealthState, new: HealthState) -> None:
        self.changes.append(Change(self.loop.time(), server_id, old, new, len(self.results)))
        self._changed.set()

    async def wait_until(self, condition: Callable[[], bool], timeout: float = GUARD) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def reaches(self, server_id: str, state: HealthState, after: float = 0.0) -> Change:
        """The first transition of ``server_id`` into ``state`` at or after ``after``."""

        def found() -> Change | None:
            for change in self.changes:
                if change.server_id == server_id and change.new is state and change.time >= after:
                    return change
            return None

        await self.wait_until(lambda: found() is not None)
        change = found()
        assert change is not None
        return change

    async def results_for(self, server_id: str, count: int, after: float = 0.0) -> list[Result]:
        def matching() -> list[Result]:
            return [r for r in self.results if r.server_id == server_id and r.time >= after]

        await self.wait_until(lambda: len(matching()) >= count)
        return matching()[:count]

    def states_of(self, server_id: str) -> list[HealthState]:
        return [change.new for change in self.changes if change.server_id == server_id]


def with_harness(test: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        harness = Harness()
        try:
            await test(harness)
        finally:
            await harness.checker.close()

    asyncio.run(main())


# -- the checker with the monitor, against real backends ------------------------------


def test_failing_health_leaves_rotation_and_returns_within_the_thresholds(
    backend: BackendProcess,
) -> None:
    spec = CheckSpec(interval=0.2, timeout=1.0, healthy_threshold=2, unhealthy_threshold=3)

    async def scenario(h: Harness) -> None:
        h.start(_target(backend, spec))
        passed = await h.results_for("web-b", 2)
        assert all(r.ok and r.detail == "status 200" for r in passed)
        assert h.changes == []

        failing_since = h.loop.time()
        await asyncio.to_thread(backend.set_health, False)
        down = await h.reaches("web-b", UNHEALTHY)
        assert down.time - failing_since <= spec.interval * spec.unhealthy_threshold + SLACK
        assert h.states_of("web-b") == [FAILING, UNHEALTHY]
        assert not h.monitor.in_rotation("web-b")
        assert h.monitor.last_detail("web-b") == "status 503"

        healthy_since = h.loop.time()
        await asyncio.to_thread(backend.set_health, True)
        up = await h.reaches("web-b", HEALTHY)
        assert up.time - healthy_since <= spec.interval * spec.healthy_threshold + SLACK
        assert h.states_of("web-b") == [FAILING, UNHEALTHY, RECOVERING, HEALTHY]
        # Exactly healthy_threshold passes after the last failure brought it back.
        before_up = h.results[: up.results_so_far]
        last_failure = max(i for i, r in enumerate(before_up) if not r.ok)
        assert [r.ok for r in before_up[last_failure + 1 :]] == [True] * spec.healthy_threshold
        assert h.monitor.in_rotation("web-b")

    with_harness(scenario)


def test_tcp_check_detects_a_killed_server(backend: BackendProcess) -> None:
    spec = CheckSpec(type="tcp", interval=0.2, timeout=1.0, unhealthy_threshold=2)

    async def scenario(h: Harness) -> None:
        h.start(_target(backend, spec))
        first = await h.results_for("web-b", 1)
        assert (first[0].ok, first[0].detail) == (True, "connected")

        killed_at = h.loop.time()
        await asyncio.to_thread(backend.kill)
        down = await h.reaches("web-b", UNHEALTHY)
        assert down.time - killed_at <= spec.interval * spec.unhealthy_threshold + SLACK
        assert h.monitor.last_detail("web-b") == "connect refused"

    with_harness(scenario)


def test_a_frozen_server_is_caught_by_the_timeout_and_readmitted_when_it_thaws(
    backend: BackendProcess,
) -> None:
    spec = CheckSpec(interval=0.2, timeout=0.3, healthy_threshold=1, unhealthy_threshold=2)

    async def scenario(h: Harness) -> None:
        h.start(_target(backend, spec))
        await h.results_for("web-b", 1)

        frozen_at = h.loop.time()
        backend.pause()
        down = await h.reaches("web-b", UNHEALTHY)
        # A check already in flight, then each failing check costs its timeout.
        worst = spec.interval * 1.1 + 2 * (spec.timeout + spec.fast_interval) + SLACK
        assert down.time - frozen_at <= worst
        assert down.time - frozen_at < 5.0  # the failover target
        assert h.monitor.last_detail("web-b") == "no answer within 0.3s"

        thawed_at = h.loop.time()
        backend.resume()
        await h.reaches("web-b", HEALTHY, after=thawed_at)

    with_harness(scenario)


def test_checks_run_faster_while_a_server_is_not_healthy(
    shared_backend: BackendProcess, backend: BackendProcess
) -> None:
    # fast_interval = 0.3 / 3 = 0.1; a high threshold keeps the sick one "failing".
    spec = CheckSpec(interval=0.3, timeout=1.0, unhealthy_threshold=100)
    backend.set_health(False)

    async def scenario(h: Harness) -> None:
        h.start(_target(shared_backend, spec, "well"), _target(backend, spec, "sick"))
        well = await h.results_for("well", 5)
        sick = await h.results_for("sick", 5)
        assert all(r.ok for r in well) and not any(r.ok for r in sick)
        assert h.monitor.state("sick") is FAILING
        well_gaps = [b.time - a.time for a, b in zip(well, well[1:], strict=False)]
        sick_gaps = [b.time - a.time for a, b in zip(sick, sick[1:], strict=False)]
        assert min(well_gaps) >= spec.interval * 0.9 - 0.01
        assert max(sick_gaps) < spec.interval * 0.6

    with_harness(scenario)


def test_a_server_that_starts_unhealthy_is_admitted_after_its_checks_pass(
    shared_backend: BackendProcess,
) -> None:
    spec = CheckSpec(interval=0.3, healthy_threshold=2, initial_state=UNHEALTHY)

    async def scenario(h: Harness) -> None:
        h.start(_target(shared_backend, spec))
        assert not h.monitor.in_rotation("web-b")
        started = h.loop.time()
        up = await h.reaches("web-b", HEALTHY)
        assert h.states_of("web-b") == [RECOVERING, HEALTHY]
        # Checked at the fast pace from the start: two passes well within two intervals.
        assert up.time - started <= 2 * spec.fast_interval * 1.1 + SLACK

    with_harness(scenario)


# -- target management -------------------------------------------------------------------


def _check_tasks() -> dict[str, asyncio.Task[Any]]:
    """The running check tasks by name; a cancelled one may take a moment to finish,
    so tasks being cancelled do not count."""
    return {
        task.get_name(): task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("health-check ") and not task.done() and not task.cancelling()
    }


def test_set_targets_is_idempotent_and_follows_additions_removals_and_changes(
    shared_backend: BackendProcess,
) -> None:
    spec = CheckSpec(interval=0.1, timeout=1.0)
    a = _target(shared_backend, spec, "a")
    b = _target(shared_backend, spec, "b")

    async def scenario(h: Harness) -> None:
        h.start(a, b)
        tasks = _check_tasks()
        assert set(tasks) == {"health-check a", "health-check b"}
        for _ in range(5):
            h.checker.set_targets([b, a])  # same targets, any order: nothing restarts
        assert _check_tasks() == tasks
        assert h.checker.running() == {"a", "b"}
        await h.results_for("a", 1)
        await h.results_for("b", 1)

        # Removing b stops its task; a keeps being checked and b never reports again.
        h.checker.set_targets([a])
        await asyncio.wait([tasks["health-check b"]], timeout=GUARD)
        assert tasks["health-check b"].cancelled()
        removed_at = h.loop.time()
        await h.results_for("a", 3, after=removed_at)
        assert not [r for r in h.results if r.server_id == "b" and r.time > removed_at]
        assert _check_tasks() == {"health-check a": tasks["health-check a"]}

        # A changed spec restarts that server's task with the new settings.
        changed = _target(shared_backend, CheckSpec(interval=0.1, path="/status?code=500"), "a")
        h.checker.set_targets([changed])
        restarted = _check_tasks()["health-check a"]
        assert restarted is not tasks["health-check a"]
        changed_at = h.loop.time()
        result = (await h.results_for("a", 1, after=changed_at))[0]
        assert (result.ok, result.detail) == (False, "status 500")
        assert h.checker.targets == {"a": changed}

        with pytest.raises(ValueError, match="given twice"):
            h.checker.set_targets([a, a])

    with_harness(scenario)


def test_close_stops_every_check(shared_backend: BackendProcess) -> None:
    async def scenario() -> None:
        reported: list[str] = []
        checker = ActiveChecker(lambda server_id, ok, detail: reported.append(server_id))
        spec = CheckSpec(interval=0.1)
        checker.set_targets([_target(shared_backend, spec, f"s{i}") for i in range(5)])
        tasks = _check_tasks()
        assert len(tasks) == 5
        await checker.close()
        assert all(task.done() for task in tasks.values())
        assert checker.running() == set()
        assert _check_tasks() == {}
        with pytest.raises(RuntimeError, match="closed"):
            checker.set_targets([])

    run(scenario())


def test_a_raising_result_handler_does_not_stop_the_checks(shared_backend: BackendProcess) -> None:
    async def scenario() -> None:
        calls: list[bool] = []
        enough = asyncio.Event()

        def handler(server_id: str, ok: bool, detail: str) -> None:
            calls.append(ok)
            if len(calls) >= 3:
                enough.set()
            raise RuntimeError("handler bug")

        checker = ActiveChecker(handler)
        checker.set_targets([_target(shared_backend, CheckSpec(interval=0.1))])
        try:
            await asyncio.wait_for(enough.wait(), GUARD)
        finally:
            await checker.close()
        assert calls[:3] == [True, True, True]

    run(scenario())


# -- single probes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expect", "ok"),
    [
        (200, None, True),
        (204, None, True),
        (302, None, True),
        (404, None, False),
        (503, None, False),
        (204, [200], False),
        (204, ["2xx"], True),
        (418, ["200-299", 418], True),
        (500, ["200-299", "400-499"], False),
    ],
)
def test_expect_status(
    shared_backend: BackendProcess, status: int, expect: list[object] | None, ok: bool
) -> None:
    spec = CheckSpec(path=f"/status?code={status}")
    if expect is not None:
        spec = CheckSpec(path=spec.path, expect_status=parse_expect_status(expect))
    result = run(probe(shared_backend.host, shared_backend.port, spec))
    assert result == (ok, f"status {status}")


def test_each_probe_opens_its_own_connection(backend: BackendProcess) -> None:
    before = backend.stats()

    async def three_probes() -> None:
        for _ in range(3):
            assert (await probe(backend.host, backend.port, CheckSpec())).ok

    run(three_probes())
    after = backend.stats()
    # +1 connection and +1 request for the /stats call itself.
    assert after["connections_accepted"] - before["connections_accepted"] == 4
    assert after["requests"] - before["requests"] == 4


@pytest.mark.parametrize(
    ("path", "detail"),
    [("/close", "closed without answer"), ("/reset", "connection lost: ")],
)
def test_a_connection_dropped_without_answer_fails(
    shared_backend: BackendProcess, path: str, detail: str
) -> None:
    result = run(probe(shared_backend.host, shared_backend.port, CheckSpec(path=path)))
    assert not result.ok
    assert result.detail.startswith(detail)


@pytest.mark.parametrize("check_type", ["http", "tcp"])
def test_a_closed_port_is_refused(check_type: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connects are refused
        result = run(probe("127.0.0.1", port, CheckSpec(type=check_type)))  # type: ignore[arg-type]
    assert result == (False, "connect refused")


def test_tcp_check_sends_nothing(backend: BackendProcess) -> None:
    before = backend.stats()
    result = run(probe(backend.host, backend.port, CheckSpec(type="tcp")))
    assert result == (True, "connected")
    after = backend.stats()
    assert after["connections_accepted"] - before["connections_accepted"] == 2
    assert after["requests"] - before["requests"] == 1  # the /stats call only


class _RawServer:
    """A one-shot server on 127.0.0.1 that records the request head and sends ``answer``."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []

    async def __aenter__(self) -> _RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(self.answer)
        await writer.drain()
        writer.close()


def test_request_head_carries_path_host_and_connection_close() -> None:
    async def scenario() -> list[bytes]:
        async with _RawServer(b"HTTP/1.1 204 No Content\r\n\r\n") as server:
            default = await probe("127.0.0.1", server.port, CheckSpec(path="/ready?deep=1"))
            named = await probe("127.0.0.1", server.port, CheckSpec(host="api.example.com"))
            assert default == (True, "status 204")
            assert named == (True, "status 204")
            return [server.requests[0], server.requests[1]]

    default, named = run(scenario())
    lines = default.decode().split("\r\n")
    assert lines[0] == "GET /ready?deep=1 HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:] if line)
    assert headers["Host"].startswith("127.0.0.1:")
    assert headers["Connection"] == "close"
    assert headers["User-Agent"] == USER_AGENT
    assert b"\r\nHost: api.example.com\r\n" in named


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (b"garbage\r\n", "malformed answer (no HTTP status line)"),
        (b"HTTP/1.1 2000 Huh\r\n", "malformed answer (no HTTP status line)"),
        (b"x" * 20_000, "malformed answer (status line too long)"),
        (b"", "closed without answer"),
        (b"HTTP/1.0 200 OK\r\n\r\n", "status 200"),
    ],
)
def test_odd_answers(answer: bytes, detail: str) -> None:
    async def scenario() -> tuple[bool, str]:
        async with _RawServer(answer) as server:
            return await probe("127.0.0.1", server.port, CheckSpec())

    ok, got = run(scenario())
    assert got == detail
    assert ok == (detail == "status 200")


def test_a_frozen_server_passes_a_tcp_check_but_fails_an_http_one(
    backend: BackendProcess,
) -> None:
    # Why black holes need http checks: the kernel still completes the handshake.
    backend.pause()

    async def both() -> tuple[tuple[bool, str], tuple[bool, str]]:
        tcp = await probe(backend.host, backend.port, CheckSpec(type="tcp", timeout=0.3))
        http = await probe(backend.host, backend.port, CheckSpec(timeout=0.3))
        return tcp, http

    tcp, http = run(both())
    assert tcp == (True, "connected")
    assert http == (False, "no answer within 0.3s")
