"""When the next check of a server runs: spread and jitter, as pure functions.

Two things keep a balancer from checking all servers in lockstep (which makes
every backend see a burst of checks at once, and the balancer a burst of
connects): the first check of each server is placed at a random point of one
interval, and every later delay is the interval stretched or shrunk by up to
``JITTER`` at random, so servers that happened to line up drift apart again.
The random source is passed in, so tests can replay a schedule exactly.
"""

from __future__ import annotations

import random

__all__ = ["JITTER", "check_times", "first_check_delay", "next_check_delay"]

#: Each delay is the interval times a factor drawn from [1 - JITTER, 1 + JITTER].
JITTER = 0.1


def first_check_delay(interval: float, rng: random.Random) -> float:
    """The delay before a server's first check: anywhere within one interval."""
    return rng.uniform(0.0, interval)


def next_check_delay(interval: float, rng: random.Random, jitter: float = JITTER) -> float:
    """The delay between one check's end and the next check's start."""
    return interval * rng.uniform(1.0 - jitter, 1.0 + jitter)


def check_times(
    interval: float, count: int, rng: random.Random, spread_start: bool = True
) -> list[float]:
    """The start times of ``count`` checks of one server (checks taking no time).

    What the checker's loop does, without the waiting; used to reason about and
    test the schedule.
    """
    now = first_check_delay(interval, rng) if spread_start else 0.0
    times = []
    for _ in range(count):
        times.append(now)
        now += next_check_delay(interval, rng)
    return times
