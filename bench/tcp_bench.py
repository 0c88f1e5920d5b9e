"""Layer-4 throughput: maitred copying vs maitred splice(2) vs HAProxy `mode tcp`.

    python -m bench.tcp_bench                      # 3 rounds, 1 GiB per bulk pass, 4 connections
    python -m bench.tcp_bench --rounds 5 --gib 2 --connections 8 --seconds 10

Four proxies run side by side, each a single process on the proxy CPU with two
layer-4 listeners (round robin, no checks on the bulk pool):

- maitred `zero_copy: false` (bytes through asyncio transports),
- maitred `zero_copy: true` (socket → pipe → socket with splice, tcp_splice.py),
- HAProxy `mode tcp` as configured by default (it copies through user space),
- HAProxy `mode tcp` with `option splice-auto` (its own zero-copy).

Per round, for each proxy in rotation:

- **download / upload**: ``--gib`` GiB streamed through ``--connections``
  concurrent connections from (or into) a bulk origin (a Python process: os.sendfile
  out of a page-cached file, recv_into a reused buffer in); wall-clock GB/s and the
  proxy's CPU seconds (utime + stime from /proc) per GB moved.
- **small keep-alive**: wrk GET / over the relay to four nginx origins; requests per
  second and proxy CPU µs per request (each request is one small exchange each way).
- **small new conn**: the same with `Connection: close`: a new client and origin
  connection per exchange.

The table shows medians over rounds; ratios are medians of per-round ratios to
HAProxy (default), so machine-load drift within a round mostly cancels out.
Results go to bench/RESULTS-tcp.md (``--results`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import origins as origin_servers
from bench.load import run_wrk
from bench.processes import (
    Child,
    Supervisor,
    cpu_plan,
    free_port,
    fresh_directory,
    wait_until_serving,
)
from bench.procfs import cpu_seconds
from bench.targets import PROJECT_ROOT, checkout_env, maitred_argv
from bench.tools import ensure_installed, require

GIB = 1 << 30
CHUNK = 1 << 20
ORIGIN_FILE_BYTES = 64 << 20
WRK_CONNECTIONS = 50
START_TIMEOUT_SECONDS = 15.0

COPY, SPLICE, HAPROXY, HAPROXY_SPLICE = (
    "maitred copy",
    "maitred splice",
    "HAProxy",
    "HAProxy splice-auto",
)
TARGETS = (COPY, SPLICE, HAPROXY, HAPROXY_SPLICE)
BASELINE = HAPROXY


# -- bulk origin and client (run as child processes: `python -m bench.tcp_bench origin|client`)


def serve_bulk_origin(port: int, data_file: Path) -> None:
    """`GET n\\n`: n bytes back, then FIN. `PUT\\n` + bytes + FIN: `OK n\\n` back.

    Both ends of a bulk pass stay cheap so the proxy is what gets measured: bytes go
    out with sendfile from a page-cached file and come in with MSG_TRUNC (the kernel
    drops them without copying them to user space).
    """
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)

    def handle(conn: socket.socket) -> None:
        with conn:
            line = _read_line(conn)
            verb, _, count_text = line.partition(b" ")
            if verb == b"GET":
                _send_from_file(conn, data_file, int(count_text))
                conn.shutdown(socket.SHUT_WR)
            elif verb == b"PUT":
                conn.sendall(b"OK %d\n" % _discard_until_eof(conn))
            elif verb == b"PING":
                conn.sendall(b"PONG\n")

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def _read_line(conn: socket.socket) -> bytes:
    # One byte at a time: the command line must not swallow the payload behind it.
    line = b""
    while not line.endswith(b"\n") and len(line) < 64:
        piece = conn.recv(1)
        if not piece:
            break
        line += piece
    return line.strip()


def _send_from_file(conn: socket.socket, data_file: Path, count: int) -> None:
    size = data_file.stat().st_size
    with open(data_file, "rb") as source:
        while count:
            offset = 0
            while offset < size and count:
                sent = os.sendfile(
                    conn.fileno(), source.fileno(), offset, min(size - offset, count)
                )
                offset += sent
                count -= sent


def _discard_until_eof(conn: socket.socket) -> int:
    received = 0
    while count := conn.recv_into(_SCRATCH, CHUNK, socket.MSG_TRUNC):
        received += count
    return received


_SCRATCH = bytearray(CHUNK)


def bulk_client(
    port: int, direction: str, total: int, connections: int, data_file: Path
) -> dict[str, float]:
    """Move `total` bytes through `connections` connections at once; seconds it took."""
    share = total // connections
    errors: list[str] = []

    def download(sock: socket.socket) -> None:
        sock.sendall(b"GET %d\n" % share)
        received = _discard_until_eof(sock)
        if received != share:
            errors.append(f"download: {received} of {share} bytes")

    def upload(sock: socket.socket) -> None:
        sock.sendall(b"PUT\n")
        _send_from_file(sock, data_file, share)
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(64)
        if answer != b"OK %d\n" % share:
            errors.append(f"upload: origin answered {answer!r} for {share} bytes")

    work = download if direction == "download" else upload

    def one_connection() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                sock.settimeout(None)  # os.sendfile needs a blocking socket
                work(sock)
        except OSError as exc:
            errors.append(f"{direction}: {exc!r}")

    threads = [threading.Thread(target=one_connection) for _ in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise SystemExit("; ".join(errors))
    return {"seconds": seconds, "bytes": share * connections}


# -- proxies ---------------------------------------------------------------------------


@dataclass
class Proxy:
    name: str
    child: Child
    bulk_port: int
    small_port: int


def maitred_config(bulk_port: int, small_port: int, bulk: int, small: list[int], zc: bool) -> str:
    small_servers = "\n".join(f"      - {{address: 127.0.0.1:{p}}}" for p in small)
    zero_copy = "true" if zc else "false"
    return f"""workers: 1
