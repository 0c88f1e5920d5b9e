"""The data side's view of listeners, routes and pools: what one request reads.

These objects are built on the control side from a validated ``Config`` and
handed to the data side; a reload swaps the ``ListenerSlot.runtime`` reference,
so a request sees either the old or the new generation, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from maitred.balancing import Balancer
from maitred.balancing.base import LiveServer
from maitred.proxy.upstream import ServerConnections


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


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    host: bytes | None
    path_prefix: bytes | None
    pool: PoolRuntime

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
    default_pool: PoolRuntime | None
    scheme: bytes
    header_timeout: float
    idle_timeout: float
    max_header_size: int
    max_uri_length: int
    max_body_size: int | None

    def route(self, host: bytes, target: bytes) -> PoolRuntime | None:
        if self.routes:
            host = _host_without_port(host)
            for route in self.routes:
                if route.matches(host, target):
                    return route.pool
        return self.default_pool


class ListenerSlot:
    """What a client connection holds: the listener's current generation."""

    __slots__ = ("runtime",)

    def __init__(self, runtime: ListenerRuntime) -> None:
        self.runtime = runtime


def _host_without_port(host: bytes) -> bytes:
    host = host.lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(b":")
    return host[:colon] if colon != -1 else host
