"""Strategies that send each request to the server with the lowest score.

The score (connections per weight, expected latency, ...) of a server changes
only when something happens to it: it is picked, its ``active`` count moves, a
latency sample arrives. An indexed heap re-sorts just that server, so a pick is
O(log n) whatever the pool size. Among equal scores the ``turn`` decides: it
advances by ``1 / weight`` each time a server is picked, so ties rotate (in
proportion to weight) instead of always favouring the first server listed.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Collection, Sequence

from maitred.balancing.base import LiveServer
from maitred.balancing.common import BalancingStrategy
from maitred.balancing.indexed_heap import HeapEntry, IndexedHeap


class ScoredStrategy(BalancingStrategy):
    tracks_active = True
    ramps = True

    def _init_state(self) -> None:
        super()._init_state()
        self._entries: dict[LiveServer, HeapEntry] = {}
        self._heap: IndexedHeap[HeapEntry] = IndexedHeap([])

    @abstractmethod
    def score(self, entry: HeapEntry) -> float:
        """Lower is better; computed from the entry's server and effective weight."""

    def rebuild(self, servers: Sequence[LiveServer], now: float) -> None:
        previous = self._entries
        # A server new to the set starts level with the one whose turn comes next,
        # so it neither jumps the queue of ties nor waits behind all of it.
        fresh_turn = min((entry.turn for entry in previous.values()), default=0.0)
        entries = []
        for order, server in enumerate(servers):
            old = previous.get(server)
            turn = old.turn if old is not None else fresh_turn
            entries.append(HeapEntry(server, self.effective_weight(server, now), turn, order))
        self.eligible = tuple(servers)
        self._entries = {entry.server: entry for entry in entries}
        for entry in entries:
            entry.key = (self.score(entry), entry.turn, entry.order)
        self._heap = IndexedHeap(entries)

    def pick(self, key: str | None, now: float) -> LiveServer | None:
        best = self._heap.top()
        if best is None:
            return None
        self._take_turn(best)
        return best.server

    def pick_excluding(
        self, key: str | None, now: float, exclude: Collection[LiveServer]
    ) -> LiveServer | None:
        # The heap only knows its best entry; a retry scans (O(n), failure path only).
        candidates = [entry for entry in self._entries.values() if entry.server not in exclude]
        if not candidates:
            return None
        best = min(candidates, key=lambda entry: entry.key)
        self._take_turn(best)
        return best.server

    def on_active_change(self, server: LiveServer, delta: int) -> None:
        entry = self._entries.get(server)
        if entry is not None:
            self._rescore(entry)

    def _take_turn(self, entry: HeapEntry) -> None:
        entry.turn += 1.0 / entry.weight
        self._rescore(entry)

    def _rescore(self, entry: HeapEntry) -> None:
        entry.key = (self.score(entry), entry.turn, entry.order)
        self._heap.rekeyed(entry)


class LeastConnections(ScoredStrategy):
    """Fewest active requests; weights ignored (slow start still ramps a newcomer)."""

    name = "least_connections"

    def score(self, entry: HeapEntry) -> float:
        return entry.server.load / entry.weight


class WeightedLeastConnections(LeastConnections):
    """Fewest active requests per unit of weight; ties go round in weighted turns."""

    name = "weighted_least_connections"
    weighted = True
