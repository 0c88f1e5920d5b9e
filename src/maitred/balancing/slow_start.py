"""Slow start: a server that has just become available takes a growing share.

A server that comes back (or joins) with cold caches and empty connection pools
is easy to overwhelm, and a load-aware strategy such as least connections would
send it every new request at once. For ``slow_start`` seconds after
``available_since`` its effective weight therefore ramps linearly from
``SLOW_START_FLOOR`` of its weight to all of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from maitred.balancing.base import LiveServer

#: The share a server starts with: small, but never zero, so it still gets probed.
SLOW_START_FLOOR: Final = 0.1
#: How many times the Balancer re-weighs a ramping pool over one slow-start period.
RAMP_STEPS: Final = 20


def ramp_factor(server: LiveServer, now: float, slow_start: float | None) -> float:
    """The fraction (SLOW_START_FLOOR..1) of its weight ``server`` gets at ``now``."""
    if not slow_start:
        return 1.0
    elapsed = now - server.available_since
    if elapsed >= slow_start:
        return 1.0
    return max(SLOW_START_FLOOR, elapsed / slow_start)


def next_ramp_step(servers: Iterable[LiveServer], now: float, slow_start: float | None) -> float:
    """When the effective weights of ``servers`` should next be recomputed (inf: never).

    Steps are ``slow_start / RAMP_STEPS`` apart, and one lands exactly when the
    earliest ramp ends, so a server reaches its full weight on time.
    """
    if not slow_start:
        return math.inf
    earliest_end = min(
        (end for server in servers if (end := server.available_since + slow_start) > now),
        default=math.inf,
    )
    if earliest_end == math.inf:
        return math.inf
    return min(now + slow_start / RAMP_STEPS, earliest_end)
