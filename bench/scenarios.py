"""The measurements: each scenario runs every target in turn and returns table rows."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench import capacity, failover, load, procfs, targets
from bench.processes import Supervisor, pinned
from bench.report import Goal, Row
from bench.targets import HAPROXY, MAITRED, Target

Listener = Literal["http", "https", "tcp"]

IDLE_CONNECTIONS = 10_000
IDLE_READY_TIMEOUT_SECONDS = 120.0
# Idle means idle for a while: the RSS is read this long after the last connection
# opened, for every proxy alike (maitred drops an idle connection's parser after a
# quiet second; read at once, the last connections opened would still hold one).
IDLE_SETTLE_SECONDS = 3.0


@dataclass(frozen=True)
class Settings:
    seconds: float
    rounds: int
    warmup_seconds: float
    connections: int
    threads: int
    load_cpus: str | None  # where wrk, h2load and the idle client run
    workdir: Path
    proxy_cpus: str | None = None  # where the proxy under test runs


@dataclass
class Bench:
    settings: Settings
    targets: list[Target]  # the running ones, in rotation order
    notes: list[str] = field(default_factory=list)
    haproxy_small_rps: float | None = None  # sets the fixed rate of "latency" and "cpu"
    # For scenarios that start proxies and servers of their own (workers, failover, capacity).
    supervisor: Supervisor | None = None
    origin_ports: list[int] = field(default_factory=list)
    # Extra RESULTS.md sections (title, markdown) beside the table.
    sections: list[tuple[str, str]] = field(default_factory=list)

    def url(self, target: Target, path: str = "/", listener: Listener = "http") -> str:
        if listener == "https":
            return f"https://127.0.0.1:{target.tls_port}{path}"
        if listener == "tcp":
            return f"http://127.0.0.1:{target.tcp_port}{path}"
        return f"http://127.0.0.1:{target.port}{path}"

    def starter(self) -> Supervisor:
        assert self.supervisor is not None, (
            "this scenario starts processes: give Bench a Supervisor"
        )
        return self.supervisor

    def rotation(self) -> list[tuple[int, Target]]:
        """A B C A B C...: every round visits each target once, in the same order."""
        return [(r, t) for r in range(self.settings.rounds) for t in self.targets]

    def say(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    def still_running(self, target: Target, scenario: str) -> bool:
        if target.available:
            return True
        note = f"{target.name} exited during {scenario}; its later runs are missing."
        if note not in self.notes:
            self.notes.append(note)
        return False


def _record(target: Target, *values: tuple[Row, float]) -> None:
    """One round's value for each row; NaN marks a round that produced none."""
    for row, value in values:
        row.runs.setdefault(target.name, []).append(value)


def _try_wrk(
    bench: Bench,
    target: Target,
    path: str,
    headers: tuple[str, ...],
    seconds: float,
    listener: Listener = "http",
    pin: bool = True,
) -> load.WrkResult | None:
    s = bench.settings
    cpus = s.load_cpus if pin else None
    try:
        return load.run_wrk(
            bench.url(target, path, listener), seconds, s.connections, s.threads, headers, cpus
        )
    except ValueError as error:  # wrk printed no result: the target stopped answering
        bench.notes.append(f"{target.name}: wrk failed on {path}: {str(error).strip()[:200]}")
        return None


def _throughput(
    bench: Bench,
    scenario: str,
    path: str,
    headers: tuple[str, ...],
    goal: Goal | None,
    listener: Listener = "http",
    what: str = "req/s",
) -> list[Row]:
    s = bench.settings
    rate = Row(scenario, what, goal=goal)
    busy = Row(scenario, "proxy CPU %" if what == "req/s" else f"proxy CPU % ({what})")
    for target in bench.targets:
        _try_wrk(bench, target, path, headers, s.warmup_seconds, listener)
    for round_index, target in bench.rotation():
        result = None
        if bench.still_running(target, scenario):
            bench.say(f"{scenario} round {round_index + 1}/{s.rounds}: {target.name}")
            cpu_before = procfs.cpu_seconds(target.pid)
            result = _try_wrk(bench, target, path, headers, s.seconds, listener)
            cpu_used = procfs.cpu_seconds(target.pid) - cpu_before
        if result is None:
            _record(target, (rate, math.nan), (busy, math.nan))
            continue
        _record(
            target,
            (rate, result.requests_per_second),
            (busy, 100 * cpu_used / result.seconds),
        )
        if result.errors:
            bench.notes.append(
                f"{scenario}, round {round_index + 1}: {target.name} had {result.errors} "
                f"errors in {result.requests} requests."
            )
    if scenario == "small" and rate.median(HAPROXY) is not None:
        bench.haproxy_small_rps = rate.median(HAPROXY)
    return [rate, busy]


