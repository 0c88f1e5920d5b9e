"""ip_hash and consistent_hash: the same key always lands on the same server.

Both hash a key onto a consistent-hash ring (``hash_ring``), so losing or
adding one of N servers remaps only about 1/N of the keys, not nearly all of
them as ``hash % N`` would. ``ip_hash`` keeps a key on its server however busy
that server gets; ``consistent_hash`` adds bounded load (Mirrokni, Thorup and
Zadimoghaddam, "Consistent Hashing with Bounded Loads"): a server already
holding ``(1 + balance_factor)`` times its fair share of the active requests is
passed over for the next one clockwise, so one hot key cannot swamp a server.

The ring is rebuilt only when a server it has never seen joins, or a weight
changes. A server that goes down stays on the ring, marked unusable, and its
keys walk on to the next usable point, which is exactly where they would land
on a ring without it. When it returns, its keys come straight back.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import ClassVar

from maitred.balancing.base import LiveServer
from maitred.balancing.common import BalancingStrategy, configured_weight
from maitred.balancing.hash_ring import OWNER_MASK, HashRing, PointCache, key_point


class _HashStrategy(BalancingStrategy):
    uses_key = True
    weighted = True
    #: Pass over servers above (1 + balance_factor) × their share of the active requests.
    bounded: ClassVar[bool]

    def _init_state(self) -> None:
        super()._init_state()
        self._cache = PointCache()
        self._ring = HashRing((), (), self._cache)
        # Per ring member: its effective weight if eligible, else 0.0 (skip it).
        self._shares: list[float] = []
        self._total_weight = 0.0
        self._total_active = 0
        self._eligible_set: frozenset[LiveServer] = frozenset()

    def rebuild(self, servers: Sequence[LiveServer], now: float) -> None:
        ring = self._ring
        weights = [configured_weight(server) for server in servers]
        on_ring = all(
            (owner := ring.owner_of.get(server)) is not None and ring.weights[owner] == weight
            for server, weight in zip(servers, weights, strict=True)
        )
        # Unusable members make walks longer; past half of the ring, drop them.
        if not on_ring or 2 * len(servers) < len(ring.members):
            ring = self._ring = HashRing(servers, weights, self._cache)
            self._cache.keep_only(server.address for server in servers)
        self.eligible = tuple(servers)
        self._eligible_set = frozenset(servers)
        shares = [0.0] * len(ring.members)
        for server in servers:
            shares[ring.owner_of[server]] = self.effective_weight(server, now)
        self._shares = shares
        self._total_weight = sum(shares)
        self._total_active = sum(server.load for server in servers)

    def pick(self, key: str | None, now: float) -> LiveServer | None:
        return self._walk(key, ())

    def pick_excluding(
        self, key: str | None, now: float, exclude: Collection[LiveServer]
    ) -> LiveServer | None:
        return self._walk(key, exclude)

    def _walk(self, key: str | None, exclude: Collection[LiveServer]) -> LiveServer | None:
        if not self.eligible:
            return None
        ring = self._ring
        points, members, shares = ring.points, ring.members, self._shares
        if self.bounded:
            # Server i may take this request while active_i < (1 + c) × (A + 1) × w_i / W,
            # with A + 1 the active requests counting this one: the paper's ceil((1+c)·m/n).
            allowance = (1.0 + self.balance_factor) * (self._total_active + 1) / self._total_weight
        else:
            allowance = math.inf
        size = len(points)
        index = ring.first_index(key_point(key or ""))
        for _ in range(size):
            owner = points[index] & OWNER_MASK
            share = shares[owner]
            if share:
                server = members[owner]
                if server.load < allowance * share and server not in exclude:
                    return server
            index = index + 1 if index + 1 < size else 0
        return None


class IpHash(_HashStrategy):
    """Strict affinity: a key stays on its server for as long as that server is up."""

    name = "ip_hash"
    bounded = False


class ConsistentHash(_HashStrategy):
    """Affinity with bounded load, and slow start through the load bound."""

    name = "consistent_hash"
    bounded = True
    ramps = True
    tracks_active = True

    def on_active_change(self, server: LiveServer, delta: int) -> None:
        if server in self._eligible_set:
            self._total_active += delta