listeners:
  - name: bulk
    bind: 127.0.0.1:{bulk_port}
    protocol: tcp
    pool: bulk
    zero_copy: {zero_copy}
    timeouts: {{idle: 120s}}
  - name: small
    bind: 127.0.0.1:{small_port}
    protocol: tcp
    pool: small
    zero_copy: {zero_copy}
    timeouts: {{idle: 120s}}
pools:
  bulk:
    algorithm: round_robin
    servers:
      - {{address: 127.0.0.1:{bulk}}}
  small:
    algorithm: round_robin
    servers:
{small_servers}
"""


def haproxy_config(
    bulk_port: int, small_port: int, bulk: int, small: list[int], splice: bool
) -> str:
    small_servers = "\n".join(f"    server o{i} 127.0.0.1:{p}" for i, p in enumerate(small))
    return f"""
global
    nbthread 1
    maxconn 5000

defaults
    mode tcp
    maxconn 5000
    timeout connect 5s
    timeout client 120s
    timeout server 120s
{"    option splice-auto" if splice else ""}

frontend bulk
    bind 127.0.0.1:{bulk_port}
    default_backend bulk

backend bulk
    balance roundrobin
    server bulk0 127.0.0.1:{bulk}

frontend small
    bind 127.0.0.1:{small_port}
    default_backend small

backend small
    balance roundrobin
{small_servers}
"""


def start_proxy(
    name: str,
    supervisor: Supervisor,
    workdir: Path,
    bulk_origin: int,
    small_origins: list[int],
    cpus: str | None,
) -> Proxy:
    bulk_port, small_port = free_port(), free_port()
    label = name.replace(" ", "-").lower()
    if name in (COPY, SPLICE):
        conf = workdir / f"{label}.yaml"
        conf.write_text(
            maitred_config(bulk_port, small_port, bulk_origin, small_origins, name == SPLICE)
        )
        argv, env = maitred_argv(conf)
        child = supervisor.start(name, argv, workdir / f"{label}.log", cpus, env)
    else:
        conf = workdir / f"{label}.cfg"
        conf.write_text(
            haproxy_config(
                bulk_port, small_port, bulk_origin, small_origins, name == HAPROXY_SPLICE
            )
        )
        argv = [require("haproxy"), "-f", str(conf), "-db"]
        child = supervisor.start(name, argv, workdir / f"{label}.log", cpus)
    if not wait_until_serving(child, small_port, "/", START_TIMEOUT_SECONDS):
        raise SystemExit(f"bench: {name} did not start:\n{child.log_tail()}")
    return Proxy(name, child, bulk_port, small_port)


# -- measuring -------------------------------------------------------------------------


@dataclass
class Figures:
    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, target: str, metric: str, value: float) -> None:
        self.values.setdefault((target, metric), []).append(value)

    def median(self, target: str, metric: str) -> float:
        return statistics.median(self.values.get((target, metric), [float("nan")]))

    def ratio(self, target: str, metric: str) -> float:
        mine = self.values.get((target, metric), [])
        base = self.values.get((BASELINE, metric), [])
        pairs = [a / b for a, b in zip(mine, base, strict=False) if b]
        return statistics.median(pairs) if pairs else float("nan")


def measured(pid: int, work: Callable[[], float]) -> tuple[float, float]:
    """(what `work` returns, the proxy's CPU seconds while it ran)."""
    before = cpu_seconds(pid)
    result = work()
    return result, cpu_seconds(pid) - before


def run_bulk(proxy: Proxy, direction: str, args: argparse.Namespace, cpus: str | None) -> float:
    """One bulk pass through `proxy` by a client process on the load CPUs; its seconds."""
    argv = [sys.executable, "-m", "bench.tcp_bench", "client", "--port", str(proxy.bulk_port)]
    argv += ["--direction", direction, "--bytes", str(int(args.gib * GIB))]
    argv += ["--connections", str(args.connections), "--file", str(args.data_file)]
    if cpus:
        argv = ["taskset", "-c", cpus, *argv]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, env=checkout_env(), cwd=PROJECT_ROOT
    )
    if done.returncode != 0:
        raise SystemExit(f"bench: {direction} through {proxy.name} failed: {done.stderr}")
    result = json.loads(done.stdout)
    return float(result["seconds"])