def small(bench: Bench) -> list[Row]:
    return _throughput(bench, "small", "/", (), Goal("ratio_at_least", 1.0))


def large(bench: Bench) -> list[Row]:
    return _throughput(bench, "50k", "/50k", (), Goal("ratio_at_least", 1.2))


def close(bench: Bench) -> list[Row]:
    return _throughput(bench, "close", "/", ("Connection: close",), None)


def _fixed_rate(bench: Bench) -> float | None:
    """Half of HAProxy's maximum on small answers, measured now if "small" did not run."""
    if bench.haproxy_small_rps is None:
        haproxy = next((t for t in bench.targets if t.name == HAPROXY), None)
        if haproxy is None:
            return None
        s = bench.settings
        _try_wrk(bench, haproxy, "/", (), s.warmup_seconds)
        result = _try_wrk(bench, haproxy, "/", (), s.seconds)
        if result is None:
            return None
        bench.haproxy_small_rps = result.requests_per_second
        bench.notes.append(
            f"Fixed rate calibrated by one {s.seconds:g} s wrk run on HAProxy "
            f"({result.requests_per_second:,.0f} req/s), since 'small' did not run."
        )
    return bench.haproxy_small_rps / 2


def latency_and_cpu(bench: Bench) -> list[Row]:
    """p50/p99 and proxy CPU per request at half of HAProxy's maximum rate (h2load --rps)."""
    p50 = Row("latency", "p50 ms")
    p99 = Row("latency", "p99 ms", goal=Goal("haproxy_plus_at_most", 0.5))
    cpu = Row("cpu", "proxy CPU µs/req")
    rate = _fixed_rate(bench)
    if rate is None:
        for row in (p50, p99, cpu):
            row.skipped = "no HAProxy maximum, so no rate to hold"
        return [p50, p99, cpu]
    s = bench.settings
    clients = s.connections
    log_path = s.workdir / "h2load.log"
    for target in bench.targets:
        load.run_h2load(bench.url(target), rate, s.warmup_seconds, clients, log_path, s.load_cpus)
    for round_index, target in bench.rotation():
        if not bench.still_running(target, "latency"):
            _record(target, (p50, math.nan), (p99, math.nan), (cpu, math.nan))
            continue
        bench.say(f"fixed rate round {round_index + 1}/{s.rounds}: {target.name}")
        cpu_before = procfs.cpu_seconds(target.pid)
        result = load.run_h2load(bench.url(target), rate, s.seconds, clients, log_path, s.load_cpus)
        cpu_used = procfs.cpu_seconds(target.pid) - cpu_before
        cpu_per_request = 1e6 * cpu_used / result.requests if result.requests else math.nan
        _record(target, (p50, result.p50_ms), (p99, result.p99_ms), (cpu, cpu_per_request))
        if result.errors or result.requests_per_second < 0.95 * rate:
            bench.notes.append(
                f"latency, round {round_index + 1}: {target.name} held "
                f"{result.requests_per_second:,.0f} of {rate:,.0f} req/s "
                f"with {result.errors} errors."
            )
    bench.notes.append(
        f"latency/cpu: h2load --h1 --rps, {clients} connections, fixed total rate "
        f"{rate:,.0f} req/s (half of HAProxy's median in 'small'); percentiles from "
        "h2load's per-request log; CPU = utime+stime of the proxy's process tree / requests."
    )
    return [p50, p99, cpu]


