"""A retry budget: retries may add at most a share of extra load to a pool.

Sans-I/O: the owner calls ``tick`` once a second with the pool's running count
of requests (a plain counter the data plane increments), and ``try_spend`` when
it wants to retry. Over the last ``window`` ticks, a retry is allowed while the
retries stay below ``budget_percent`` of the requests, or below a small floor
per second so a quiet pool can still retry at all. A failing pool therefore
cannot turn its failures into a retry storm. Nothing here runs per request.
"""

from __future__ import annotations

from collections import deque

WINDOW_SECONDS = 10


class RetryBudget:
    __slots__ = ("_ratio", "_floor", "_request_marks", "_retry_marks", "retries")

    def __init__(
        self, budget_percent: float, min_per_second: int, window: int = WINDOW_SECONDS
    ) -> None:
        self._ratio = budget_percent / 100.0
        self._floor = min_per_second * window
        # Running totals as they were at each of the last `window` ticks, oldest first.
        self._request_marks: deque[int] = deque([0], maxlen=window)
        self._retry_marks: deque[int] = deque([0], maxlen=window)
        #: Retries granted so far (a running total).
        self.retries = 0

    def tick(self, requests_total: int) -> None:
        """One second passed; ``requests_total`` is the pool's running request count."""
        self._request_marks.append(requests_total)
        self._retry_marks.append(self.retries)

    def try_spend(self, requests_total: int) -> bool:
        """True (and counted) when one more retry fits the budget."""
        requests = requests_total - self._request_marks[0]
        retries = self.retries - self._retry_marks[0]
        if retries >= max(self._floor, int(requests * self._ratio)):
            return False
        self.retries += 1
        return True
