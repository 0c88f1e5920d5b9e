"""A retry budget: retries may add at most a share of extra load to a pool.

Sans-I/O (time is passed in). Requests and retries are counted in one-second
buckets over a sliding window; a retry is allowed while the retries of the
window stay below ``budget_percent`` of its requests, or below a small floor
per second so a quiet pool can still retry at all. A failing pool therefore
cannot turn its failures into a retry storm.
"""

from __future__ import annotations

WINDOW_SECONDS = 10


class RetryBudget:
    __slots__ = ("_ratio", "_floor", "_requests", "_retries", "_second")

    def __init__(self, budget_percent: float, min_per_second: int) -> None:
        self._ratio = budget_percent / 100.0
        self._floor = min_per_second * WINDOW_SECONDS
        self._requests = [0] * WINDOW_SECONDS
        self._retries = [0] * WINDOW_SECONDS
        self._second = 0

    def _advance(self, now: float) -> int:
        second = int(now)
        if second != self._second:
            gap = second - self._second
            if gap >= WINDOW_SECONDS or gap < 0:
                self._requests = [0] * WINDOW_SECONDS
                self._retries = [0] * WINDOW_SECONDS
            else:
                for step in range(1, gap + 1):
                    slot = (self._second + step) % WINDOW_SECONDS
                    self._requests[slot] = 0
                    self._retries[slot] = 0
            self._second = second
        return second % WINDOW_SECONDS

    def record_request(self, now: float) -> None:
        self._requests[self._advance(now)] += 1

    def try_spend(self, now: float) -> bool:
        """True (and counted) when one more retry fits the budget."""
        slot = self._advance(now)
        retries = sum(self._retries)
        allowed = max(self._floor, int(sum(self._requests) * self._ratio))
        if retries >= allowed:
            return False
        self._retries[slot] += 1
        return True