def idle_memory(bench: Bench) -> list[Row]:
    """RSS growth per idle keep-alive client connection, once per target.

    Measured once on each process: memory freed after the first round is not
    always handed back to the OS, so a second round would undercount.
    """
    row = Row("idle_memory", "KB/conn", goal=Goal("at_most", 2.5))
    for target in bench.targets:
        if not bench.still_running(target, "idle_memory"):
            continue
        bench.say(f"idle_memory: {target.name}")
        before = procfs.rss_kib(target.pid)
        argv = [sys.executable, "-m", "bench.idle_client", str(target.port), str(IDLE_CONNECTIONS)]
        with subprocess.Popen(
            [*pinned(bench.settings.load_cpus), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as client:
            assert client.stdin is not None and client.stdout is not None
            ready = client.stdout.readline().split()  # blocks until all are open
            time.sleep(IDLE_SETTLE_SECONDS)
            after = procfs.rss_kib(target.pid)
            client.stdin.close()
            client.wait(IDLE_READY_TIMEOUT_SECONDS)
        if len(ready) != 3 or ready[0] != "READY" or int(ready[1]) == 0:
            bench.notes.append(f"idle_memory: the client could not connect to {target.name}.")
            continue
        opened, failed = int(ready[1]), int(ready[2])
        row.runs[target.name] = [(after - before) / opened]
        if failed:
            bench.notes.append(f"idle_memory: {target.name} refused {failed} connections.")
    bench.notes.append(
        f"idle_memory: {IDLE_CONNECTIONS:,} keep-alive connections, one request answered on "
        f"each, then idle for {IDLE_SETTLE_SECONDS:g} s; (VmRSS with - VmRSS before) / "
        "connections, summed over the "
        "proxy's process tree, one measurement per proxy (KB = 1024 bytes)."
    )
    return [row]


def https(bench: Bench) -> list[Row]:
    """HTTPS termination: keep-alive throughput, then a new TLS connection per request."""
    keep_alive = _throughput(bench, "https", "/", (), Goal("ratio_at_least", 0.9), "https")
    handshakes = _throughput(
        bench, "https", "/", ("Connection: close",), None, "https", what="new conn/s"
    )
    bench.notes.append(
        "https: the same proxying behind TLS (TLS 1.3 as negotiated by wrk's OpenSSL, one "
        "ECDSA P-256 certificate for every proxy, ALPN http/1.1); 'new conn/s' sends "
        "Connection: close, so every request pays a TCP and TLS handshake (wrk may resume "
        "the TLS session, for every proxy alike)."
    )
    return keep_alive + handshakes


WORKER_COUNTS = (1, 2)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def workers(bench: Bench) -> list[Row]:
    """Keep-alive small answers through maitred `workers: 1 | 2` and HAProxy `nbthread 1 | 2`.

    Nothing is pinned here: two workers need both cores, and so does the load
    side, so proxy and wrk compete for the same two cores in every case.
    """
    s = bench.settings
    rates = {n: Row("workers", f"req/s ({_plural(n, 'worker')})") for n in WORKER_COUNTS}
    busy = {n: Row("workers", f"proxy CPU % ({_plural(n, 'worker')})") for n in WORKER_COUNTS}
    scaling = Row("workers", "req/s 2 workers / 1 worker")
    contenders: list[tuple[int, Target]] = []
    supervisor = bench.starter()
    try:
        for count in WORKER_COUNTS:
            for name in (MAITRED, HAPROXY):
                label = f"workers-{name.lower()}-{count}"
                target = targets.start(
                    name,
                    supervisor,
                    s.workdir,
                    bench.origin_ports,
                    None,
                    workers=count,
                    label=label,
                )
                if target.available:
                    contenders.append((count, target))
                else:
                    bench.notes.append(f"workers: {name} x{count} {target.problem}")
        for _, target in contenders:
            _try_wrk(bench, target, "/", (), s.warmup_seconds, pin=False)
        for round_index in range(s.rounds):
            for count, target in contenders:
                bench.say(f"workers round {round_index + 1}/{s.rounds}: {target.name} x{count}")
                result = None
                if bench.still_running(target, "workers"):
                    cpu_before = procfs.cpu_seconds(target.pid)
                    result = _try_wrk(bench, target, "/", (), s.seconds, pin=False)
                    cpu_used = procfs.cpu_seconds(target.pid) - cpu_before
                if result is None:
                    _record(target, (rates[count], math.nan), (busy[count], math.nan))
                    continue
                _record(
                    target,
                    (rates[count], result.requests_per_second),
                    (busy[count], 100 * cpu_used / result.seconds),
                )
    finally:
        for _, target in contenders:
            if target.child is not None:
                supervisor.stop(target.child)
    first, last = WORKER_COUNTS[0], WORKER_COUNTS[-1]
    for name in (MAITRED, HAPROXY):
        pairs = zip(rates[first].runs.get(name, []), rates[last].runs.get(name, []), strict=False)
        scaling.runs[name] = [b / a if a else math.nan for a, b in pairs]
    bench.notes.append(
        "workers: maitred `workers: N` (a supervisor and N worker processes accepting from "
        "the same listening sockets; with 1, one process serves) beside HAProxy `nbthread N`, "
        f"wrk -t{s.threads} -c{s.connections} on GET /, rotation maitred x1, HAProxy x1, "
        "maitred x2, HAProxy x2 in every round. Nothing pinned in this scenario: the proxy, "
        "wrk and the origin nginx (still on the load CPU) share the machine's 2 cores, so "
        "a second worker competes with the load generator and the origins; 2/1 is far "
        "from 2 on such a machine for every proxy. Proxy CPU % may exceed 100 (two cores)."
    )
    return [rates[first], busy[first], rates[last], busy[last], scaling]


def tcp(bench: Bench) -> list[Row]:
    """Layer 4: raw TCP relayed to the same origins, keep-alive and new connection per request."""
    relaying = [t for t in bench.targets if t.tcp_port]
    for target in bench.targets:
        if not target.tcp_port:
            bench.notes.append(
                f"tcp: {target.name} not measured (no layer-4 listener; NGINX needs the "
                f"stream module, Debian package {targets.NGINX_STREAM_PACKAGE})."
            )
    layer4 = dataclasses.replace(bench, targets=relaying)  # shares notes with bench
    keep_alive = _throughput(layer4, "tcp", "/", (), None, "tcp")
    per_request = _throughput(
        layer4, "tcp", "/", ("Connection: close",), None, "tcp", what="new conn/s"
    )
    bench.notes.append(
        "tcp: maitred `protocol: tcp` listener on the same pool, HAProxy `mode tcp` "
        "(balance roundrobin, HTTP checks kept), NGINX `stream` proxy_pass (round robin, "
        "no active checks); wrk speaks HTTP through the byte relay, so every client "
        "connection is tied to one origin connection; 'new conn/s' sends Connection: close "
        "so every request opens a client and an origin connection."
    )
    return keep_alive + per_request


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "small": small,
    "50k": large,
    "close": close,
    "latency": latency_and_cpu,
    "cpu": latency_and_cpu,
    "idle_memory": idle_memory,
    "https": https,
    "workers": workers,
    "tcp": tcp,
    "failover": failover.failover,
    "capacity": capacity.capacity,
}
# Each of these adds minutes; the default run (about 11 minutes at 3 x 10 s) leaves them out.
OPT_IN_SCENARIOS = ("workers", "tcp", "failover", "capacity")
DEFAULT_SCENARIOS = tuple(name for name in SCENARIOS if name not in OPT_IN_SCENARIOS)


def run(names: list[str], bench: Bench) -> list[Row]:
    rows: list[Row] = []
    done: set[Callable[[Bench], list[Row]]] = set()
    for name in names:
        scenario = SCENARIOS[name]
        if scenario in done:
            continue  # "latency" and "cpu" share one fixed-rate pass
        done.add(scenario)
        rows += [row for row in scenario(bench) if row.scenario in names]
    return rows
