"""Picks per second of every balancing algorithm at 10 and 1,000 servers.

``python -m bench.balancing_bench`` (or ``python bench/balancing_bench.py``).
Each pick goes through ``Balancer.pick`` as the data plane calls it, followed by
the data plane's own bookkeeping (``active`` up, then down again a few picks
later), so strategies that track load pay for it here. Selection is O(1) or
O(log n): the rate at 1,000 servers should stay close to the rate at 10.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

try:
    from maitred.balancing import ALGORITHMS, Balancer, LiveServer
except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from maitred.balancing import ALGORITHMS, Balancer, LiveServer

POOL_SIZES = (10, 1_000)
#: Requests in flight at once: each pick's ``active`` stays up for this many picks.
IN_FLIGHT = 32


def make_pool(size: int, rng: random.Random) -> list[LiveServer]:
    return [
        LiveServer(f"s{index}", f"10.0.{index // 250}.{index % 250 + 1}", 8080, rng.randint(1, 5))
        for index in range(size)
    ]


def picks_per_second(algorithm: str, size: int, duration: float) -> float:
    rng = random.Random(7)
    balancer = Balancer(algorithm, make_pool(size, rng), rng=random.Random(11))
    clients = [f"192.0.2.{index % 250}" for index in range(1_000)]
    headers: Sequence[tuple[bytes, bytes]] = ((b"Host", b"example.com"),)
    in_flight: deque[LiveServer] = deque()
    picks = 0
    started = time.perf_counter()
    deadline = started + duration
    now = 1_000.0
    while True:
        for client in clients:
            now += 0.0001
            server = balancer.pick(client, headers, now)
            assert server is not None
            server.active += 1
            in_flight.append(server)
            if len(in_flight) > IN_FLIGHT:
                done = in_flight.popleft()
                done.active -= 1
                balancer.observe(done, 0.01, now)
        picks += len(clients)
        elapsed = time.perf_counter() - started
        if time.perf_counter() >= deadline:
            return picks / elapsed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.balancing_bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per cell (default 1)")
    parser.add_argument("--algorithm", action="append", choices=ALGORITHMS, help="repeatable")
    args = parser.parse_args(argv)
    algorithms = args.algorithm or list(ALGORITHMS)
    header = f"{'algorithm':<28}" + "".join(f"{f'{n:,} servers':>16}" for n in POOL_SIZES)
    print("picks per second (pick + active up/down + observe)")
    print(header + f"{'1,000 / 10':>12}")
    print("-" * (len(header) + 12))
    for algorithm in algorithms:
        rates = [picks_per_second(algorithm, size, args.duration) for size in POOL_SIZES]
        cells = "".join(f"{rate:>16,.0f}" for rate in rates)
        print(f"{algorithm:<28}{cells}{rates[-1] / rates[0]:>12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
