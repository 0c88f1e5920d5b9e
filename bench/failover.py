"""Scenario "failover": requests lost when one of four servers dies or freezes.

For each fault (SIGKILL: the port refuses at once; SIGSTOP: the kernel still
accepts connections but nothing answers) and each proxy, a fresh proxy runs in
front of four fresh demo backends (`python -m maitred.demo.backend`, one
process each, so one can be killed alone). Ten keep-alive client loops send
GET / back to back for RUN_SECONDS; at FAULT_AT_SECONDS one backend gets the
signal. Reported: failed requests (an answer other than 200, a broken
connection or no answer within CLIENT_TIMEOUT_SECONDS), the seconds from the
fault until the last failure ended, and the slowest request.

Settings held equal: active HTTP checks every 1 s with a 500 ms timeout, 2
failures to go down (maitred re-checks a failing server every interval / 3 by
default; HAProxy's `fastinter` is set to the same), connect timeout 1 s and
server response timeout 5 s. HAProxy: `retries 2`, `option redispatch`,
`retry-on all-retryable-errors`. maitred: its defaults (2 retries on another
server, passive ejection after 5 consecutive failures).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvloop

from bench import targets
from bench.processes import Child, Supervisor, free_port, wait_until_serving
from bench.report import Row, format_number
from bench.targets import HAPROXY, MAITRED
from bench.tools import require

if TYPE_CHECKING:
    from bench.scenarios import Bench

BACKEND_COUNT = 4
RUN_SECONDS = 10.0
FAULT_AT_SECONDS = 3.0
CLIENT_LOOPS = 10
CLIENT_TIMEOUT_SECONDS = 30.0
HEALTH_INTERVAL = "1s"
HEALTH_TIMEOUT = "500ms"
UNHEALTHY_THRESHOLD = 2
# maitred's default fall_interval (interval / 3), given to HAProxy as fastinter.
FAST_INTERVAL = "333ms"
CONNECT_TIMEOUT = "1s"
RESPONSE_TIMEOUT = "5s"
EVERY_BACKEND_SEEN_TIMEOUT_SECONDS = 15.0
FAULTS: dict[str, signal.Signals] = {"kill": signal.SIGKILL, "freeze": signal.SIGSTOP}
PROXIES = (MAITRED, HAPROXY)
METRICS = ("failed requests", "s to last failure", "slowest request s")
REQUEST = b"GET / HTTP/1.1\r\nHost: failover\r\n\r\n"


def maitred_config(port: int, backend_ports: list[int]) -> str:
    servers = "\n".join(f"      - {{address: 127.0.0.1:{p}}}" for p in backend_ports)
    return f"""workers: 1
listeners:
  - name: failover
    bind: 127.0.0.1:{port}
    pool: backends
pools:
  backends:
    algorithm: round_robin
    servers:
{servers}
    health_check:
      path: /health
      interval: {HEALTH_INTERVAL}
      timeout: {HEALTH_TIMEOUT}
      unhealthy_threshold: {UNHEALTHY_THRESHOLD}
      healthy_threshold: 2
    timeouts: {{connect: {CONNECT_TIMEOUT}, response: {RESPONSE_TIMEOUT}}}
"""


def haproxy_config(port: int, backend_ports: list[int]) -> str:
    servers = "\n".join(f"    server b{i} 127.0.0.1:{p}" for i, p in enumerate(backend_ports))
    checks = (
        f"check inter {HEALTH_INTERVAL} fastinter {FAST_INTERVAL} fall {UNHEALTHY_THRESHOLD} rise 2"
    )
    return f"""
global
    nbthread 1

defaults
    mode http
    timeout connect {CONNECT_TIMEOUT}
    timeout client 60s
    timeout server {RESPONSE_TIMEOUT}
    timeout check {HEALTH_TIMEOUT}
    option http-keep-alive
    http-reuse always
    retries 2
    option redispatch
    retry-on all-retryable-errors

frontend failover
    bind 127.0.0.1:{port}
    default_backend backends