def one_round(
    proxies: list[Proxy], figures: Figures, args: argparse.Namespace, load_cpus: str | None
) -> None:
    total = int(args.gib * GIB)
    gigabytes = total / 1e9
    for proxy in proxies:
        for direction in ("download", "upload"):
            seconds, cpu = measured(
                proxy.child.pid,
                lambda d=direction, p=proxy: run_bulk(p, d, args, load_cpus),
            )
            figures.add(proxy.name, f"{direction} GB/s", gigabytes / seconds)
            figures.add(proxy.name, f"{direction} CPU s/GB", cpu / gigabytes)
            figures.add(proxy.name, f"{direction} proxy CPU %", cpu / seconds * 100)
        for what, headers in (("keep-alive", ()), ("new conn", ("Connection: close",))):
            url = f"http://127.0.0.1:{proxy.small_port}/"
            result, cpu = measured(
                proxy.child.pid,
                lambda h=headers, u=url: run_wrk(u, args.seconds, WRK_CONNECTIONS, 1, h, load_cpus),
            )
            if result.errors:
                print(f"  {proxy.name} small {what}: {result.errors} errors", file=sys.stderr)
            figures.add(proxy.name, f"small {what} req/s", result.requests_per_second)
            figures.add(proxy.name, f"small {what} CPU µs/req", cpu / result.requests * 1e6)
        last = {
            metric: values[-1]
            for (name, metric), values in figures.values.items()
            if name == proxy.name
        }
        print(
            f"  {proxy.name}: download {last['download GB/s']:.2f} GB/s, "
            f"upload {last['upload GB/s']:.2f} GB/s, "
            f"keep-alive {last['small keep-alive req/s']:,.0f} req/s, "
            f"new conn {last['small new conn req/s']:,.0f}/s",
            file=sys.stderr,
        )


METRICS = (
    ("download GB/s", "{:.2f}"),
    ("download CPU s/GB", "{:.3f}"),
    ("download proxy CPU %", "{:.0f}"),
    ("upload GB/s", "{:.2f}"),
    ("upload CPU s/GB", "{:.3f}"),
    ("upload proxy CPU %", "{:.0f}"),
    ("small keep-alive req/s", "{:,.0f}"),
    ("small keep-alive CPU µs/req", "{:.1f}"),
    ("small new conn req/s", "{:,.0f}"),
    ("small new conn CPU µs/req", "{:.1f}"),
)


