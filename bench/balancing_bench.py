"""Picks per second of every balancing algorithm at 10 and 1,000 servers.

``python -m bench.balancing_bench`` (or ``python bench/balancing_bench.py``).

Each pick goes through ``Balancer.pick`` exactly as the data plane calls it and
is followed by the data plane's own bookkeeping: ``active`` goes up, and down
again ``IN_FLIGHT`` picks later with a latency sample. Strategies that keep
servers ordered by load pay for that bookkeeping here, so the figures are per
request, not per bare pick.

Selection is O(1) or O(log n), so the rate at 1,000 servers should stay close
to the rate at 10. The last row is NGINX's smooth weighted round robin as NGINX
writes it (a scan of every server per pick), for contrast: that is what O(n)
looks like in this table.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

try:
    from maitred.balancing import ALGORITHMS, Balancer, LiveServer
except ModuleNotFoundError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from maitred.balancing import ALGORITHMS, Balancer, LiveServer

POOL_SIZES = (10, 1_000)
#: Requests in flight at once: each pick's ``active`` stays up for this many picks.
IN_FLIGHT = 32
REFERENCE = "nginx swrr scan, O(n)"
#: Each cell is the best of this many runs: other processes only ever slow a run down.
REPEATS = 3
#: (client_ip, now) -> server, as Balancer.pick with no headers.
Picker = Callable[[str, float], LiveServer | None]


def make_pool(size: int) -> list[LiveServer]:
    weights = random.Random(7)
    return [
        LiveServer(f"s{i}", f"10.0.{i // 250}.{i % 250 + 1}", 8080, weight=weights.randint(1, 5))
        for i in range(size)
    ]


def balancer_picker(algorithm: str, servers: list[LiveServer]) -> tuple[Picker, Balancer]:
    balancer = Balancer(algorithm, servers, rng=random.Random(11), now=0.0)
    headers: Sequence[tuple[bytes, bytes]] = ((b"Host", b"example.com"),)

    def pick(client_ip: str, now: float) -> LiveServer | None:
        return balancer.pick(client_ip, headers, now)

    return pick, balancer


def nginx_scan_picker(servers: list[LiveServer]) -> Picker:
    current = [0] * len(servers)
    weights = [server.weight for server in servers]
    total = sum(weights)

    def pick(client_ip: str, now: float) -> LiveServer | None:
        best = -1
        for index, weight in enumerate(weights):
            current[index] += weight
            if best < 0 or current[index] > current[best]:
                best = index
        current[best] -= total
        return servers[best]

    return pick


def picks_per_second(row: str, size: int, duration: float) -> float:
    return max(one_run(row, size, duration / REPEATS) for _ in range(REPEATS))


def one_run(row: str, size: int, duration: float) -> float:
    servers = make_pool(size)
    balancer: Balancer | None = None
    if row == REFERENCE:
        pick = nginx_scan_picker(servers)
    else:
        pick, balancer = balancer_picker(row, servers)
    clients = [f"192.0.2.{index % 250}" for index in range(1_000)]
    in_flight: deque[LiveServer] = deque()
    picks = 0
    now = 1_000.0
    started = time.perf_counter()
    deadline = started + duration
    while time.perf_counter() < deadline:
        for client in clients:
            now += 0.0001
            server = pick(client, now)
            assert server is not None
            server.active += 1
            in_flight.append(server)
            if len(in_flight) > IN_FLIGHT:
                done = in_flight.popleft()
                done.active -= 1
                if balancer is not None:
                    balancer.observe(done, 0.01, now)
        picks += len(clients)
    return picks / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.balancing_bench", description=__doc__)
    parser.add_argument(
        "--duration", type=float, default=1.0, help="seconds per cell (default 1; best of 3 runs)"
    )
    parser.add_argument(
        "--algorithm", action="append", choices=ALGORITHMS, help="only this one (repeatable)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the O(n) reference row")
    args = parser.parse_args(argv)
    rows = list(args.algorithm or ALGORITHMS)
    if not args.no_reference:
        rows.append(REFERENCE)
    sizes = "".join(f"{f'{size:,} servers':>16}" for size in POOL_SIZES)
    header = f"{'algorithm':<28}{sizes}{'1,000 / 10':>12}"
    print("requests per second (Balancer.pick + active up/down + observe), one core")
    print(header)
    print("-" * len(header))
    for row in rows:
        rates = [picks_per_second(row, size, args.duration) for size in POOL_SIZES]
        cells = "".join(f"{rate:>16,.0f}" for rate in rates)
        print(f"{row:<28}{cells}{rates[-1] / rates[0]:>12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
