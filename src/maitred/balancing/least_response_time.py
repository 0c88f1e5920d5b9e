"""least_response_time: lowest peak-EWMA latency × (active + 1), per unit of weight.

The latency estimate is "peak EWMA" (as in Finagle and Linkerd): a slower sample
counts at once, faster samples pull it down gradually, and while a server gets
no samples its estimate decays toward zero with time constant ``DECAY_TIME``,
so a server that was slow is tried again after a while instead of being shunned
forever. A server with no sample yet is tried first while idle, and avoided
while it has requests outstanding (``UNSAMPLED_PENALTY``).

Scores are kept as logarithms: the decay factor ``exp(-(now - stamp) / tau)``
then becomes ``-now / tau + stamp / tau``, and ``-now / tau`` is the same for
every server, so it drops out of the comparison. What remains changes only when
the server is picked, a sample arrives or ``active`` moves, which is what lets
the indexed heap keep picks O(log n).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from maitred.balancing.base import LiveServer
from maitred.balancing.indexed_heap import HeapEntry
from maitred.balancing.latency import DECAY_TIME
from maitred.balancing.scored import ScoredStrategy

#: The latency (seconds) assumed for a server with requests outstanding and no sample yet.
UNSAMPLED_PENALTY: Final = 1e6


class LeastResponseTime(ScoredStrategy):
    name = "least_response_time"
    weighted = True
    uses_latency = True

    def _init_state(self) -> None:
        super()._init_state()
        # The latest time seen; ``active`` changes arrive without one.
        self._clock = 0.0

    def rebuild(self, servers: Sequence[LiveServer], now: float) -> None:
        self._clock = max(self._clock, now)
        super().rebuild(servers, now)

    def pick(self, key: str | None, now: float) -> LiveServer | None:
        self._clock = now if now > self._clock else self._clock
        return super().pick(key, now)

    def observe(self, server: LiveServer, latency: float, now: float) -> None:
        super().observe(server, latency, now)
        self._clock = now if now > self._clock else self._clock
        entry = self._entries.get(server)
        if entry is not None:
            self._rescore(entry)

    def score(self, entry: HeapEntry) -> float:
        server = entry.server
        active = server.load
        if server.ewma > 0.0:
            # log(ewma × exp(-(now - stamp) / tau) × (active + 1) / weight) + now / tau
            return (
                math.log(server.ewma * (active + 1) / entry.weight) + server.ewma_stamp / DECAY_TIME
            )
        if active <= 0:
            return -math.inf
        return math.log(UNSAMPLED_PENALTY * active / entry.weight) + self._clock / DECAY_TIME
