"""Which servers of a pool may keep a sticky session right now.

A session may stay on its server only while the balancer would send new
traffic there: the server is in ``balancer.eligible`` (healthy, not draining,
not in maintenance, and a primary unless the pool runs on its backups) and is
below its ``max_connections``. Everything else moves the session (or answers
503 under ``strict``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from maitred.balancing import Balancer
from maitred.balancing.base import LiveServer

if TYPE_CHECKING:
    from maitred.proxy.http1 import Exchange


class EligibleServers:
    """A set view of ``balancer.eligible``, rebuilt only when the balancer replaces it.

    ``Balancer.refresh`` assigns a new tuple on every availability or weight
    change, so an identity check per request is enough to stay current.
    """

    __slots__ = ("_seen", "_members")

    def __init__(self) -> None:
        self._seen: tuple[LiveServer, ...] | None = None
        self._members: frozenset[LiveServer] = frozenset()

    def of(self, balancer: Balancer) -> frozenset[LiveServer]:
        eligible = balancer.eligible
        if eligible is not self._seen:
            self._seen = eligible
            self._members = frozenset(eligible)
        return self._members


def has_room(server: LiveServer) -> bool:
    """False while the server is at its ``max_connections``."""
    limit = server.max_connections
    return not limit or server.active < limit


def refuse_lost_session(exchange: Exchange, pool_name: str) -> None:
    """``strict``: the session's server cannot take it, and it must not move: 503."""
    exchange.client.answer_error(
        exchange, 503, f"the server of this session in pool {pool_name} is unavailable"
    )
