"""Scenario "capacity": how many client connections one maitred worker holds.

Two measurements on fresh `workers: 1` maitred processes in front of one demo
backend (`python -m maitred.demo.backend`):

- idle: IDLE_CONNECTIONS keep-alive connections, one request answered on each,
  then silent (`python -m bench.idle_client`); RSS per connection, the time to
  open them all, and one fresh request's latency while they are held.
- active: ACTIVE_CONNECTIONS connections, each with GET /delay?ms=ACTIVE_DELAY_MS
  in flight at once (so each also holds a connection to the backend); RSS per
  connection while all are waiting, then how many were answered.

Kernel memory (the Slab line of /proc/meminfo) is read too, but it covers every
socket on the host: the client's, the proxy's both sides, the backend's.
The section it adds to RESULTS.md extrapolates the figures to one million
connections per instance against this machine's limits.
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from bench import procfs, targets
from bench.processes import Child, free_port, http_status, pinned, wait_until_serving
from bench.report import Row, format_number

if TYPE_CHECKING:
    from bench.scenarios import Bench

IDLE_CONNECTIONS = 15_000  # under the 20,000 open files of every process here
ACTIVE_CONNECTIONS = 2_000
ACTIVE_DELAY_MS = 10_000
CONNECTS_IN_FLIGHT = 256  # keeps the listen backlog from overflowing
TARGET_CONNECTIONS = 1_000_000
CLIENT_READY_TIMEOUT_SECONDS = 180.0
MEMINFO = Path("/proc/meminfo")
PROC_SYS = Path("/proc/sys")


@dataclass(frozen=True)
class Measurement:
    connections: int  # held at the time of the RSS reading
    failed: int
    rss_kib_per_connection: float
    slab_kib_per_connection: float
    seconds_to_open: float
    probe_ms: float  # one new request's latency while they were held (idle only)


def maitred_config(port: int, backend_port: int) -> str:
    return f"""workers: 1
listeners:
  - name: capacity
    bind: 127.0.0.1:{port}
    pool: backend
    timeouts: {{idle: 600s}}
pools:
  backend:
    servers:
      - {{address: 127.0.0.1:{backend_port}}}
    health_check: {{path: /health, interval: 5s}}
    timeouts: {{response: 60s}}
