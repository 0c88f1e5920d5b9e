"""Pool warm-up: keep ``min_idle`` connections open to every available server.

A request that finds an idle keep-alive connection to its server skips the TCP
(and TLS) handshake. After a start, a reload or a server's return, and after a
quiet spell in which idle connections timed out, there are none: the first
requests pay the connect. With ``connection_pool: {min_idle: N}`` this
component opens connections ahead of traffic, through the data plane's
``ServerConnections.warm``, so that N stay idle per server:

- when a configuration is applied (start and reload: ``apply``),
- when a server becomes available (``server_available``, from the health hook),
- and every ``idle_timeout / 3``, replacing the connections that timed out or
  that the server closed. A connection due to time out before the next round
  (with time to spare for a connect) counts as gone already: its replacement is
  open before it closes, so the pool never goes cold in between. (A third, not a
  half: a connection opened by a round would otherwise look due one round later,
  and every round would open a new set.)

It only opens connections; ``max_idle`` and ``idle_timeout`` keep governing how
many stay and for how long. Servers that are down, draining or in maintenance
are left alone, and nothing is opened once the worker drains. A worker that
does not serve (the supervisor's mirror of worker processes) is never warmed:
with several workers, each worker process runs a warm-up of its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from maitred.balancing.base import LiveServer
from maitred.config import Config
from maitred.control.worker import Worker
from maitred.proxy.upstream import ServerConnections


@dataclass(frozen=True, slots=True)
class WarmTarget:
    """What one round does to one server's connections."""

    connections: ServerConnections
    min_idle: int
    connect_timeout: float


class ConnectionWarmup:
    def __init__(self, loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
        self.loop = loop
        self.worker = worker
        #: ``min_idle`` per pool name, from the configuration last applied.
        self.min_idle: dict[str, int] = {}
        #: Seconds between rounds (None: no pool wants warm connections).
        self.period: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- inputs ------------------------------------------------------------------

    def apply(self, config: Config) -> None:
        """After the worker applied ``config``: warm its servers now, then every period."""
        reusing = _reusing_pools(config)
        self.min_idle = {
            name: pool.connection_pool.min_idle
            for name, pool in config.pools.items()
            if pool.connection_pool.min_idle > 0 and name in reusing
        }
        timeouts = [config.pools[name].connection_pool.idle_timeout for name in self.min_idle]
        self.period = min(timeouts) / 3 if timeouts else None
        self._cancel_timer()
        self.warm_all()

    def server_available(self, server: LiveServer) -> None:
        """``server`` takes requests again (or for the first time): warm it at once."""
        if not self._active():
            return
        for name, pool in self.worker.pools.items():
            connections = pool.connections.get(server)
            min_idle = self.min_idle.get(name, 0)
            if connections is not None and min_idle > 0:
                self._warm(WarmTarget(connections, min_idle, pool.connect_timeout))

    def close(self) -> None:
        self._cancel_timer()
        self.period = None

    # -- rounds ------------------------------------------------------------------

    def warm_all(self) -> None:
        """One round over every available server of every pool with ``min_idle``."""
        if not self._active():
            self._cancel_timer()
            return
        for target in self.targets():
            self._warm(target)
        if self.period is not None and self._timer is None:
            self._timer = self.loop.call_later(self.period, self._round_due)

    def targets(self) -> list[WarmTarget]:
        """One target per distinct ``ServerConnections``: pools naming the same server
        share its connections, and the largest ``min_idle`` among them wins."""
        chosen: dict[int, WarmTarget] = {}
        for name, pool in self.worker.pools.items():
            min_idle = self.min_idle.get(name, 0)
            if min_idle == 0:
                continue
            for server, connections in pool.connections.items():
                if not server.available:
                    continue
                known = chosen.get(id(connections))
                if known is None or known.min_idle < min_idle:
                    chosen[id(connections)] = WarmTarget(
                        connections, min_idle, pool.connect_timeout
                    )
        return list(chosen.values())

    def _warm(self, target: WarmTarget) -> None:
        connections = target.connections
        # Connections given back at any moment: the margin lets a replacement connect
        # before the one it replaces times out, however the two timers line up.
        period = self.period or 0.0
        margin = min(period / 2, target.connect_timeout)
        horizon = self.loop.time() + period + margin
        expiring = [conn for conn in connections.idle if not _open_past(conn.deadline.at, horizon)]
        missing = target.min_idle - (len(connections.idle) - len(expiring))
        if missing <= 0:
            return
        # Replacements beyond max_idle would be closed on arrival: retire (oldest first)
        # as many connections as needed among those that time out before the next round.
        room = connections.max_idle - len(connections.idle)
        for conn in expiring[: max(0, missing - room)]:
            connections.forget(conn)
            conn.close()
        # warm() tops up to a count of idle connections, the expiring ones included.
        connections.warm(len(connections.idle) + missing, target.connect_timeout)

    def _round_due(self) -> None:
        self._timer = None
        self.warm_all()

    def _active(self) -> bool:
        return self.worker.serving and not self.worker.plane.stopping and bool(self.min_idle)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _open_past(expires_at: float | None, horizon: float) -> bool:
    """An idle connection without a deadline never times out."""
    return expires_at is None or expires_at > horizon


def _reusing_pools(config: Config) -> set[str]:
    """Pools whose requests reuse idle connections: those HTTP listeners send to, unless
    they announce each client with the PROXY protocol (a connection per client then)."""
    named: set[str] = set()
    for listener in config.listeners:
        if listener.protocol != "http":
            continue  # layer 4 opens one server connection per client connection
        if listener.pool is not None:
            named.add(listener.pool)
        named.update(route.pool for route in listener.routes)
    return {
        name
        for name in named
        if name in config.pools and config.pools[name].send_proxy_protocol is None
    }