def report(figures: Figures, args: argparse.Namespace, pinning: str, command: str) -> str:
    header = (
        "| metric | "
        + " | ".join(TARGETS)
        + " | "
        + " | ".join(f"{t} / {BASELINE}" for t in TARGETS if t != BASELINE)
        + " | splice / copy |"
    )
    lines = [
        "# Layer 4: maitred copy vs splice vs HAProxy mode tcp",
        "",
        f"Command: `{command}`",
        "",
        f"{args.rounds} rounds; bulk passes move {args.gib:g} GiB through {args.connections} "
        f"concurrent connections; small exchanges: wrk -t1 -c{WRK_CONNECTIONS} -d{args.seconds:g}s "
        "GET / (6-byte body) over the relay to four nginx origins. Medians over rounds; ratios "
        "are medians of per-round ratios. CPU is the proxy process's utime + stime while the "
        f"pass ran. Pinning: {pinning}. Host: {os.cpu_count()} CPUs, kernel {os.uname().release}.",
        "",
        header,
        "|" + "---|" * (1 + len(TARGETS) + len(TARGETS) - 1 + 1),
    ]
    for metric, fmt in METRICS:
        cells = [fmt.format(figures.median(t, metric)) for t in TARGETS]
        ratios = [f"{figures.ratio(t, metric):.2f}" for t in TARGETS if t != BASELINE]
        copy_values = figures.values.get((COPY, metric), [])
        splice_values = figures.values.get((SPLICE, metric), [])
        pairs = [s / c for s, c in zip(splice_values, copy_values, strict=False) if c]
        versus_copy = f"{statistics.median(pairs):.2f}" if pairs else "n/a"
        lines.append(f"| {metric} | " + " | ".join(cells + ratios) + f" | {versus_copy} |")
    lines += ["", "Per round:", ""]
    for (target, metric), values in sorted(figures.values.items()):
        lines.append(f"- {target}, {metric}: " + ", ".join(f"{v:.4g}" for v in values))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tcp_bench", description=__doc__)
    sub = parser.add_subparsers(dest="role")
    origin = sub.add_parser("origin", help="(internal) the bulk origin")
    origin.add_argument("--port", type=int, required=True)
    origin.add_argument("--file", type=Path, required=True)
    client = sub.add_parser("client", help="(internal) one bulk pass")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--direction", choices=("download", "upload"), required=True)
    client.add_argument("--bytes", type=int, required=True)
    client.add_argument("--connections", type=int, required=True)
    client.add_argument("--file", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gib", type=float, default=1.0, help="GiB per bulk pass")
    parser.add_argument("--connections", type=int, default=4, help="bulk connections at once")
    parser.add_argument("--seconds", type=float, default=5.0, help="per small-exchange pass")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--target", action="append", choices=TARGETS, help="only these (repeatable)"
    )
    parser.add_argument("--results", type=Path, default=PROJECT_ROOT / "bench" / "RESULTS-tcp.md")
    args = parser.parse_args(argv)

    if args.role == "origin":
        serve_bulk_origin(args.port, args.file)
        return 0
    if args.role == "client":
        result = bulk_client(args.port, args.direction, args.bytes, args.connections, args.file)
        print(json.dumps(result))
        return 0

    ensure_installed(["haproxy", "nginx", "wrk", "taskset"])
    load_cpus, proxy_cpu, pinning = cpu_plan(not args.no_pin)
    workdir = fresh_directory(PROJECT_ROOT / "bench" / "out" / "tcp-run")
    data_file = args.data_file = workdir / "bulk.bin"
    data_file.write_bytes(os.urandom(ORIGIN_FILE_BYTES))
    figures = Figures()
    with Supervisor() as supervisor:
        small = origin_servers.start(supervisor, workdir, load_cpus)
        bulk_port = free_port()
        origin_argv = [sys.executable, "-m", "bench.tcp_bench", "origin"]
        origin_argv += ["--port", str(bulk_port), "--file", str(data_file)]
        bulk_origin = supervisor.start(
            "bulk origin", origin_argv, workdir / "bulk-origin.log", load_cpus, checkout_env()
        )
        _wait_for_port(bulk_origin, bulk_port)
        proxies = [
            start_proxy(name, supervisor, workdir, bulk_port, small.ports, proxy_cpu)
            for name in args.target or TARGETS
        ]
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}/{args.rounds}", file=sys.stderr)
            one_round(proxies, figures, args, load_cpus)
    command = "python -m bench.tcp_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(figures, args, pinning, command.strip())
    args.results.write_text(text)
    print(text)
    return 0


def _wait_for_port(child: Child, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline and child.alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\n")
                if sock.recv(16) == b"PONG\n":
                    return
        except OSError:
            pass
        time.sleep(0.1)  # polling a port another process opens: no event to await
    raise SystemExit(f"bench: bulk origin did not start:\n{child.log_tail()}")


if __name__ == "__main__":
    raise SystemExit(main())
