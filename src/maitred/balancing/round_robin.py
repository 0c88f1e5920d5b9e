"""round_robin: each eligible server in turn, weights ignored."""

from __future__ import annotations

from collections.abc import Sequence

from maitred.balancing.base import LiveServer
from maitred.balancing.common import BalancingStrategy


class RoundRobin(BalancingStrategy):
    name = "round_robin"

    def _init_state(self) -> None:
        super()._init_state()
        self._next = 0
        self._last: LiveServer | None = None

    def rebuild(self, servers: Sequence[LiveServer], now: float) -> None:
        # Carry on after the server picked last, so a membership change does not
        # send the next request back to the head of the list.
        self.eligible = tuple(servers)
        if not self.eligible:
            self._next = 0
            return
        after_last = next(
            (index + 1 for index, server in enumerate(self.eligible) if server is self._last),
            self._next,
        )
        self._next = after_last % len(self.eligible)

    def pick(self, key: str | None, now: float) -> LiveServer | None:
        servers = self.eligible
        if not servers:
            return None
        index = self._next
        self._next = (index + 1) % len(servers)
        server = servers[index]
        self._last = server
        return server
