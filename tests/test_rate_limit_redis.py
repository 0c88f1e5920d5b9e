"""The Redis store: its script on a real redis-server, and maitred processes sharing one.

Each test starts its own redis-server (tests/support/redis_server.py) on a free
port in a temp dir; without the binary the tests are skipped.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

pytest.importorskip("redis", reason="redis-py not installed (pip install 'redis[hiredis]')")

# After the skip: these need redis-py.
from maitred.config.model import RateLimitStore  # noqa: E402
from maitred.policies import rate_limit_redis  # noqa: E402
from maitred.policies.rate_limit_redis import GCRA_SCRIPT, RedisStore, Reply, redacted  # noqa: E402
from tests.support.backends import BackendProcess, Response, build_request, read_response  # noqa: E402
from tests.support.balancer import BalancerFactory, BalancerProcess  # noqa: E402
from tests.support.redis_server import (  # noqa: E402
    RedisServer,
    free_port,
    requires_redis,
    running_redis,
)

pytestmark = requires_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis") as server:
        yield server


# -- the store and its script ----------------------------------------------------------


def check_all(store_url: str, checks: list[tuple[list[bytes], list[int]]]) -> list[Reply]:
    """Submit ``checks`` in one event-loop iteration; their replies, in order."""

    async def go() -> list[Reply]:
        store = RedisStore(RateLimitStore(redis=store_url), asyncio.get_running_loop())
        replies: list[Reply] = [None] * len(checks)
        done = asyncio.Event()
        left = len(checks)

        def waiter(index: int, reply: Reply) -> None:
            nonlocal left
            replies[index] = reply
            left -= 1
            if not left:
                done.set()

        for index, (keys, args) in enumerate(checks):
            store.submit(keys, args, partial(waiter, index))
        await done.wait()
        await store.close()
        return replies

    return asyncio.run(go())


SECOND = 1_000_000  # µs


def test_the_script_admits_the_burst_then_refuses_with_retry_after(
    redis_server: RedisServer,
) -> None:
    # 3 per 3 s: interval 1 s, burst 3.
    replies = check_all(redis_server.url, [([b"t:a"], [SECOND, 3])] * 4)
    assert [reply[:2] for reply in replies if reply] == [[1, 2], [1, 1], [1, 0], [0, 0]]
    refused = replies[3]
    assert refused is not None
    assert 0.9 * SECOND < refused[2] <= SECOND  # retry after one interval
    assert 2.9 * SECOND < refused[3] <= 3 * SECOND  # whole again after the capacity
    ttl = redis_server.client().pttl("t:a")
    assert 2900 < ttl <= 3000  # the key expires when it would be fresh anyway


def test_a_request_refused_by_one_limit_is_not_counted_by_the_other(
    redis_server: RedisServer,
) -> None:
    both = ([b"t:wide", b"t:narrow"], [SECOND, 10, SECOND, 1])
    replies = check_all(redis_server.url, [both, both])
    assert replies[0] is not None and replies[0][0] == 1
    assert replies[1] is not None and replies[1][0] == 0
    assert replies[1][1] == 8  # the wide limit would have admitted it...
    alone = check_all(redis_server.url, [([b"t:wide"], [SECOND, 10])])[0]
    assert alone is not None and alone[:2] == [1, 8]  # ...but only counted the first


def test_checks_of_one_loop_iteration_travel_as_one_pipeline(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipelines: list[int] = []
    original = RedisStore._pipeline

    async def counting(self: RedisStore, batch: list[rate_limit_redis._Check]) -> list[object]:
        pipelines.append(len(batch))
        return await original(self, batch)

    monkeypatch.setattr(RedisStore, "_pipeline", counting)
    redis_server.client().script_load(GCRA_SCRIPT)  # else the first pipeline meets NOSCRIPT
    replies = check_all(redis_server.url, [([b"t:%d" % i], [SECOND, 1]) for i in range(200)])
    assert all(reply is not None and reply[0] == 1 for reply in replies)
    assert pipelines == [200]


def test_the_script_is_loaded_again_after_redis_forgot_it(redis_server: RedisServer) -> None:
    assert check_all(redis_server.url, [([b"t:a"], [SECOND, 5])])[0] is not None
    redis_server.client().script_flush()
    replies = check_all(redis_server.url, [([b"t:a"], [SECOND, 5])] * 2)
    assert [reply[:2] for reply in replies if reply] == [[1, 3], [1, 2]]
    assert redis_server.client().script_exists(rate_limit_redis.GCRA_SHA) == [True]


def test_an_unreachable_redis_answers_none_and_is_probed_until_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rate_limit_redis, "PROBE_INTERVAL", 0.05)
    port = free_port()
    workdir = tmp_path / "later"
    workdir.mkdir()

    async def go() -> None:
        loop = asyncio.get_running_loop()
        store = RedisStore(RateLimitStore(redis=f"redis://127.0.0.1:{port}/0"), loop)
        answered: asyncio.Future[Reply] = loop.create_future()
        store.submit([b"t:a"], [SECOND, 1], answered.set_result)
        assert await answered is None
        assert not store.available
        server = await asyncio.to_thread(RedisServer, workdir, port)
        try:
            while not store.available:  # the probe runs every PROBE_INTERVAL
                await asyncio.sleep(0.01)
            again: asyncio.Future[Reply] = loop.create_future()
            store.submit([b"t:a"], [SECOND, 1], again.set_result)
            assert await again == [1, 0, 0, SECOND]
        finally:
            await store.close()
            server.kill()

    asyncio.run(go())


def test_the_script_is_the_one_redis_runs() -> None:
    assert "redis.call('TIME')" in GCRA_SCRIPT  # Redis's clock, shared by every instance
    assert redacted("redis://user:secret@host:1/0") == "redis://user:***@host:1/0"
    assert redacted("redis://host:1/0") == "redis://host:1/0"


# -- maitred processes -----------------------------------------------------------------


def shared_config(
    backends: list[BackendProcess], url: str, rate_limit: str, on_failure: str = "local"
) -> str:
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends)
    return f"""
