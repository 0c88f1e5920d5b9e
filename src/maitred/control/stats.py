"""Rates and percentiles, computed on the control side from the data plane's counters.

The hot path only increments integers (``LiveServer.requests``, ``answers``,
``PoolRuntime.latency_counts``...). Once a second the ``Sampler`` copies them
into a small ring; a rate is the difference between now and a sample some
seconds ago, a percentile comes from the difference between two histograms.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from maitred.balancing.base import LiveServer
from maitred.proxy.routing import LATENCY_BUCKETS, PoolRuntime

#: Seconds of history kept (the dashboard's charts) and the window rates are taken over.
HISTORY_SECONDS = 300
RATE_WINDOW = 10.0
SAMPLE_INTERVAL = 1.0
PERCENTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class ServerCounters:
    requests: int
    active: int
    answers: tuple[int, ...]
    #: Seconds spent on the server's requests, when the data plane counts it (else None).
    latency_sum: float | None

    @classmethod
    def read(cls, server: LiveServer) -> ServerCounters:
        return cls(server.requests, server.active, tuple(server.answers), _latency_sum(server))


@dataclass(frozen=True, slots=True)
class PoolCounters:
    requests: int
    retries: int
    latency_counts: tuple[int, ...]
    latency_sum: float

    @classmethod
    def read(cls, pool: PoolRuntime) -> PoolCounters:
        return cls(pool.requests, pool.retries, tuple(pool.latency_counts), pool.latency_sum)

    @property
    def completed(self) -> int:
        return sum(self.latency_counts)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic seconds
    wall: float  # Unix time, for charts
    servers: dict[str, ServerCounters]
    pools: dict[str, PoolCounters]
    client_connections: int


def take_sample(
    pools: dict[str, PoolRuntime], client_connections: int, now: float | None = None
) -> Sample:
    servers = {s.id: ServerCounters.read(s) for pool in pools.values() for s in pool_servers(pool)}
    return Sample(
        at=time.monotonic() if now is None else now,
        wall=time.time(),
        servers=servers,
        pools={name: PoolCounters.read(pool) for name, pool in pools.items()},
        client_connections=client_connections,
    )


def pool_servers(pool: PoolRuntime) -> Sequence[LiveServer]:
    return pool.balancer.servers


def _latency_sum(server: LiveServer) -> float | None:
    # Per-server latency needs one float add per request on the data plane
    # (LiveServer.latency_sum); read it when the data plane keeps it.
    value = getattr(server, "latency_sum", None)
    return value if isinstance(value, float) else None


class Sampler:
    """A ring of one sample per second over the last ``HISTORY_SECONDS``."""

    def __init__(self, read: Callable[[], Sample], history: int = HISTORY_SECONDS) -> None:
        self._read = read
        self.samples: deque[Sample] = deque(maxlen=history + 1)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.samples.append(self._read())
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            self.samples.append(self._read())

    def now(self) -> Sample:
        return self._read()

    def baseline(self, current: Sample, window: float = RATE_WINDOW) -> Sample | None:
        """The newest sample at least ``window`` seconds older than ``current``, else the
        oldest one (right after start)."""
        chosen = None
        for sample in self.samples:
            if current.at - sample.at >= window:
                chosen = sample
            else:
                break
        if chosen is None and self.samples and self.samples[0].at < current.at:
            chosen = self.samples[0]
        return chosen


# -- arithmetic over two samples ---------------------------------------------------


def rate(new: float, old: float, seconds: float) -> float:
    return max(new - old, 0) / seconds if seconds > 0 else 0.0


def bucket_deltas(new: Sequence[int], old: Sequence[int] | None) -> list[int]:
    if old is None or len(old) != len(new):
        return list(new)
    return [max(a - b, 0) for a, b in zip(new, old, strict=True)]


def sum_buckets(histograms: Iterable[Sequence[int]]) -> list[int]:
    total = [0] * (len(LATENCY_BUCKETS) + 1)
    for counts in histograms:
        for index, count in enumerate(counts[: len(total)]):
            total[index] += count
    return total


def percentile(counts: Sequence[int], fraction: float) -> float | None:
    """Seconds below which ``fraction`` of the counted requests fall, interpolated
    linearly inside the bucket (as Prometheus' histogram_quantile does); None when empty.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]  # the +Inf bucket: the last bound is all we know
            lower = LATENCY_BUCKETS[index - 1] if index > 0 else 0.0
            upper = LATENCY_BUCKETS[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    return LATENCY_BUCKETS[-1]


def percentiles_ms(counts: Sequence[int]) -> dict[str, float | None]:
    result: dict[str, float | None] = {}
    for fraction in PERCENTILES:
        value = percentile(counts, fraction)
        result[f"p{round(fraction * 100)}"] = None if value is None else round(value * 1000, 3)
    return result


def error_share(answers_new: Sequence[int], answers_old: Sequence[int] | None) -> float:
    """The share of 5xx among the answers between two samples (0.0 when none)."""
    deltas = bucket_deltas(answers_new, answers_old)
    total = sum(deltas)
    return deltas[5] / total if total else 0.0
