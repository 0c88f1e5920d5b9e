"""The data side's view of listeners, routes and pools: what one request reads.

These objects are built on the control side from a validated ``Config`` and
handed to the data side; a reload swaps the ``ListenerSlot.runtime`` reference,
so a request sees either the old or the new generation, never a mix.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from maitred.balancing import Balancer
from maitred.balancing.base import LiveServer
from maitred.config.http2_settings import Http2Settings
from maitred.policies.retry_budget import RetryBudget
from maitred.proxy.upstream import ServerConnections

if TYPE_CHECKING:
    from maitred.proxy.http1 import Exchange

#: Told (server, ok, now) about failures on real traffic and the first success after.
OutcomeSink = Callable[[LiveServer, bool, float], None]

#: Told (exchange, status, body bytes or None, now) once per answered request.
AccessLogSink = Callable[["Exchange", int, "int | None", float], None]

#: Upper bounds (seconds) of the request-duration histogram buckets; the last is +Inf.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def latency_bucket(seconds: float) -> int:
    """The index of the first bucket ``seconds`` fits in (len(LATENCY_BUCKETS): +Inf),
    as ``bisect.bisect_left`` finds it. Most requests take under a millisecond: a
    compiled scan from the first bucket costs a fifth of the call to bisect."""
    index = 0
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return index
        index += 1
    return index


class RequestPolicy(Protocol):
    """Looks at a request before it goes to a pool (rate limits, redirects...).

    ``admit`` returns True to let the request on; to refuse it, the policy answers
    it itself (``exchange.client.answer_error``) and returns False. A policy that
    needs time (a shared store) returns False without answering, and later either
    calls ``exchange.resume_after(policy, now)`` or answers; meanwhile the request's
    body is kept in ``exchange.pending``, and ``exchange.finished`` turns true if
    the client goes away. A policy may add headers to the eventual answer through
    ``exchange.response_headers``.
    """

    def admit(self, exchange: Exchange, now: float) -> bool: ...


class Affinity(Protocol):
    """Session persistence for a pool: keeps a client on the server it had."""

    def choose(self, exchange: Exchange, now: float) -> LiveServer | None:
        """The server this request belongs to, or None to balance it normally.

        May answer the exchange itself (strict persistence: 503) and mark it finished.
        """
        ...

    def chosen(self, exchange: Exchange, server: LiveServer, now: float) -> None:
        """``server`` takes the request; remember it (e.g. add a Set-Cookie answer header)."""
        ...


def ignore_outcome(server: LiveServer, ok: bool, now: float) -> None:
    server.consecutive_failures = 0 if ok else server.consecutive_failures + 1


@dataclass(eq=False, slots=True)
class PoolRuntime:
    name: str
    balancer: Balancer
    connect_timeout: float
    response_timeout: float
    connections: dict[LiveServer, ServerConnections] = field(default_factory=dict)
    #: True when the pool's hash key needs the request headers (hash_on header/cookie).
    needs_headers: bool = False
    #: What the balancer was built from; a reload keeps the balancer when unchanged.
    balancer_settings: tuple[object, ...] = ()
    retry_attempts: int = 2
    retry_budget: RetryBudget = field(default_factory=lambda: RetryBudget(20.0, 3))
    retry_budget_settings: tuple[float, int] = (20.0, 3)
    #: True when some server has max_connections: picks skip full servers.
    limited: bool = False
    queue_size: int = 0
    queue_timeout: float = 5.0
    #: Requests waiting for a server below its max_connections, oldest first.
    waiting: deque[Exchange] = field(default_factory=deque)
    record_outcome: OutcomeSink = ignore_outcome
    #: Requests sent to a server of the pool (retries included), and retries.
    requests: int = 0
    retries: int = 0
    #: True when the balancer learns from response times (least_response_time).
    observes_latency: bool = False
    #: "v1" or "v2": announce the client to the servers. Connections are then tied
    #: to one client and never pooled across clients.
    send_proxy_protocol: str | None = None
    affinity: Affinity | None = None
    #: Request durations: counts per LATENCY_BUCKETS bucket (+Inf last) and their sum.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    #: Answers the balancer gave itself for this pool (502/503/504...) by status class.
    own_answers: list[int] = field(default_factory=lambda: [0] * 6)

    def take_for_connection(
        self, key: str, tried: list[LiveServer], attempts: int, now: float
    ) -> LiveServer | None:
        """A server for a layer-4 connection hashed on ``key``, counted as in use;
        None when none is left (every server tried, or ``attempts`` made)."""
        balancer = self.balancer
        server = balancer.pick(key, (), now, tried) if tried else balancer.pick(key, (), now)
        if server is None or len(tried) >= attempts:
            return None
        server.active += 1
        server.requests += 1
        self.requests += 1
        return server

    def give_back_from_connection(self, server: LiveServer, failed: bool, now: float) -> None:
        """The layer-4 connection ``take_for_connection`` gave ``server`` ended; a failure
        (or the first success after failures) is an outcome for passive health."""
        server.active -= 1
        if failed or server.consecutive_failures:
            self.record_outcome(server, not failed, now)


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    host: bytes | None
    path_prefix: bytes | None
    pool: PoolRuntime | None
    #: The listener's policies, then the route's own, in the order they run.
    policies: tuple[RequestPolicy, ...] = ()

    def matches(self, host: bytes, target: bytes) -> bool:
        if self.host is not None:
            if self.host.startswith(b"*."):
                if not host.endswith(self.host[1:]):
                    return False
            elif host != self.host:
                return False
        return self.path_prefix is None or target.startswith(self.path_prefix)


@dataclass(frozen=True, slots=True)
class ListenerRuntime:
    name: str
    routes: tuple[RouteRuntime, ...]
    #: What applies when no route matches (pool None: 404).
    default_route: RouteRuntime
    scheme: bytes
    header_timeout: float
    idle_timeout: float
    max_header_size: int
    max_uri_length: int
    max_body_size: int | None
    body_timeout: float = 30.0
    #: Minimum request-body data rate in bytes per second (None: none), after a grace.
    body_min_rate: int | None = None
    body_min_rate_grace: float = 10.0
    #: Silence after which an upgraded connection (WebSocket) is closed.
    tunnel_timeout: float = 3600.0
    #: Expect a PROXY protocol header (v1 or v2) first on every connection.
    proxy_protocol: bool = False
    max_headers: int = 100
    max_connections: int | None = None
    max_connections_per_client: int | None = None
    #: Off by default: one call per answered request when set.
    access_log: AccessLogSink | None = None
    #: HTTP/2 limits for the listener's h2 connections (new streams read the current one).
    http2: Http2Settings = Http2Settings()

    def route(self, host: bytes, target: bytes) -> RouteRuntime:
        if self.routes:
            host = _host_without_port(host)
            for route in self.routes:
                if route.matches(host, target):
                    return route
        return self.default_route


class ListenerSlot:
    """What a client connection holds: the listener's current generation, and the
    listener's open connections (in total and per client address) across reloads."""

    __slots__ = (
        "runtime",
        "open",
        "open_by_client",
        "own_answers",
        "bytes_in",
        "bytes_out",
        "tls_handshakes",
        "rate_limited",
    )

    def __init__(self, runtime: ListenerRuntime) -> None:
        self.runtime = runtime
        self.open = 0
        self.open_by_client: dict[str, int] = {}
        #: Answers the balancer gave itself (4xx, 502/503/504...) by status class.
        self.own_answers = [0] * 6
        #: Bytes read from clients and relayed to them from servers.
        self.bytes_in = 0
        self.bytes_out = 0
        self.tls_handshakes = 0
        #: Requests refused with 429 by a rate limit.
        self.rate_limited = 0

    def admit(self, client_ip: str) -> bool:
        """Count a new connection from ``client_ip``; False when it goes beyond the
        listener's connection limits (it is counted still: ``release`` it on close)."""
        self.open += 1
        by_client = self.open_by_client
        by_client[client_ip] = mine = by_client.get(client_ip, 0) + 1
        runtime = self.runtime
        return not (
            (runtime.max_connections is not None and self.open > runtime.max_connections)
            or (
                runtime.max_connections_per_client is not None
                and mine > runtime.max_connections_per_client
            )
        )

    def count_own_answer(self, status: int, pool: PoolRuntime | None) -> None:
        """An answer the balancer gave itself, counted for /metrics (and for the pool
        the request was going to, when it had one)."""
        self.own_answers[status // 100] += 1
        if status == 429:
            self.rate_limited += 1
        if pool is not None:
            pool.own_answers[status // 100] += 1

    def release(self, client_ip: str) -> None:
        """A connection from ``client_ip`` closed."""
        self.open -= 1
        by_client = self.open_by_client
        left = by_client.pop(client_ip, 1) - 1
        if left:
            by_client[client_ip] = left


def _host_without_port(host: bytes) -> bytes:
    host = host.lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(b":")
    return host[:colon] if colon != -1 else host
