"""`python -m bench.warmup_bench`: what pool warm-up saves the first requests.

The latency of one request through a real maitred to one demo backend, on a
client connection opened beforehand (so only maitred's side is measured), with
``connection_pool: {min_idle: 0}`` (no warm-up) and ``{min_idle: 4}``:

- ``start``: the first request after maitred is ready (a fresh maitred per trial;
  with warm-up, once its connections are open — they open right at start);
- ``after idle``: the first request after a quiet spell longer than
  ``idle_timeout`` (1 s here), when the pool's idle connections have timed out.

Two kinds of server, where opening a connection costs something:

- ``plain, 10 ms connect``: the backend behind a relay that waits 10 ms before
  it connects a new connection through — a server one 10 ms round trip away;
- ``TLS``: the backend speaks HTTPS (ECDSA P-256), maitred verifies nothing:
  the handshake's CPU on both sides, on one machine.

Prints a Markdown table (median and p90 in ms) and writes it to
bench/out/warmup.md; configs and logs stay in bench/out/warmup-run/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import tls_files
from bench.processes import Child, Supervisor, free_port, fresh_directory, wait_until_serving

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
RUN_DIR = OUT_DIR / "warmup-run"
MIN_IDLE = 4
IDLE_TIMEOUT = 1.0
QUIET = 2.5  # longer than IDLE_TIMEOUT: idle connections time out meanwhile
CONNECT_DELAY = 0.010
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


# -- a relay that makes connecting cost something, and counts connections --------------


class DelayingRelay:
    """127.0.0.1:port -> upstream, waiting ``delay`` seconds before connecting each new
    connection through. ``open`` counts the connections it holds, ``through`` those
    connected through: the ones whose connect cost is paid."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.open = 0
        self.through = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._carry, "127.0.0.1", 0, backlog=512)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            await asyncio.sleep(self.delay)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self.open -= 1
            writer.close()
            return
        self.through += 1
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            self.open -= 1
            self.through -= 1
            writer.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            writer.close()


# -- maitred and the client -------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    name: str
    relay: DelayingRelay
    tls: bool


@dataclass
class Maitred:
    child: Child
    port: int


def start_maitred(
    supervisor: Supervisor, server: Server, min_idle: int, label: str, health: bool = False
) -> Maitred:
    port, admin = free_port(), free_port()
    tls_line = "    tls: {verify: false}\n" if server.tls else ""
    config = RUN_DIR / f"{label}.yaml"
    config.write_text(
        f"""
admin: {{bind: 127.0.0.1:{admin}}}
state_dir: {RUN_DIR}
listeners:
  - {{name: public, bind: 127.0.0.1:{port}, pool: web}}
pools:
  web:
    connection_pool: {{min_idle: {min_idle}, max_idle: 16, idle_timeout: {IDLE_TIMEOUT}s}}
{tls_line}    servers: [{{address: 127.0.0.1:{server.relay.port}}}]
"""
    )
    child = supervisor.start(
        label,
        [sys.executable, "-m", "maitred", "run", "-c", str(config)],
        RUN_DIR / f"{label}.log",
    )
    if not wait_until_serving(child, admin, "/healthz", 15.0):
        raise RuntimeError(f"maitred did not start:\n{child.log_tail()}")
    return Maitred(child, port)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.002)  # another process opens them: poll their count


def timed_request(port: int) -> float:
    """Milliseconds from sending a GET on an open client connection to its whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        sock.sendall(REQUEST)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += sock.recv(65536)
        elapsed = (time.perf_counter() - started) * 1000
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer: {head[:60]!r}")
    return elapsed


# -- scenarios --------------------------------------------------------------------------


def first_after_start(supervisor: Supervisor, server: Server, min_idle: int, n: int) -> list[float]:
    samples = []
    for trial in range(n):
        lb = start_maitred(supervisor, server, min_idle, f"{server.name}-{min_idle}-{trial}")
        if min_idle:
            wait_for(lambda: server.relay.through >= min_idle)
        samples.append(timed_request(lb.port))
        supervisor.stop(lb.child)
        wait_for(lambda: server.relay.open == 0)
    return samples


def first_after_idle(supervisor: Supervisor, server: Server, min_idle: int, n: int) -> list[float]:
    lb = start_maitred(supervisor, server, min_idle, f"{server.name}-{min_idle}-idle")
    timed_request(lb.port)
    samples = []
    for _ in range(n):
        time.sleep(QUIET)  # the scenario itself: nobody sends anything for a while
        samples.append(timed_request(lb.port))
    supervisor.stop(lb.child)
    wait_for(lambda: server.relay.open == 0)
    return samples


@contextlib.contextmanager
def servers(supervisor: Supervisor) -> Iterator[list[Server]]:
    plain = supervisor.start(
        "backend-plain",
        [sys.executable, "-m", "maitred.demo.backend", "--port", str(plain_port := free_port())],
        RUN_DIR / "backend-plain.log",
    )
    files = tls_files.generate(RUN_DIR)
    supervisor.start(
        "backend-tls",
        [
            sys.executable,
            "-m",
            "maitred.demo.backend",
            "--port",
            str(tls_port := free_port()),
            "--tls-cert",
            str(files.cert),
            "--tls-key",
            str(files.key),
        ],
        RUN_DIR / "backend-tls.log",
    )
    if not wait_until_serving(plain, plain_port, "/", 15.0):
        raise RuntimeError(f"the plain backend did not start:\n{plain.log_tail()}")
    wait_for(lambda: _accepts(tls_port), timeout=15.0)
    relays = [DelayingRelay(plain_port, CONNECT_DELAY), DelayingRelay(tls_port, 0.0)]
    try:
        yield [
            Server(f"plain, {CONNECT_DELAY * 1000:.0f} ms connect", relays[0], tls=False),
            Server("TLS", relays[1], tls=True),
        ]
    finally:
        for relay in relays:
            relay.stop()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.2f} / {p90:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warmup_bench")
    parser.add_argument("--trials", type=int, default=15, help="per cell (default 15)")
    args = parser.parse_args(argv)
    fresh_directory(RUN_DIR)
    rows = []
    with Supervisor() as supervisor, servers(supervisor) as kinds:
        for server in kinds:
            for scenario, measure in (
                ("start", first_after_start),
                ("after idle", first_after_idle),
            ):
                cold = measure(supervisor, server, 0, args.trials)
                warm = measure(supervisor, server, MIN_IDLE, args.trials)
                rows.append((server.name, scenario, summary(cold), summary(warm)))
                print(f"{server.name:>22} {scenario:>10}: {rows[-1][2]} -> {rows[-1][3]} ms")
    table = [
        "| server | first request | no warm-up (median / p90 ms) | min_idle 4 (median / p90 ms) |",
        "|---|---|---|---|",
        *(f"| {name} | {scenario} | {cold} | {warm} |" for name, scenario, cold, warm in rows),
    ]
    text = (
        "# Pool warm-up: first-request latency\n\n"
        f"{args.trials} trials per cell; one request through maitred on an open client "
        "connection, to one demo backend.\n\n" + "\n".join(table) + "\n"
    )
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "warmup.md").write_text(text)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