"""


def slab_kib() -> int:
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("Slab:"):
            return int(line.split()[1])
    return 0


def read_sys(name: str) -> str:
    """A /proc/sys value by its sysctl name ("net.ipv4.ip_local_port_range")."""
    try:
        return " ".join((PROC_SYS / name.replace(".", "/")).read_text().split())
    except OSError:
        return "unknown"


def ephemeral_ports(port_range: str) -> int:
    low, high = (int(n) for n in port_range.split())
    return high - low + 1


def _start_maitred(bench: Bench, backend_port: int, label: str) -> tuple[Child, int]:
    s = bench.settings
    port = free_port()
    config = s.workdir / f"capacity-{label}.yaml"
    config.write_text(maitred_config(port, backend_port))
    argv, env = targets.maitred_argv(config)
    child = bench.starter().start(
        targets.MAITRED, argv, s.workdir / f"capacity-{label}.log", s.proxy_cpus, env
    )
    if not wait_until_serving(child, port, "/", targets.START_TIMEOUT_SECONDS):
        bench.starter().stop(child)
        raise RuntimeError(f"maitred did not start: {child.log_tail(5)}")
    return child, port


def measure_idle(bench: Bench, backend_port: int) -> Measurement:
    supervisor = bench.starter()
    child, port = _start_maitred(bench, backend_port, "idle")
    try:
        rss_before, slab_before = procfs.rss_kib(child.pid), slab_kib()
        argv = [sys.executable, "-m", "bench.idle_client", str(port), str(IDLE_CONNECTIONS)]
        began = time.monotonic()
        with subprocess.Popen(
            [*pinned(bench.settings.load_cpus), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as client:
            assert client.stdin is not None and client.stdout is not None
            ready = client.stdout.readline().split()  # blocks until all are open
            opened_in = time.monotonic() - began
            rss_after, slab_after = procfs.rss_kib(child.pid), slab_kib()
            probe_began = time.monotonic()
            probe_status = http_status(port, "/", timeout=10)
            probe_ms = 1000 * (time.monotonic() - probe_began) if probe_status == 200 else math.nan
            client.stdin.close()
            client.wait(CLIENT_READY_TIMEOUT_SECONDS)
    finally:
        supervisor.stop(child)
    if len(ready) != 3 or ready[0] != "READY" or int(ready[1]) == 0:
        raise RuntimeError("the idle client could not connect to maitred")
    opened, failed = int(ready[1]), int(ready[2])
    return Measurement(
        opened,
        failed,
        (rss_after - rss_before) / opened,
        (slab_after - slab_before) / opened,
        opened_in,
        probe_ms,
    )


async def _one_slow_request(port: int, gate: asyncio.Semaphore, sent: list[int]) -> bool:
    request = f"GET /delay?ms={ACTIVE_DELAY_MS} HTTP/1.1\r\nHost: capacity\r\n\r\n".encode()
    try:
        async with asyncio.timeout(ACTIVE_DELAY_MS / 1000 + 60):
            async with gate:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(request)
                await writer.drain()
            sent.append(1)
            head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            return head.startswith(b"HTTP/1.1 200")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return False


async def _backend_connections(backend_port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", backend_port)
    writer.write(b"GET /stats HTTP/1.1\r\nHost: capacity\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    stats = json.loads(answer.partition(b"\r\n\r\n")[2])
    return int(stats["connections_open"]) - 1  # not counting this request's own


async def _hold_active(
    port: int, backend_port: int, maitred_pid: int
) -> tuple[int, int, int, int, float]:
    """(server-side connections seen, answered, RSS KiB, slab KiB, seconds to all in flight)."""
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    sent: list[int] = []
    began = time.monotonic()
    requests = [
        asyncio.create_task(_one_slow_request(port, gate, sent)) for _ in range(ACTIVE_CONNECTIONS)
    ]
    deadline = began + ACTIVE_DELAY_MS / 1000 * 0.8
    in_flight = 0
    while time.monotonic() < deadline:
        in_flight = await _backend_connections(backend_port)
        if in_flight >= ACTIVE_CONNECTIONS:
            break
        await asyncio.sleep(0.1)  # the backend's counter is only seen by asking it
    all_in_flight = time.monotonic() - began
    rss, slab = procfs.rss_kib(maitred_pid), slab_kib()
    answered = sum(await asyncio.gather(*requests))
    return in_flight, answered, rss, slab, all_in_flight


def measure_active(bench: Bench, backend_port: int) -> Measurement:
    child, port = _start_maitred(bench, backend_port, "active")
    try:
        rss_before, slab_before = procfs.rss_kib(child.pid), slab_kib()
        in_flight, answered, rss_during, slab_during, opened_in = uvloop.run(
            _hold_active(port, backend_port, child.pid)
        )
    finally:
        bench.starter().stop(child)
    if in_flight == 0:
        raise RuntimeError("no request reached the backend through maitred")
    return Measurement(
        in_flight,
        ACTIVE_CONNECTIONS - answered,
        (rss_during - rss_before) / in_flight,
        (slab_during - slab_before) / in_flight,
        opened_in,
        math.nan,
    )


def extrapolation(idle: Measurement | None, active: Measurement | None) -> str:
    """One million connections per instance, on paper, from the figures and this host."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    port_range = read_sys("net.ipv4.ip_local_port_range")
    ports = ephemeral_ports(port_range) if port_range != "unknown" else 0
    nr_open = read_sys("fs.nr_open")
    file_max = read_sys("fs.file-max")
    million = TARGET_CONNECTIONS

    def gib(kib_per_connection: float) -> str:
        return format_number(kib_per_connection * million / 1024 / 1024)

    lines = [
        "Measured on one maitred worker (figures above); extrapolated linearly to "
        f"{million:,} client connections per instance.",
        "",
        "| resource | this machine | 1M idle keep-alive | 1M proxied, each in flight |",
        "|---|---|---|---|",
        f"| open files per process | soft {soft:,} / hard {hard:,}; fs.nr_open {nr_open} "
        f"| {million:,} (1 per client) | {2 * million:,} (client + server side) |",
        f"| open files, whole system | fs.file-max {file_max} | {million:,} "
        f"| {2 * million:,} plus the servers' own if local |",
    ]
    if ports:
        per_destination = ports
        destinations = math.ceil(million / per_destination)
        lines.append(
            f"| ephemeral ports (server side) | {port_range}: {ports:,} per (source IP, "
            f"server IP:port) | none needed | ≥ {destinations} server addresses, or more "
            "source IPs, or a wider range |"
        )
    if idle is not None:
        lines.append(
            f"| proxy RSS | {format_number(idle.rss_kib_per_connection)} KiB/idle conn, "
            f"{format_number(active.rss_kib_per_connection) if active else 'n/a'} KiB/active "
            f"| {gib(idle.rss_kib_per_connection)} GiB "
            f"| {gib(active.rss_kib_per_connection) if active else 'n/a'} GiB |"
        )
        lines.append(
            f"| kernel slab (all ends on this host) | {format_number(idle.slab_kib_per_connection)}"
            f" KiB/idle conn, "
            f"{format_number(active.slab_kib_per_connection) if active else 'n/a'} KiB/active "
            f"| ~{gib(idle.slab_kib_per_connection)} GiB "
            f"| ~{gib(active.slab_kib_per_connection) if active else 'n/a'} GiB |"
        )
    tcp_mem = read_sys("net.ipv4.tcp_mem")
    lines += [
        "",
        f"Socket buffers come on top while data is queued (net.ipv4.tcp_rmem "
        f"{read_sys('net.ipv4.tcp_rmem')}, tcp_wmem {read_sys('net.ipv4.tcp_wmem')}, "
        f"tcp_mem {tcp_mem} pages); idle sockets hold none. The kernel slab delta counts "
        "every socket the test created on this host (client, both proxy sides, backend), "
        "so it overstates the proxy host's share; other work on the machine moves it too.",
    ]
    return "\n".join(lines)


