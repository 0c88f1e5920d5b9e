"""The generic cell rate algorithm (GCRA): a token bucket kept as one timestamp.

A limit of ``rate`` requests per ``per`` seconds, bursting to ``burst``, has an
emission interval ``T = per / rate`` and a capacity ``burst * T``. Each key keeps
one number, its theoretical arrival time (TAT): when its bucket would be full
again. A request at ``now`` is admitted when ``max(TAT, now) + T - capacity <=
now``, and then moves the TAT to ``max(TAT, now) + T``. So a fresh key admits
``burst`` requests at once, then one every ``T``; a key whose TAT is not after
``now`` is indistinguishable from a key never seen, so it can be forgotten.

Time is whole nanoseconds (``T`` rounded down, so a client pacing itself at
exactly the configured rate is never refused): integer arithmetic keeps the
burst boundary exact however long the process has run. Sans-I/O: the caller
passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

NANOSECONDS = 1_000_000_000


class Decision(NamedTuple):
    allowed: bool
    #: Requests that would still be admitted right now, after this one.
    remaining: int
    #: Seconds until a refused request would be admitted (0.0 when admitted).
    retry_after: float
    #: Seconds until the key's bucket is full again (the key is as good as new).
    reset_after: float


@dataclass(frozen=True, slots=True)
class GcraRate:
    """One limit's constants, in nanoseconds."""

    interval: int
    burst: int
    capacity: int

    @classmethod
    def of(cls, rate: int, per: float, burst: int) -> GcraRate:
        """``rate`` requests per ``per`` seconds, ``burst`` at once."""
        if rate < 1 or burst < 1 or per <= 0:
            raise ValueError("rate and burst must be >= 1 and per > 0")
        interval = max(1, round(per * NANOSECONDS) // rate)
        return cls(interval, burst, interval * burst)


def evaluate(rate: GcraRate, tat: int | None, now: int) -> tuple[Decision, int]:
    """The decision for one more request at ``now`` (ns) against a key's ``tat``.

    Returns the decision and the TAT to keep: the new one when admitted, the
    old one (clamped) when refused. ``tat`` None is a key never seen.
    """
    interval = rate.interval
    capacity = rate.capacity
    if tat is None or tat < now:
        tat = now
    elif tat > now + capacity:
        # Only a clock that went backwards gets here: count the key as empty,
        # not as owing the whole jump.
        tat = now + capacity
    new_tat = tat + interval
    allow_at = new_tat - capacity
    if allow_at > now:
        return Decision(False, 0, (allow_at - now) / NANOSECONDS, (tat - now) / NANOSECONDS), tat
    remaining = (now - allow_at) // interval
    return Decision(True, remaining, 0.0, (new_tat - now) / NANOSECONDS), new_tat


def to_nanoseconds(seconds: float) -> int:
    return round(seconds * NANOSECONDS)
