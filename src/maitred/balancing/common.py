"""What every maitred strategy shares beyond the bare ``Strategy`` interface."""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import ClassVar

from maitred.balancing.base import LiveServer, Strategy
from maitred.balancing.latency import record_latency
from maitred.balancing.slow_start import ramp_factor


def configured_weight(server: LiveServer) -> int:
    # The configuration rejects weights below 1; a stray 0 from elsewhere must not
    # divide by zero or starve a server forever.
    return server.weight if server.weight >= 1 else 1


class BalancingStrategy(Strategy):
    """A strategy the ``Balancer`` can drive: weights, slow start, load tracking, retries."""

    #: Honours ``LiveServer.weight``.
    weighted: ClassVar[bool] = False
    #: Honours the pool's ``slow_start`` ramp.
    ramps: ClassVar[bool] = False
    #: Wants ``on_active_change`` for every change of an eligible server's ``active``.
    tracks_active: ClassVar[bool] = False

    def __init__(
        self,
        *,
        balance_factor: float = 0.25,
        rng: random.Random | None = None,
        slow_start: float | None = None,
    ) -> None:
        if balance_factor <= 0:
            raise ValueError("balance_factor must be > 0")
        if slow_start is not None and slow_start < 0:
            raise ValueError("slow_start must be >= 0")
        self.balance_factor = balance_factor
        self.rng = rng if rng is not None else random.Random()
        self.slow_start = slow_start if self.ramps else None
        self.eligible: tuple[LiveServer, ...] = ()
        self._init_state()

    def _init_state(self) -> None:
        """Set up the algorithm's own state (subclasses; the last step of __init__)."""

    def effective_weight(self, server: LiveServer, now: float) -> float:
        """The weight this strategy gives ``server`` at ``now``, slow start included."""
        weight = configured_weight(server) if self.weighted else 1
        return weight * ramp_factor(server, now, self.slow_start)

    def observe(self, server: LiveServer, latency: float, now: float) -> None:
        """Keep the server's peak-EWMA latency current whatever the strategy."""
        record_latency(server, latency, now)

    def on_active_change(self, server: LiveServer, delta: int) -> None:
        """``server.active`` moved by ``delta`` (only called when ``tracks_active``)."""

    def pick_excluding(
        self, key: str | None, now: float, exclude: Collection[LiveServer]
    ) -> LiveServer | None:
        """Like ``pick`` but never one of ``exclude`` (retries; off the hot path).

        Asking the strategy again keeps its sequence or randomness meaningful;
        strategies whose answer would not change override this.
        """
        for _ in range(len(self.eligible)):
            server = self.pick(key, now)
            if server is None:
                return None
            if server not in exclude:
                return server
        return next((server for server in self.eligible if server not in exclude), None)
