"""Soak: minutes of mixed traffic with faults through a real maitred; RSS and fds stay flat.

    python -m bench.soak [--minutes 10] [--clients 8] [--interval 5]

Two demo backends and one misbehaving server (garbage, resets, closes mid-body,
surplus bytes, stalls) share the default pool; ``/fault/`` goes to the
misbehaving one alone. Client threads mix keep-alive GETs, uploads (length and
chunked), pipelined pairs, HEADs, faulty paths, malformed requests, clients that
stall mid-head or mid-body and clients that reset mid-answer.

Every ``--interval`` seconds the balancer's resident memory (VmRSS of
/proc/PID/status) and open descriptors (/proc/PID/fd) are sampled and printed.
After a warm-up, the last quarter of the run is compared with the first: the
run fails (exit 1) when memory grew more than ``--rss-tolerance-mb`` or the
descriptors more than ``--fd-tolerance``, or when the balancer died. Every loop
is bounded by the deadline; everything stops by itself. Not run in CI.
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.backends import BackendProcess, connect, read_response, start_backends
from tests.support.bad_backends import (
    Behaviour,
    Peer,
    Request,
    ScriptedServer,
    good_answer,
    hold,
    send_raw,
    send_then_reset,
)
from tests.support.balancer import BalancerProcess

CLIENT_TIMEOUT = 5.0

FAULTS: list[Behaviour] = [
    send_raw(b"garbage\r\n\r\n", then_close=True),
    send_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok"),
    send_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", then_close=True),
    send_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokSURPLUS"),
    send_raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", then_close=True),
    send_then_reset(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nreset"),
    send_then_reset(b""),
    hold,  # the balancer's response timeout answers 504
    good_answer,
]


def random_fault(peer: Peer, request: Request) -> bool:
    return random.choice(FAULTS)(peer, request)


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1


# -- what clients do ------------------------------------------------------------------------


def _exchange(port: int, raw: bytes, method: str = "GET", answers: int = 1) -> str:
    with connect("127.0.0.1", port, CLIENT_TIMEOUT) as sock:
        sock.sendall(raw)
        statuses = [read_response(sock, method).status for _ in range(answers)]
    return "/".join(str(status) for status in statuses)


def keep_alive_gets(port: int) -> str:
    with connect("127.0.0.1", port, CLIENT_TIMEOUT) as sock:
        statuses = set()
        for _ in range(10):
            sock.sendall(b"GET /?soak HTTP/1.1\r\nHost: soak\r\n\r\n")
            statuses.add(read_response(sock).status)
    return "keepalive " + "/".join(str(s) for s in sorted(statuses))


def upload_length(port: int) -> str:
    body = random.randbytes(random.randint(0, 200_000))
    head = b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % len(body)
    return "upload " + _exchange(port, head + body, "POST")


def upload_chunked(port: int) -> str:
    chunks = [random.randbytes(random.randint(1, 5000)) for _ in range(random.randint(1, 20))]
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = b"POST /upload HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\n"
    return "chunked " + _exchange(port, head + body, "POST")


def pipelined(port: int) -> str:
    raw = (
        b"POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /bytes?n=3000 HTTP/1.1\r\nHost: soak\r\n\r\n"
    )
    return "pipelined " + _exchange(port, raw, answers=2)


def head(port: int) -> str:
    return "head " + _exchange(port, b"HEAD /bytes?n=5000 HTTP/1.1\r\nHost: soak\r\n\r\n", "HEAD")


def faulty(port: int) -> str:
    try:
        return "fault " + _exchange(port, b"GET /fault/x HTTP/1.1\r\nHost: soak\r\n\r\n")
    except (OSError, ValueError):
        return "fault cut"


def malformed(port: int) -> str:
    raw = random.choice(
        [
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
    )
    return "malformed " + _exchange(port, raw)


def stalled_head(port: int) -> str:
    """A partial head, then silence: the header timeout answers 408."""
    return "stalled-head " + _exchange(port, b"GET / HTTP/1.1\r\nHost: soak\r\nX-Slow:")


def stalled_body(port: int) -> str:
    """Half a body, then silence: the body timeout answers 408."""
    raw = b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 100\r\n\r\nhalf"
    return "stalled-body " + _exchange(port, raw, "POST")


def reset_mid_answer(port: int) -> str:
    """Ask for a big answer, read a little, reset (RST) the connection."""
    sock = connect("127.0.0.1", port, CLIENT_TIMEOUT)
    sock.sendall(b"GET /bytes?n=5000000 HTTP/1.1\r\nHost: soak\r\n\r\n")
    sock.recv(4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return "reset-mid-answer"


def abandon_mid_upload(port: int) -> str:
    sock = connect("127.0.0.1", port, CLIENT_TIMEOUT)
    sock.sendall(b"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 1000000\r\n\r\n")
    sock.sendall(random.randbytes(100_000))
    sock.close()
    return "abandoned-upload"


ACTIONS = [
    (keep_alive_gets, 30),
    (upload_length, 8),
    (upload_chunked, 8),
    (pipelined, 8),
    (head, 5),
    (faulty, 15),
    (malformed, 5),
    (stalled_head, 2),
    (stalled_body, 2),
    (reset_mid_answer, 4),
    (abandon_mid_upload, 3),
]


def client_loop(port: int, deadline: float, tally: Tally, seed: int) -> None:
    chooser = random.Random(seed)
    actions, weights = zip(*ACTIONS, strict=True)
    while time.monotonic() < deadline:
        action = chooser.choices(actions, weights)[0]
        try:
            tally.add(action(port))
        except (OSError, ValueError) as exc:
            tally.add(f"{action.__name__} error {type(exc).__name__}")


# -- the balancer's figures ---------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def config(good: list[BackendProcess], bad: ScriptedServer) -> str:
    servers = "".join(f"      - {{address: {b.address}}}\n" for b in good)
    return f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    timeouts: {{client_header: 1s, client_body: 1s, idle: 5s}}
    routes:
      - match: {{path_prefix: /fault/}}
        pool: faulty
    pool: web
pools:
  web:
    servers:
{servers}      - {{address: {bad.address}}}
    outlier_detection: {{enabled: false}}
    timeouts: {{connect: 1s, response: 1s}}
  faulty:
    servers: [{{address: {bad.address}}}]
    outlier_detection: {{enabled: false}}
    retries: {{attempts: 0}}
    timeouts: {{connect: 1s, response: 1s}}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--rss-tolerance-mb", type=float, default=20.0)
    parser.add_argument("--fd-tolerance", type=int, default=10)
    args = parser.parse_args()

    good = start_backends(2, prefix="soak")
    bad = ScriptedServer(default=random_fault)
    workdir = Path(tempfile.mkdtemp(prefix="maitred-soak-"))
    balancer = BalancerProcess(config(good, bad), workdir)
    tally = Tally()
    samples: list[tuple[float, float, int]] = []
    started = time.monotonic()
    deadline = started + args.minutes * 60
    clients = [
        threading.Thread(
            target=client_loop, args=(balancer.port, deadline, tally, seed), daemon=True
        )
        for seed in range(args.clients)
    ]
    try:
        for client in clients:
            client.start()
        print(
            f"soak: {args.minutes:g} min, {args.clients} clients, balancer pid {balancer.proc.pid}"
        )
        print(f"{'t (s)':>7} {'RSS (MiB)':>10} {'fds':>5} {'requests':>9}")
        tick = threading.Event()
        while time.monotonic() < deadline and balancer.proc.poll() is None:
            pid = balancer.proc.pid
            elapsed = time.monotonic() - started
            samples.append((elapsed, rss_mib(pid), open_fds(pid)))
            done = sum(tally.outcomes.values())
            print(
                f"{elapsed:7.0f} {samples[-1][1]:10.1f} {samples[-1][2]:5d} {done:9d}", flush=True
            )
            tick.wait(min(args.interval, max(0.0, deadline - time.monotonic())))
        for client in clients:
            client.join(CLIENT_TIMEOUT * 3)
        alive = balancer.proc.poll() is None
        if alive:
            samples.append((time.monotonic() - started, rss_mib(pid), open_fds(pid)))
    finally:
        balancer.kill()
        bad.close()
        for backend in good:
            backend.kill()

    print("\noutcomes:")
    for outcome, count in sorted(tally.outcomes.items()):
        print(f"  {count:8d}  {outcome}")
    return verdict(samples, alive, args.rss_tolerance_mb, args.fd_tolerance)


def verdict(
    samples: list[tuple[float, float, int]], alive: bool, rss_tolerance: float, fd_tolerance: int
) -> int:
    if not alive:
        print("FAIL: the balancer died")
        return 1
    steady = samples[1:]  # the first sample is before any traffic settled
    if len(steady) < 4:
        print("FAIL: too few samples for a verdict (run longer or sample more often)")
        return 1
    quarter = max(1, len(steady) // 4)
    first, last = steady[:quarter], steady[-quarter:]
    rss_growth = statistics.mean(s[1] for s in last) - statistics.mean(s[1] for s in first)
    fd_growth = statistics.mean(s[2] for s in last) - statistics.mean(s[2] for s in first)
    print(
        f"\nRSS {statistics.mean(s[1] for s in first):.1f} -> "
        f"{statistics.mean(s[1] for s in last):.1f} MiB ({rss_growth:+.1f}, "
        f"tolerance {rss_tolerance:g}); fds {statistics.mean(s[2] for s in first):.0f} -> "
        f"{statistics.mean(s[2] for s in last):.0f} ({fd_growth:+.0f}, tolerance {fd_tolerance})"
    )
    if rss_growth > rss_tolerance or fd_growth > fd_tolerance:
        print("FAIL: the balancer's resources grew")
        return 1
    print("PASS: flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
