"""`python -m bench.shared_state_bench`: what sharing decisions between workers costs.

- rate limit decision, µs: the in-process table (one worker) against the
  shared-memory table (several workers), for a hot key and for new keys; and
  the two locks considered for the shared table (fcntl byte-range lock, POSIX
  semaphore in the region through ctypes), a lock and an unlock each.
- memory of the shared table for 1,000,000 keys: the region's size, and the
  resident memory once 1,000,000 distinct keys went through it.
- least connections: one pick with the other workers' counts refreshed (per
  server of the pool), against a pick on this worker's counts alone.

Prints Markdown; no sockets, one process (contention is not measured here).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import fcntl
import os
import time

from maitred.balancing import Balancer, LiveServer
from maitred.control.active_counts import WorkerActiveCounts, region_bytes
from maitred.control.shared_memory import SharedRegion
from maitred.policies.gcra import GcraRate
from maitred.policies.rate_limit_shared import SharedLimit, SharedRateTable, table_bytes
from maitred.policies.rate_limit_table import LocalLimiter

RATE = GcraRate.of(1_000_000_000, 1.0, 1_000_000)


def per_call_us(count: int, run: object) -> float:
    assert callable(run)
    start = time.perf_counter()
    run(count)
    return (time.perf_counter() - start) / count * 1e6


def rate_limit_figures(count: int) -> dict[str, float]:
    local = LocalLimiter(RATE, 2_000_000)
    region = SharedRegion.create("bench", table_bytes(2_000_000))
    SharedRateTable.initialize(region.memory, 2_000_000)
    table = SharedRateTable(region.memory, region.fd)
    limit = [SharedLimit(RATE, b"bench")]
    keys = [b"10.%d.%d.%d" % (i >> 16 & 255, i >> 8 & 255, i & 255) for i in range(count)]
    str_keys = [key.decode() for key in keys]

    def local_hot(n: int) -> None:
        for _ in range(n):
            local.check("10.0.0.1", time.monotonic())

    def local_new(n: int) -> None:
        for key in str_keys[:n]:
            local.check(key, time.monotonic())

    def shared_hot(n: int) -> None:
        hot = [b"10.0.0.1"]
        for _ in range(n):
            table.decide(limit, hot)

    def shared_new(n: int) -> None:
        for key in keys[:n]:
            table.decide(limit, [key])

    figures = {
        "local table, hot key µs": per_call_us(count, local_hot),
        "local table, new keys µs": per_call_us(count, local_new),
        "shared table, hot key µs": per_call_us(count, shared_hot),
        "shared table, new keys µs": per_call_us(count, shared_new),
    }
    table.close()
    region.close()
    figures.update(lock_figures(count))
    return figures


def lock_figures(count: int) -> dict[str, float]:
    fd = os.memfd_create("bench-lock")
    os.ftruncate(fd, 4096)

    def fcntl_pair(n: int) -> None:
        for stripe in range(n):
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, stripe & 4095)
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, stripe & 4095)

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    semaphore = ctypes.create_string_buffer(64)  # sem_t is 32 bytes on x86-64
    libc.sem_init(semaphore, 1, 1)
    wait, post = libc.sem_wait, libc.sem_post

    def semaphore_pair(n: int) -> None:
        for _ in range(n):
            wait(semaphore)
            post(semaphore)

    figures = {
        "fcntl lock+unlock µs": per_call_us(count, fcntl_pair),
        "semaphore wait+post µs": per_call_us(count, semaphore_pair),
    }
    os.close(fd)
    return figures


def memory_figures(keys: int) -> dict[str, float]:
    region = SharedRegion.create("bench-memory", table_bytes(keys))
    SharedRateTable.initialize(region.memory, keys)
    table = SharedRateTable(region.memory, region.fd)
    limit = [SharedLimit(GcraRate.of(1, 3600.0, 10), b"memory")]
    for index in range(keys):
        table.decide(limit, [b"%d" % index])
    resident = _resident_bytes(region.fd)
    used = table.active_keys(time.monotonic_ns())
    table.close()
    region.close()
    return {
        "shared table bytes (region)": float(table_bytes(keys)),
        "shared table bytes/key (region)": table_bytes(keys) / keys,
        "shared table bytes/key (resident)": resident / keys,
        "keys kept of those inserted": used / keys,
    }


def _resident_bytes(fd: int) -> float:
    # A memfd's pages are charged as shmem; its size is allocated only when touched.
    return float(os.fstat(fd).st_blocks * 512)


def least_connections_figures(count: int, pool_size: int) -> dict[str, float]:
    rows = 8
    region = SharedRegion.create("bench-active", region_bytes(rows, pool_size))
    view = memoryview(region.memory).cast("q")
    servers = [LiveServer(f"s{i}", "127.0.0.1", 1000 + i) for i in range(pool_size)]
    counts = WorkerActiveCounts(view, rows, 0)
    counts.slots = {server.id: index for index, server in enumerate(servers)}
    alone = Balancer("least_connections", servers)
    shared = Balancer("least_connections", servers)
    for server in servers:
        counts.bind(server)

    def pick(balancer: Balancer, refresh: bool, n: int) -> None:
        now = 0.0
        for _ in range(n):
            now += 1.0 if refresh else 0.0
            server = balancer.pick("", {}, now)
            assert server is not None
            server.active += 1
            server.active -= 1

    local_us = per_call_us(count, lambda n: pick(alone, False, n))
    shared.remote_load = counts
    shared_us = per_call_us(count, lambda n: pick(shared, True, n))
    counts.close()
    view.release()
    region.close()
    return {
        f"pick, {pool_size} servers, own counts µs": local_us,
        f"pick, {pool_size} servers, refreshed every pick µs": shared_us,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shared_state_bench")
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    figures = rate_limit_figures(args.count)
    figures.update(memory_figures(args.keys))
    for size in (3, 30):
        figures.update(least_connections_figures(args.count // 4, size))
    print("| measure | value |\n|---|---|")
    for name, value in figures.items():
        print(f"| {name} | {value:,.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
