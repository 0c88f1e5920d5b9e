"""The facade the data plane calls: one Balancer per pool.

The Balancer decides which servers are eligible (available primaries, or the
available backups when no primary is), keeps the strategy's view of them
current, derives the hash key when the strategy wants one, and re-weighs the
pool while servers are in slow start. Everything else is the strategy's job.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence
from typing import Final

from maitred.balancing.base import ActiveWatcher, LiveServer, RemoteLoad
from maitred.balancing.common import BalancingStrategy
from maitred.balancing.hash_key import Headers, key_function
from maitred.balancing.hashing import ConsistentHash, IpHash
from maitred.balancing.least_response_time import LeastResponseTime
from maitred.balancing.random_choice import PowerOfTwoChoices, RandomChoice
from maitred.balancing.round_robin import RoundRobin
from maitred.balancing.scored import LeastConnections, WeightedLeastConnections
from maitred.balancing.slow_start import next_ramp_step
from maitred.balancing.smooth_weighted import SmoothWeightedRoundRobin

#: Every algorithm by its configuration name (see CONTRACT.md).
STRATEGIES: Final[dict[str, type[BalancingStrategy]]] = {
    strategy.name: strategy
    for strategy in (
        RoundRobin,
        SmoothWeightedRoundRobin,
        LeastConnections,
        WeightedLeastConnections,
        IpHash,
        ConsistentHash,
        LeastResponseTime,
        PowerOfTwoChoices,
        RandomChoice,
    )
}


def make_strategy(
    name: str,
    *,
    balance_factor: float = 0.25,
    rng: random.Random | None = None,
    slow_start: float | None = None,
) -> BalancingStrategy:
    """A fresh strategy for the algorithm called ``name``; ValueError for an unknown name."""
    strategy = STRATEGIES.get(name)
    if strategy is None:
        known = ", ".join(STRATEGIES)
        raise ValueError(f"unknown algorithm {name!r}; expected one of: {known}")
    return strategy(balance_factor=balance_factor, rng=rng, slow_start=slow_start)


class Balancer:
    """Chooses a server of one pool for each request."""

    def __init__(
        self,
        algorithm: str,
        servers: Sequence[LiveServer],
        *,
        hash_on: str | None = None,
        balance_factor: float = 0.25,
        slow_start: float | None = None,
        rng: random.Random | None = None,
        now: float = 0.0,
    ) -> None:
        self.algorithm = algorithm
        self.strategy = make_strategy(
            algorithm, balance_factor=balance_factor, rng=rng, slow_start=slow_start
        )
        # Validated whatever the algorithm, so a typo is caught even where it is unused.
        self._key_of = key_function(hash_on)
        self._uses_key = self.strategy.uses_key
        self._watcher: ActiveWatcher | None = (
            self.strategy.on_active_change if self.strategy.tracks_active else None
        )
        self.servers: tuple[LiveServer, ...] = ()
        #: The servers a request may go to right now.
        self.eligible: tuple[LiveServer, ...] = ()
        self._next_ramp_at = math.inf
        #: The other worker processes' load on these servers (None: this process alone).
        self.remote_load: RemoteLoad | None = None
        self._remote_due = -math.inf
        self.set_servers(servers, now)

    @property
    def on_backups(self) -> bool:
        """True while traffic goes to backup servers because no primary is available."""
        return bool(self.eligible) and self.eligible[0].backup

    def set_servers(self, servers: Sequence[LiveServer], now: float) -> None:
        """The pool's membership changed; strategies keep their sequence where they can."""
        adopted = tuple(servers)
        kept = set(adopted)
        for server in self.servers:
            if server not in kept and server.active_watcher is self._watcher:
                server.active_watcher = None
        # The newest Balancer to adopt a server hears about its load (one per server).
        for server in adopted:
            server.active_watcher = self._watcher
        self.servers = adopted
        self.refresh(now)

    def refresh(self, now: float) -> None:
        """A weight or ``available`` flag changed on a server of the pool."""
        primaries = tuple(s for s in self.servers if s.available and not s.backup)
        self.eligible = primaries or tuple(s for s in self.servers if s.available and s.backup)
        self.strategy.rebuild(self.eligible, now)
        self._next_ramp_at = next_ramp_step(self.eligible, now, self.strategy.slow_start)

    def pick(
        self,
        client_ip: str,
        headers: Headers,
        now: float,
        exclude: Collection[LiveServer] = (),
    ) -> LiveServer | None:
        """The server for one request, never one of ``exclude``; None when none is eligible."""
        remote = self.remote_load
        if remote is not None and now >= self._remote_due:
            self._remote_due = now + remote.refresh_interval
            remote.refresh(self.eligible)
        if now >= self._next_ramp_at:
            self.strategy.rebuild(self.eligible, now)
            self._next_ramp_at = next_ramp_step(self.eligible, now, self.strategy.slow_start)
        key = self._key_of(client_ip, headers) if self._uses_key else None
        if exclude:
            return self.strategy.pick_excluding(key, now, exclude)
        return self.strategy.pick(key, now)

    def observe(self, server: LiveServer, latency: float, now: float) -> None:
        """A request to ``server`` completed in ``latency`` seconds."""
        self.strategy.observe(server, latency, now)
