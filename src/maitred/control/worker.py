"""The data plane of one process: listeners bound, runtime built from a Config.

The control side hands a worker an immutable ``Config``; the worker turns it
into the routing objects its connections read and swaps them in. Servers that
survive a reload keep their ``LiveServer`` (active counts, latency figures) and
their idle connections, so a reload drops nothing.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Protocol

from maitred.balancing import Balancer
from maitred.balancing.base import LiveServer, RemoteLoad
from maitred.config import Config, Listener, Pool
from maitred.config.tls_settings import PoolTls
from maitred.control.access_log import AccessLogs
from maitred.policies.rate_limit import build_policies, close_store, configure_store
from maitred.policies.redirect import build_redirect
from maitred.policies.retry_budget import RetryBudget
from maitred.policies.sticky import build_affinity
from maitred.proxy.http1 import ClientConnection, DataPlane
from maitred.proxy.http2 import H2cCapableConnection, close_http2_connections
from maitred.proxy.routing import (
    AccessLogSink,
    ListenerRuntime,
    ListenerSlot,
    OutcomeSink,
    PoolRuntime,
    RouteRuntime,
    ignore_outcome,
)
from maitred.proxy.tcp import TcpClient, TcpListenerRuntime, TcpSlot
from maitred.proxy.tcp_splice import use_zero_copy
from maitred.proxy.tls_client import TlsClientConnection
from maitred.proxy.upstream import ServerConnections
from maitred.tls.client import server_hostname
from maitred.tls.runtime import TlsRuntime

log = logging.getLogger("maitred.worker")


@dataclass(eq=False, slots=True)
class BoundListener:
    bind: str
    slot: ListenerSlot | TcpSlot
    server: asyncio.Server
    protocol: str = "http"
    #: A plain listener whose connections may start with the h2c preface.
    h2c: bool = False


def server_id(pool_name: str, host: str, port: int) -> str:
    return f"{pool_name}-{host}-{port}"


class ServerPolicy(Protocol):
    """What the control side decides about servers, asked when the worker builds pools."""

    def is_available(self, sid: str) -> bool: ...

    def outcome_sink(self, pool_name: str) -> OutcomeSink: ...


class SharedLoad(RemoteLoad, Protocol):
    """Active requests shared with other worker processes (``control.active_counts``)."""

    def bind(self, server: LiveServer) -> None: ...

    def unbind(self, server: LiveServer) -> None: ...


class Worker:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, serving: bool = True) -> None:
        self.loop = loop
        #: False for the supervisor's mirror of several worker processes: pools only,
        #: no listeners (the workers bind them); counters come from the workers.
        self.serving = serving
        #: Listening sockets handed over by a supervisor, by listener name.
        self.inherited: dict[str, socket.socket] = {}
        self.plane = DataPlane(loop)
        self.listeners: dict[str, BoundListener] = {}
        self.pools: dict[str, PoolRuntime] = {}
        self._live: dict[str, LiveServer] = {}
        # Keyed by address and TLS settings: a pool's TLS change gets new connections.
        self._connections: dict[tuple[str, int, PoolTls | None], ServerConnections] = {}
        #: Listener certificates and TLS to servers; the control side sets its base_dir.
        self.tls = TlsRuntime()
        self.policy: ServerPolicy | None = None
        #: Signs sticky-session cookies; the control side sets it from config or state.
        self.sticky_secret = b""
        self.access_logs = AccessLogs(loop)
        #: Set in a worker process: its balancers count the other workers' requests too.
        self.shared_load: SharedLoad | None = None
        self._ticker: asyncio.TimerHandle | None = None

    # -- configuration -----------------------------------------------------------

    async def apply(self, config: Config) -> None:
        """Make ``config`` the one new requests see; bind and unbind listeners to match."""
        if self._ticker is None:
            self._ticker = self.loop.call_later(1.0, self._tick)
        now = self.loop.time()
        configure_store(config.rate_limit_store)
        self.tls.begin_generation()
        pools = {name: self._pool_runtime(name, pool, now) for name, pool in config.pools.items()}
        self.pools = pools
        self._drop_unused_connections(pools)
        if not self.serving:
            return

        wanted: dict[str, tuple[Listener, ListenerRuntime | TcpListenerRuntime]] = {}
        for listener in config.listeners:
            runtime: ListenerRuntime | TcpListenerRuntime
            if listener.protocol == "tcp":
                assert listener.pool is not None  # the config requires it
                runtime = TcpListenerRuntime(
                    listener.name,
                    pools[listener.pool],
                    listener.timeouts.idle,
                    zero_copy=use_zero_copy(listener.zero_copy),
                )
            else:
                access_log = self.access_logs.sink_for(listener.access_log, listener.name)
                runtime = _listener_runtime(listener, pools, access_log)
            wanted[listener.name] = (listener, runtime)

        for name in list(self.listeners):
            bound = self.listeners[name]
            if (
                name not in wanted
                or str(wanted[name][0].bind) != bound.bind
                or wanted[name][0].protocol != bound.protocol
                or (wanted[name][0].tls is not None) != self.tls.serves_tls(name)
                or _accepts_h2c(wanted[name][0]) != bound.h2c
            ):
                bound.server.close()
                if isinstance(bound.slot, ListenerSlot):
                    close_http2_connections(self.plane, bound.slot)
                del self.listeners[name]
                self.tls.forget_listener(name)
                log.info("listener %s on %s closed", name, bound.bind)
        for name, (listener, runtime) in wanted.items():
            bound_listener = self.listeners.get(name)
            if bound_listener is not None:
                if listener.tls is not None:
                    # SIGHUP re-reads certificates
                    self.tls.refresh_listener(name, listener.tls, listener.http2.enabled)
                previous = bound_listener.slot.runtime
                bound_listener.slot.runtime = runtime
                if (
                    isinstance(previous, ListenerRuntime)
                    and isinstance(runtime, ListenerRuntime)
                    and previous.http2 != runtime.http2
                ):
                    # New HTTP/2 settings apply to new connections: GOAWAY the old ones.
                    assert isinstance(bound_listener.slot, ListenerSlot)
                    close_http2_connections(self.plane, bound_listener.slot)
                continue
            slot: ListenerSlot | TcpSlot
            if isinstance(runtime, TcpListenerRuntime):
                slot = TcpSlot(runtime)
                server = await self._bind_tcp(listener, slot)
            else:
                slot = ListenerSlot(runtime)
                server = await self._bind(listener, slot)
            self.listeners[name] = BoundListener(
                str(listener.bind), slot, server, listener.protocol, _accepts_h2c(listener)
            )
            log.info("listener %s serving on %s", name, ", ".join(self.bound_addresses(name)))
        await self.access_logs.retain(listener.access_log for listener in config.listeners)

    def _pool_runtime(self, name: str, pool: Pool, now: float) -> PoolRuntime:
        servers: list[LiveServer] = []
        for server in pool.servers:
            key = server_id(name, server.address.host, server.address.port)
            live = self._live.get(key)
            if live is None:
                live = LiveServer(
                    key,
                    server.address.host,
                    server.address.port,
                    available=self.policy.is_available(key) if self.policy else True,
                    available_since=now,
                )
                self._live[key] = live
            live.weight = server.weight
            live.backup = server.backup
            live.max_connections = server.max_connections or 0
            servers.append(live)
        previous = self.pools.get(name)
        settings = (pool.algorithm, pool.hash_on, pool.balance_factor, pool.slow_start)
        if previous is not None and previous.balancer_settings == settings:
            # Same strategy: keep its sequence and load figures across the reload.
            balancer = previous.balancer
            balancer.set_servers(servers, now)
        else:
            balancer = Balancer(
                pool.algorithm,
                servers,
                hash_on=pool.hash_on,
                balance_factor=pool.balance_factor,
                slow_start=pool.slow_start,
                now=now,
            )
        if self.shared_load is not None:
            for live in servers:
                self.shared_load.bind(live)
            balancer.remote_load = self.shared_load
        connections = {}
        for live in servers:
            address = (live.host, live.port, pool.tls)
            conns = self._connections.get(address)
            tls_context = self.tls.client_context(pool.tls)
            if conns is None:
                conns = ServerConnections(
                    self.loop,
                    self.plane.writes,
                    live.host,
                    live.port,
                    pool.connection_pool.max_idle,
                    pool.connection_pool.idle_timeout,
                    tls_context,
                    server_hostname(pool.tls, live.host) if pool.tls else None,
                )
                self._connections[address] = conns
            else:
                conns.tls_context = tls_context
                conns.max_idle = pool.connection_pool.max_idle
                conns.idle_timeout = pool.connection_pool.idle_timeout
            conns.max_requests = pool.connection_pool.max_requests or 0
            connections[live] = conns
        hash_on = pool.hash_on or ""
        runtime = PoolRuntime(
            name=name,
            balancer=balancer,
            connect_timeout=pool.timeouts.connect,
            response_timeout=pool.timeouts.response,
            connections=connections,
            needs_headers=hash_on.startswith(("header:", "cookie:")),
            balancer_settings=settings,
            retry_attempts=pool.retries.attempts,
            limited=any(s.max_connections for s in pool.servers),
            queue_size=pool.queue.size,
            queue_timeout=pool.queue.timeout,
            observes_latency=balancer.strategy.uses_latency,
            record_outcome=self.policy.outcome_sink(name) if self.policy else ignore_outcome,
            affinity=build_affinity(name, pool, secret=self.sticky_secret, https=False),
            send_proxy_protocol=pool.send_proxy_protocol,
        )
        budget = (pool.retries.budget_percent, pool.retries.min_per_second)
        if previous is not None:
            # Requests queued and retry figures carry over to the new generation.
            runtime.waiting = previous.waiting
            runtime.retries = previous.retries
            runtime.requests = previous.requests
            runtime.latency_counts = previous.latency_counts
            runtime.latency_sum = previous.latency_sum
            if previous.retry_budget_settings == budget:
                runtime.retry_budget = previous.retry_budget
        if runtime.retry_budget_settings != budget:
            runtime.retry_budget = RetryBudget(*budget)
        runtime.retry_budget_settings = budget
        return runtime

    def _drop_unused_connections(self, pools: dict[str, PoolRuntime]) -> None:
        in_use = {id(conns) for p in pools.values() for conns in p.connections.values()}
        for address, conns in list(self._connections.items()):
            if id(conns) not in in_use:
                self._connections.pop(address).close_idle()
        live_ids = {s.id for p in pools.values() for s in p.connections}
        for key in list(self._live):
            if key not in live_ids:
                gone = self._live.pop(key)
                if self.shared_load is not None:
                    self.shared_load.unbind(gone)

    async def _bind(self, listener: Listener, slot: ListenerSlot) -> asyncio.Server:
        plane = self.plane
        host = listener.bind.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        connection: type[ClientConnection] = ClientConnection
        if listener.tls:
            connection = TlsClientConnection
        elif _accepts_h2c(listener):
            connection = H2cCapableConnection
        ssl = self.tls.server_context(listener.name, listener.tls, listener.http2.enabled)
        handshake_timeout = listener.timeouts.client_header if listener.tls else None
        inherited = self.inherited.get(listener.name)
        if inherited is not None:
            return await self.loop.create_server(
                lambda: connection(plane, slot),
                sock=inherited,
                backlog=4096,
                ssl=ssl,
                ssl_handshake_timeout=handshake_timeout,
            )
        return await self.loop.create_server(
            lambda: connection(plane, slot),
            host,
            listener.bind.port,
            family=family,
            backlog=4096,
            reuse_address=True,
            ssl=ssl,
            ssl_handshake_timeout=handshake_timeout,
        )

    async def _bind_tcp(self, listener: Listener, slot: TcpSlot) -> asyncio.Server:
        loop = self.loop
        plane = self.plane
        host = listener.bind.host
        inherited = self.inherited.get(listener.name)
        if inherited is not None:
            return await loop.create_server(
                lambda: TcpClient(slot, loop, plane), sock=inherited, backlog=4096
            )
        return await loop.create_server(
            lambda: TcpClient(slot, loop, plane),
            host,
            listener.bind.port,
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            backlog=4096,
            reuse_address=True,
        )

    def reload_tls_files(self) -> None:
        """TLS files changed on disk: new handshakes use the new certificates; open
        connections keep theirs. Files that fail to load keep their previous version."""
        self.tls.reload_files()
        for (_, _, settings), conns in self._connections.items():
            if settings is not None:
                conns.tls_context = self.tls.client_context(settings)

    def _tick(self) -> None:
        """Once a second: what the pools measure over time (retry budgets)."""
        for pool in self.pools.values():
            pool.retry_budget.tick(pool.requests)
        self._ticker = self.loop.call_later(1.0, self._tick)

    # -- inspection --------------------------------------------------------------

    def bound_addresses(self, name: str) -> list[str]:
        bound = self.listeners[name]
        addresses = []
        for sock in bound.server.sockets:
            host, port = sock.getsockname()[:2]
            addresses.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return addresses

    def servers(self) -> list[tuple[str, LiveServer]]:
        return [(name, s) for name, pool in self.pools.items() for s in pool.balancer.servers]

    # -- stopping ----------------------------------------------------------------

    def stop_listening(self) -> None:
        for bound in self.listeners.values():
            bound.server.close()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def drain(self, timeout: float) -> bool:
        """Let in-flight requests finish; True when every connection closed in time."""
        self.stop_listening()
        self.plane.stop_accepting_requests()
        try:
            await asyncio.wait_for(self.plane.drained.wait(), timeout)
            drained = True
        except TimeoutError:
            drained = False
            for conn in list(self.plane.connections):
                if conn.transport is not None:
                    conn.transport.abort()
        for conns in self._connections.values():
            conns.close_idle()
        await self.access_logs.close()
        await close_store()
        return drained


def _listener_runtime(
    listener: Listener, pools: dict[str, PoolRuntime], access_log: AccessLogSink | None
) -> ListenerRuntime:
    redirect = build_redirect(listener)
    # A redirecting listener answers before any other policy looks at the request.
    first = (redirect,) if redirect is not None else ()
    routes = tuple(
        RouteRuntime(
            host=route.match.host.encode() if route.match.host else None,
            path_prefix=route.match.path_prefix.encode() if route.match.path_prefix else None,
            pool=pools[route.pool],
            policies=first + build_policies(listener, route),
        )
        for route in listener.routes
    )
    return ListenerRuntime(
        name=listener.name,
        routes=routes,
        default_route=RouteRuntime(
            None,
            None,
            pools[listener.pool] if listener.pool else None,
            policies=first + build_policies(listener, None),
        ),
        scheme=b"https" if listener.tls else b"http",
        header_timeout=listener.timeouts.client_header,
        idle_timeout=listener.timeouts.idle,
        max_header_size=listener.limits.max_header_size,
        max_uri_length=listener.limits.max_uri_length,
        max_body_size=listener.limits.max_body_size,
        body_timeout=listener.timeouts.client_body,
        body_min_rate=listener.timeouts.client_body_min_rate,
        body_min_rate_grace=listener.timeouts.client_body_min_rate_grace,
        tunnel_timeout=listener.timeouts.tunnel,
        max_headers=listener.limits.max_headers,
        max_connections=listener.limits.max_connections,
        max_connections_per_client=listener.limits.max_connections_per_client,
        proxy_protocol=listener.proxy_protocol,
        access_log=access_log,
        http2=listener.http2,
    )


def _accepts_h2c(listener: Listener) -> bool:
    return listener.protocol == "http" and listener.tls is None and listener.http2.h2c