def capacity(bench: Bench) -> list[Row]:
    s = bench.settings
    supervisor = bench.starter()
    idle_row = Row("capacity", f"idle KB/conn ({IDLE_CONNECTIONS:,})")
    active_row = Row("capacity", f"active KB/conn ({ACTIVE_CONNECTIONS:,} in flight)")
    backend_port = free_port()
    backend = supervisor.start(
        "capacity-backend",
        targets.demo_backend_argv(backend_port, "capacity"),
        s.workdir / "capacity-backend.log",
        s.load_cpus,
        targets.checkout_env(),
    )
    idle: Measurement | None = None
    active: Measurement | None = None
    try:
        if not wait_until_serving(backend, backend_port, "/health", 10):
            raise RuntimeError(f"demo backend did not start: {backend.log_tail(5)}")
        bench.say(f"capacity: {IDLE_CONNECTIONS:,} idle connections")
        idle = measure_idle(bench, backend_port)
        bench.say(f"capacity: {ACTIVE_CONNECTIONS:,} requests in flight")
        active = measure_active(bench, backend_port)
    except RuntimeError as error:
        bench.notes.append(f"capacity: {error}"[:300])
    finally:
        supervisor.stop(backend)
    detail = [
        "| case | connections held | failed | KiB RSS/conn | KiB slab/conn | "
        "s to open all | new request ms while held |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, measured, row in (("idle", idle, idle_row), ("active", active, active_row)):
        if measured is None:
            row.skipped = "did not run (see notes)"
            continue
        row.runs[targets.MAITRED] = [measured.rss_kib_per_connection]
        detail.append(
            f"| {name} | {measured.connections:,} | {measured.failed:,} "
            f"| {format_number(measured.rss_kib_per_connection)} "
            f"| {format_number(measured.slab_kib_per_connection)} "
            f"| {format_number(measured.seconds_to_open)} | {format_number(measured.probe_ms)} |"
        )
    text = "\n".join(detail) + "\n\n" + extrapolation(idle, active)
    bench.sections.append(("Capacity: one maitred worker", text))
    bench.notes.append(
        f"capacity: one maitred process (workers: 1, pinned like the other proxies) before "
        f"one demo backend; idle: {IDLE_CONNECTIONS:,} keep-alive connections after one "
        f"request each; active: {ACTIVE_CONNECTIONS:,} connections each waiting on GET "
        f"/delay?ms={ACTIVE_DELAY_MS} (RSS read once the backend held them all). "
        "KB = 1024 bytes; a fresh process for each measurement."
    )
    return [idle_row, active_row]