rate_limit_store: {{redis: "{url}", on_store_failure: {on_failure}, timeout: 200ms}}
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
    rate_limit: {rate_limit}
pools:
  web:
    servers:
{servers}
"""


def get(lb: BalancerProcess) -> Response:
    with socket.create_connection(("127.0.0.1", lb.port), timeout=10) as sock:
        sock.sendall(build_request("GET", "/", {"Connection": "close"}))
        return read_response(sock)


def test_two_instances_sharing_redis_enforce_one_limit(
    backends: list[BackendProcess], balancer: BalancerFactory, redis_server: RedisServer
) -> None:
    text = shared_config(backends, redis_server.url, "{rate: 4, per: 1m}")
    first, second = balancer(text), balancer(text)
    first.log.wait_for("rate limit store: redis at")
    answers = [get(first), get(first), get(second), get(second)]
    assert [a.status for a in answers] == [200] * 4
    assert [a.header("RateLimit") for a in answers] == [
        f'"listener";r={left};t={15 * (4 - left)}' for left in (3, 2, 1, 0)
    ]
    refused = [get(first), get(second)]
    assert [a.status for a in refused] == [429, 429]
    assert refused[0].header("Retry-After") == "15"
    assert len(redis_server.client().keys("maitred:rl:*")) == 1


def test_redis_killed_mid_run_falls_back_to_local_and_recovers(
    backends: list[BackendProcess], balancer: BalancerFactory, redis_server: RedisServer
) -> None:
    lb = balancer(shared_config(backends, redis_server.url, "{rate: 3, per: 1m}"))
    assert [get(lb).status for _ in range(2)] == [200, 200]

    redis_server.kill()
    start = len(lb.log.lines)
    # The in-process limiter decides now; it never saw the first two requests.
    assert [get(lb).status for _ in range(4)] == [200, 200, 200, 429]
    lb.log.wait_for(r"rate limit store redis://127\.0\.0\.1:\d+/0 unreachable", start=start)

    redis_server.start()  # empty: the shared counts start over
    lb.log.wait_for("rate limit store .* reachable again", start=start)
    # The local limiter is exhausted, so admitting again proves Redis decides.
    assert [get(lb).status for _ in range(4)] == [200, 200, 200, 429]


def test_a_redis_that_does_not_answer_in_time_falls_back_within_the_timeout(
    backends: list[BackendProcess], balancer: BalancerFactory, redis_server: RedisServer
) -> None:
    lb = balancer(shared_config(backends, redis_server.url, "{rate: 2, per: 1m}"))
    assert get(lb).status == 200
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        answers = [get(lb) for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 429]
        lb.log.wait_for("unreachable")
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    lb.log.wait_for("reachable again")


@pytest.mark.parametrize(("on_failure", "expected"), [("allow", [200] * 4), ("deny", [503] * 4)])
def test_on_store_failure_allow_or_deny(
    backends: list[BackendProcess],
    balancer: BalancerFactory,
    on_failure: str,
    expected: list[int],
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    lb = balancer(shared_config(backends, nowhere, "{rate: 1, per: 1m}", on_failure))
    answers = [get(lb) for _ in range(4)]
    assert [a.status for a in answers] == expected
    if on_failure == "deny":
        assert answers[0].header("Retry-After") == "1"
    lb.log.wait_for(f"unreachable .*deciding with: {on_failure}")
