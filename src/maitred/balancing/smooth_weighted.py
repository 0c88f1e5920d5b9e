"""weighted_round_robin: smooth weighted round robin in O(log n) per pick.

NGINX's smooth weighted round robin interleaves servers (weights 5,3,1 give
``a b a c a b a b a``, never ``a a a a a b b b c``) but scans every server on
every pick. This module produces the same guarantees from a schedule instead:
each server's j-th pick of a cycle is due in the window ``[j/w, (j+1)/w)`` of
the cycle, and the pick goes to the eligible server (window opened) whose window
closes first ("earliest eligible deadline first"). With integer weights W in
total, every cycle of W picks gives each server exactly its weight in picks,
spread evenly, and a pick costs two heap operations.

Virtual time is ``picks / total_weight`` (one cycle = 1.0). Each server's
position is ``offset + picks / weight``, computed from counters rather than
accumulated, so that equal fractions compare equal and cycles stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from heapq import heapify, heappop, heappush

from maitred.balancing.base import LiveServer
from maitred.balancing.common import BalancingStrategy


class _Turn:
    """One server's place in the schedule."""

    __slots__ = ("server", "order", "weight", "picks", "offset")

    def __init__(self, server: LiveServer, order: int, weight: float, offset: float) -> None:
        self.server = server
        self.order = order
        self.weight = weight
        self.picks = 0.0
        self.offset = offset

    def opens(self) -> float:
        """Virtual time from which this server may take its next pick."""
        return self.offset + self.picks / self.weight

    def closes(self) -> float:
        """Virtual time by which this server is owed its next pick."""
        return self.offset + (self.picks + 1) / self.weight


class SmoothWeightedRoundRobin(BalancingStrategy):
    name = "weighted_round_robin"
    weighted = True
    ramps = True

    def _init_state(self) -> None:
        super()._init_state()
        self._turns: list[_Turn] = []
        self._weights: tuple[float, ...] = ()
        self._total = 0.0
        self._picks = 0.0
        self._rollover_at = 0.0
        # Servers whose window has not opened yet, by opening time, and servers
        # that may be picked, by closing time; (time, order, turn) never ties on turn.
        self._waiting: list[tuple[float, int, _Turn]] = []
        self._ready: list[tuple[float, int, _Turn]] = []

    def rebuild(self, servers: Sequence[LiveServer], now: float) -> None:
        weights = tuple(self.effective_weight(server, now) for server in servers)
        if (
            weights == self._weights
            and len(servers) == len(self.eligible)
            and all(new is old for new, old in zip(servers, self.eligible, strict=True))
        ):
            return
        # Carry each surviving server's lead or lag over into the new schedule,
        # scaled to its new weight, instead of restarting the sequence.
        clock = self._picks / self._total if self._total else 0.0
        previous = {turn.server: turn for turn in self._turns}
        turns = []
        for order, (server, weight) in enumerate(zip(servers, weights, strict=True)):
            offset = 0.0
            if (old := previous.get(server)) is not None:
                offset = (old.opens() - clock) * old.weight / weight
            turns.append(_Turn(server, order, weight, offset))
        self.eligible = tuple(servers)
        self._turns = turns
        self._weights = weights
        self._total = sum(weights)
        self._picks = 0.0
        # A rollover costs O(n); doing it at most once per n picks keeps it O(1) amortised.
        self._rollover_at = (
            self._total * max(1, math.ceil(len(turns) / self._total)) if turns else 0
        )
        self._requeue()

    def pick(self, key: str | None, now: float) -> LiveServer | None:
        if not self._turns:
            return None
        clock = self._picks / self._total
        waiting, ready = self._waiting, self._ready
        while waiting and waiting[0][0] <= clock:
            _, order, turn = heappop(waiting)
            heappush(ready, (turn.closes(), order, turn))
        if not ready:
            # Only after a rebuild carried every server's lead past the clock.
            _, order, turn = heappop(waiting)
            heappush(ready, (turn.closes(), order, turn))
        _, order, turn = heappop(ready)
        turn.picks += 1
        self._picks += 1
        heappush(waiting, (turn.opens(), order, turn))
        if self._picks >= self._rollover_at:
            self._rollover()
        return turn.server

    def _rollover(self) -> None:
        # Wind every counter back by whole cycles so the fractions stay small and exact.
        cycles = math.floor(self._picks / self._total)
        self._picks -= cycles * self._total
        for turn in self._turns:
            turn.picks -= cycles * turn.weight
        self._requeue()

    def _requeue(self) -> None:
        self._ready = []
        self._waiting = [(turn.opens(), turn.order, turn) for turn in self._turns]
        heapify(self._waiting)