backend backends
    balance roundrobin
    option httpchk GET /health
    default-server {checks}
{servers}
"""


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    finished: float
    ok: bool


@dataclass(frozen=True)
class RunResult:
    requests: int
    failed: float  # NaN when the run could not happen
    seconds_to_last_failure: float  # NaN when nothing failed
    slowest_seconds: float


def summarize(outcomes: list[Outcome], fault_time: float) -> RunResult:
    failures = [o.finished for o in outcomes if not o.ok]
    last = max(failures) - fault_time if failures else math.nan
    slowest = max((o.finished - o.started for o in outcomes), default=math.nan)
    return RunResult(len(outcomes), len(failures), last, slowest)


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, Content-Length, whether the connection stays open) of an answer head."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    status = int(rest[:3])
    length = 0
    keep_alive = version == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            keep_alive = value != b"close"
    return status, length, keep_alive


async def _client_loop(port: int, stop_at: float, outcomes: list[Outcome]) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < stop_at:
        started = time.monotonic()
        ok = False
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT_SECONDS):
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(REQUEST)
                status, length, keep_alive = parse_head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(length)
                ok = status == 200
                if not keep_alive:
                    writer.close()
                    reader = writer = None
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            if writer is not None:
                writer.close()
            reader = writer = None
        outcomes.append(Outcome(started, time.monotonic(), ok))
    if writer is not None:
        writer.close()


async def drive(port: int, inject: Callable[[], None]) -> tuple[list[Outcome], float]:
    """Steady GETs for RUN_SECONDS, `inject` at FAULT_AT_SECONDS; (outcomes, fault time)."""
    outcomes: list[Outcome] = []
    start = time.monotonic()
    loops = [
        asyncio.create_task(_client_loop(port, start + RUN_SECONDS, outcomes))
        for _ in range(CLIENT_LOOPS)
    ]
    await asyncio.sleep(FAULT_AT_SECONDS)
    fault_time = time.monotonic()
    inject()
    await asyncio.gather(*loops)  # each loop ends after its request in flight at RUN_SECONDS
    return outcomes, fault_time


async def _names_answering(port: int, requests: int) -> set[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    names: set[str] = set()
    try:
        for _ in range(requests):
            writer.write(REQUEST)
            status, length, _ = parse_head(await reader.readuntil(b"\r\n\r\n"))
            body = await reader.readexactly(length)
            if status == 200:
                names.add(body.decode().strip())
    finally:
        writer.close()
    return names


def _every_backend_in_rotation(port: int, names: set[str]) -> bool:
    """Wait until round robin reaches all backends: every check has passed once."""
    deadline = time.monotonic() + EVERY_BACKEND_SEEN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if uvloop.run(_names_answering(port, 4 * len(names))) == names:
                return True
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        time.sleep(0.2)  # health checks run on the proxy's own clock: nothing to await
    return False


@dataclass
class _Stage:
    proxy: Child
    port: int
    backends: list[Child]


def _start_stage(bench: Bench, proxy_name: str) -> _Stage:
    s = bench.settings
    supervisor = bench.starter()
    env = targets.checkout_env()
    ports = [free_port() for _ in range(BACKEND_COUNT)]
    backends = [
        supervisor.start(
            f"backend{i}",
            targets.demo_backend_argv(port, f"b{i}"),
            s.workdir / f"failover-backend{i}.log",
            s.load_cpus,
            env,
        )
        for i, port in enumerate(ports)
    ]
    port = free_port()
    if proxy_name == MAITRED:
        config = s.workdir / "failover-maitred.yaml"
        config.write_text(maitred_config(port, ports))
        argv, env = targets.maitred_argv(config)
        proxy = supervisor.start(
            proxy_name, argv, s.workdir / "failover-maitred.log", s.proxy_cpus, env
        )
    else:
        config = s.workdir / "failover-haproxy.cfg"
        config.write_text(haproxy_config(port, ports))
        argv = [require("haproxy"), "-f", str(config), "-db"]
        proxy = supervisor.start(proxy_name, argv, s.workdir / "failover-haproxy.log", s.proxy_cpus)
    stage = _Stage(proxy, port, backends)
    for backend, backend_port in zip(backends, ports, strict=True):
        if not wait_until_serving(backend, backend_port, "/health", 10):
            _stop_stage(supervisor, stage)
            raise RuntimeError(f"demo backend did not start: {backend.log_tail(5)}")
    if not wait_until_serving(proxy, port, "/", targets.START_TIMEOUT_SECONDS):
        _stop_stage(supervisor, stage)
        raise RuntimeError(f"{proxy_name} did not start: {proxy.log_tail(1)}")
    if not _every_backend_in_rotation(port, {f"b{i}" for i in range(BACKEND_COUNT)}):
        _stop_stage(supervisor, stage)
        raise RuntimeError(f"{proxy_name} did not balance over all backends")
    return stage


def _stop_stage(supervisor: Supervisor, stage: _Stage) -> None:
    for child in [stage.proxy, *stage.backends]:
        if child.alive():
            os.kill(child.pid, signal.SIGCONT)  # a frozen backend could not act on SIGTERM
        supervisor.stop(child)


def run_once(bench: Bench, proxy_name: str, fault: str) -> RunResult:
    stage = _start_stage(bench, proxy_name)
    victim = stage.backends[0]
    try:
        outcomes, fault_time = uvloop.run(
            drive(stage.port, lambda: os.kill(victim.pid, FAULTS[fault]))
        )
    finally:
        _stop_stage(bench.starter(), stage)
    return summarize(outcomes, fault_time)


def failover(bench: Bench) -> list[Row]:
    rows = {
        (fault, metric): Row("failover", f"{fault}: {metric}")
        for fault in FAULTS
        for metric in METRICS
    }
    lines = [
        "| fault | proxy | round | requests | failed | s from fault to last failure "
        "| slowest request s |",
        "|---|---|---|---|---|---|---|",
    ]
    for round_index in range(bench.settings.rounds):
        for fault in FAULTS:
            for proxy_name in PROXIES:
                bench.say(f"failover round {round_index + 1}: {fault} under {proxy_name}")
                try:
                    result = run_once(bench, proxy_name, fault)
                except RuntimeError as error:
                    bench.notes.append(f"failover: {error}"[:300])
                    result = RunResult(0, math.nan, math.nan, math.nan)
                values = (result.failed, result.seconds_to_last_failure, result.slowest_seconds)
                for metric, value in zip(METRICS, values, strict=True):
                    rows[(fault, metric)].runs.setdefault(proxy_name, []).append(value)
                last = result.seconds_to_last_failure
                lines.append(
                    f"| {fault} | {proxy_name} | {round_index + 1} | {result.requests:,} "
                    f"| {'n/a' if math.isnan(result.failed) else int(result.failed)} "
                    f"| {'none failed' if math.isnan(last) else format_number(last)} "
                    f"| {format_number(result.slowest_seconds)} |"
                )
    bench.sections.append(("Failover, every run", "\n".join(lines)))
    bench.notes.append(
        f"failover: {CLIENT_LOOPS} keep-alive client loops (Python, uvloop) sending GET / for "
        f"{RUN_SECONDS:g} s through a fresh proxy to {BACKEND_COUNT} fresh maitred demo "
        f"backends; at {FAULT_AT_SECONDS:g} s one backend gets SIGKILL (kill) or SIGSTOP "
        f"(freeze). Checks: interval {HEALTH_INTERVAL}, timeout {HEALTH_TIMEOUT}, "
        f"{UNHEALTHY_THRESHOLD} failures to go down, re-check while failing every "
        f"{FAST_INTERVAL}; connect timeout {CONNECT_TIMEOUT}, server response timeout "
        f"{RESPONSE_TIMEOUT} in both. HAProxy: retries 2, option redispatch, retry-on "
        "all-retryable-errors; maitred: default retries (2, on another server) and passive "
        "ejection. A failure is a non-200 answer, a broken connection or no answer within "
        f"{CLIENT_TIMEOUT_SECONDS:g} s; 's to last failure' counts from the signal to the end "
        "of the last failed request (n/a: none failed). NGINX is not measured here: it has "
        "no active checks."
    )
    return list(rows.values())
