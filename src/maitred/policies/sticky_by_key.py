"""``sticky: {mode: ip}`` and ``sticky: {mode: header:NAME}``: a key names the server.

The key (the client address, or the value of a request header) is placed on a
consistent-hash ring of the pool's servers (the same ring ``ip_hash`` uses), so
every worker and every balancer instance with the same servers agrees, with no
state to share. Adding or removing one of N servers moves about 1/N of the keys.

An unavailable server keeps its place on the ring: while it is away its keys
walk on to the next available server, and they come back when it returns. The
ring holds the primaries, or the backups while the pool runs on its backups.
A request without the header is balanced by the pool's algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from maitred.balancing import Balancer
from maitred.balancing.base import LiveServer
from maitred.balancing.common import configured_weight
from maitred.balancing.hash_ring import OWNER_MASK, HashRing, PointCache, key_point
from maitred.policies.sticky_pool import has_room, refuse_lost_session

if TYPE_CHECKING:
    from maitred.proxy.http1 import Exchange

#: The affinity key of a request, or None when it has none (balance it normally).
KeyOf = Callable[["Exchange"], str | None]


def client_ip_key(exchange: Exchange) -> str | None:
    return exchange.client.client_ip or None


def header_key(lowered_name: str) -> KeyOf:
    """The first non-empty value of the header called ``lowered_name``."""
    wanted = lowered_name.encode("latin-1")

    def key_of(exchange: Exchange) -> str | None:
        for name, value in exchange.client.header_pairs():
            if len(name) == len(wanted) and name.lower() == wanted and value:
                return value.decode("latin-1")
        return None

    return key_of


class KeyAffinity:
    """Keeps every request with the same key on the same server."""

    def __init__(self, pool_name: str, key_of: KeyOf, *, strict: bool) -> None:
        self._pool_name = pool_name
        self._key_of = key_of
        self._strict = strict
        self._cache = PointCache()
        self._ring = HashRing((), (), self._cache)
        self._seen: tuple[LiveServer, ...] | None = None
        self._eligible: frozenset[LiveServer] = frozenset()

    def choose(self, exchange: Exchange, now: float) -> LiveServer | None:
        key = self._key_of(exchange)
        if key is None:
            return None
        pool = exchange.pool
        assert pool is not None
        ring = self._current_ring(pool.balancer)
        points = ring.points
        if not points:
            return None
        index = ring.first_index(key_point(key))
        members, eligible = ring.members, self._eligible
        home = members[points[index] & OWNER_MASK]
        if home in eligible and has_room(home):
            return home
        if self._strict:
            refuse_lost_session(exchange, self._pool_name)
            return None
        size = len(points)
        for _ in range(size - 1):
            index = index + 1 if index + 1 < size else 0
            server = members[points[index] & OWNER_MASK]
            if server in eligible and has_room(server):
                return server
        return None

    def chosen(self, exchange: Exchange, server: LiveServer, now: float) -> None:
        """Nothing to remember: the key names the server again on the next request."""

    def _current_ring(self, balancer: Balancer) -> HashRing:
        eligible = balancer.eligible
        if eligible is not self._seen:
            # Membership, a weight or an availability changed (never per request).
            self._seen = eligible
            self._eligible = frozenset(eligible)
            on_backups = balancer.on_backups
            tier = tuple(s for s in balancer.servers if s.backup == on_backups)
            weights = tuple(configured_weight(s) for s in tier)
            if tier != self._ring.members or weights != self._ring.weights:
                self._ring = HashRing(tier, weights, self._cache)
                self._cache.keep_only(s.address for s in balancer.servers)
        return self._ring
