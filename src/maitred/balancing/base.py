"""The strategy interface every balancing algorithm implements.

Strategies are sans-I/O: they read the live figures the data plane keeps on each
``LiveServer`` (plain attributes, incremented on the hot path) and return a
decision. Time is always passed in (``now``, seconds on a monotonic clock), never
read, so every strategy can be tested without sockets or clocks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol

#: Told ``(server, delta)`` after every change of ``LiveServer.load``.
ActiveWatcher = Callable[["LiveServer", int], None]


class RemoteLoad(Protocol):
    """Where the active requests of other processes serving the same pools come from
    (worker processes publish theirs in shared memory). The ``Balancer`` asks for
    them at most every ``refresh_interval`` seconds, from ``pick``."""

    refresh_interval: float

    def refresh(self, servers: Sequence[LiveServer]) -> None:
        """Call ``set_others_active`` on each of ``servers`` with its current figure."""


class LiveServer:
    """One server of a pool as the data plane sees it.

    ``active`` is incremented when a request is dispatched to the server and
    decremented when its answer is complete; ``available`` is false while the
    server is unhealthy, draining or in maintenance. The control side decides
    availability; strategies only read it.

    ``active`` is a property so that strategies keeping servers ordered by load
    (least connections, least response time, bounded-load hashing) hear about
    every change through ``active_watcher`` and stay O(log n) per request
    instead of scanning the pool. The ``Balancer`` that owns the server sets
    the watcher; everyone else just does ``server.active += 1``.

    With several worker processes, ``others_active`` is what the other workers
    have in flight on the server (``set_others_active``), ``load`` the sum of
    both: strategies that balance by load read ``load``. ``active_mirror``,
    when set, receives every new value of ``active`` at ``active_mirror_index``
    (this worker's cell in shared memory, where the others read it).
    """

    __slots__ = (
        "id",
        "host",
        "port",
        "weight",
        "backup",
        "available",
        "_active",
        "others_active",
        "load",
        "active_mirror",
        "active_mirror_index",
        "active_watcher",
        "available_since",
        "ewma",
        "ewma_stamp",
        "requests",
        "max_connections",
        "consecutive_failures",
        "answers",
        "latency_sum",
    )

    def __init__(
        self,
        id: str,
        host: str,
        port: int,
        weight: int = 1,
        backup: bool = False,
        available: bool = True,
        available_since: float = 0.0,
    ) -> None:
        self.id = id
        self.host = host
        self.port = port
        self.weight = weight
        self.backup = backup
        self.available = available
        self.available_since = available_since
        self._active = 0
        self.others_active = 0
        self.load = 0
        self.active_mirror: memoryview | None = None
        self.active_mirror_index = 0
        self.active_watcher: ActiveWatcher | None = None
        self.requests = 0
        # Peak-EWMA response time in seconds (0.0 = no sample yet) and when it was updated.
        self.ewma = 0.0
        self.ewma_stamp = 0.0
        #: Active requests allowed at once (0: no limit); more wait in the pool's queue.
        self.max_connections = 0
        #: Failures on real traffic in a row (connect errors, resets, 5xx answers).
        self.consecutive_failures = 0
        #: Answers relayed from this server by status class: answers[5] counts 5xx.
        self.answers = [0] * 6
        #: Seconds spent on the requests this server completed (with ``requests``: a mean).
        self.latency_sum = 0.0

    @property
    def active(self) -> int:
        return self._active

    @active.setter
    def active(self, value: int) -> None:
        delta = value - self._active
        self._active = value
        self.load += delta
        mirror = self.active_mirror
        if mirror is not None:
            mirror[self.active_mirror_index] = value
        watcher = self.active_watcher
        if watcher is not None:
            watcher(self, delta)

    def set_others_active(self, value: int) -> None:
        """The other worker processes now have ``value`` requests in flight here."""
        delta = value - self.others_active
        if delta:
            self.others_active = value
            self.load += delta
            watcher = self.active_watcher
            if watcher is not None:
                watcher(self, delta)

    @property
    def address(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"LiveServer({self.id!r}, {self.address}, weight={self.weight})"


class Strategy(ABC):
    """Picks one server among the eligible ones.

    ``rebuild`` is called whenever the eligible set, a weight or an availability
    changes (never per request), so a strategy can precompute rings or tables
    there and keep ``pick`` O(1) or O(log n).
    """

    name: ClassVar[str]
    #: True when ``pick`` uses the request's hash key (client address, header, cookie).
    uses_key: ClassVar[bool] = False
    #: True when ``observe`` matters (the strategy learns from response times).
    uses_latency: ClassVar[bool] = False

    @abstractmethod
    def rebuild(self, servers: Sequence[LiveServer], now: float) -> None:
        """Take a new eligible set (non-empty or empty), keeping sequence state where it can."""

    @abstractmethod
    def pick(self, key: str | None, now: float) -> LiveServer | None:
        """Choose a server for one request, or None when no server is eligible."""

    def observe(self, server: LiveServer, latency: float, now: float) -> None:  # noqa: B027
        """A request to ``server`` completed in ``latency`` seconds (default: ignored)."""
