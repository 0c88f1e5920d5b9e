"""Rate limiting (issue 8): the policy a route's requests pass before their pool.

A listener's ``rate_limit`` applies to all of its requests; a route's own
``rate_limit`` applies on top. Every limit must admit a request (the strictest
wins), and a request refused by one limit is not counted by the others. The
answer headers describe the limit closest to exhaustion.

Counts survive reloads: each limit's in-memory table lives in a registry keyed
by what it limits and how — the listener name, the route's match (host and
path prefix) for a route limit, and ``key``, ``rate``, ``per``, ``burst``. A
reload that keeps those keeps the counts; changing any of them starts afresh.
The registry holds tables weakly, so a limit removed from the configuration
is freed once no request of an older generation uses it.

With several worker processes and no store, decisions come from a table in
shared memory (``use_shared_table``, :mod:`maitred.policies.rate_limit_shared`),
so a limit holds across workers; a single process keeps its own tables.

With a ``rate_limit_store`` (``configure_store``), decisions come from Redis
(:mod:`maitred.policies.rate_limit_redis`): ``admit`` holds the request and
resumes it when Redis answers, within a round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from functools import partial
from math import ceil
from typing import TYPE_CHECKING
from weakref import WeakValueDictionary

from maitred.config import Listener, RateLimit, RateLimitStore, Route
from maitred.policies.gcra import Decision, GcraRate, to_nanoseconds
from maitred.policies.rate_limit_client import (
    FORWARDED_FOR,
    TrustedProxies,
    client_address,
    header_values,
)
from maitred.policies.rate_limit_headers import policy_item, quoted, ratelimit_item, retry_after
from maitred.policies.rate_limit_shared import SharedLimit, SharedRateTable
from maitred.policies.rate_limit_table import LimitKey, LocalLimiter
from maitred.proxy.routing import RequestPolicy

if TYPE_CHECKING:
    # Imported when a store is configured: redis-py is needed only with Redis.
    from maitred.policies.rate_limit_redis import RedisStore, Reply
    from maitred.proxy.http1 import Exchange

__all__ = [
    "RateLimitPolicy",
    "build_policies",
    "close_store",
    "configure_store",
    "current_store",
    "use_shared_table",
]

log = logging.getLogger("maitred.rate_limit")

#: Header values longer than this are keyed by their digest, so memory stays bounded.
MAX_KEY_BYTES = 64
REDIS_KEY_PREFIX = b"maitred:rl:"

_LIMITERS: WeakValueDictionary[tuple[object, ...], LocalLimiter] = WeakValueDictionary()


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    """One configured limit, as a request meets it."""

    #: The policy's name in the RateLimit headers: "listener" or "route".
    name: str
    #: The header the key is read from (lowercase), or None for the client address.
    header: bytes | None
    local: LocalLimiter
    headers: bool
    policy_item: bytes
    redis_prefix: bytes
    redis_args: tuple[int, int]
    shared: SharedLimit


class RateLimitPolicy:
    """The limits of one route (the listener's, then the route's own)."""

    __slots__ = (
        "limits",
        "trusted",
        "headers",
        "policy_line",
        "redis_args",
        "shared_limits",
        "_head_start",
        "_by_address",
    )

    def __init__(self, limits: tuple[AppliedLimit, ...], trusted: TrustedProxies) -> None:
        self.limits = limits
        self.trusted = trusted
        self.headers = any(limit.headers for limit in limits)
        self.policy_line = b", ".join(limit.policy_item for limit in limits if limit.headers)
        self.redis_args = [arg for limit in limits for arg in limit.redis_args]
        self.shared_limits = [limit.shared for limit in limits]
        # Each limit's answer headers up to its remaining count, built once.
        self._head_start = [
            b"RateLimit-Policy: %s\r\nRateLimit: %s;r=" % (self.policy_line, quoted(limit.name))
            for limit in limits
        ]
        # The common case: one limit keyed by the peer's address.
        self._by_address = len(limits) == 1 and limits[0].header is None and not trusted

    def admit(self, exchange: Exchange, now: float) -> bool:
        store = _store
        if store is None and self._by_address:
            return self._local(exchange, [exchange.client.client_ip], now)
        keys = self.keys(exchange)
        if store is not None:
            if store.available:
                redis_keys = [
                    limit.redis_prefix + _as_bytes(key)
                    for limit, key in zip(self.limits, keys, strict=True)
                ]
                store.submit(redis_keys, self.redis_args, partial(self._shared, exchange, keys))
                return False  # held: _shared resumes or refuses it
            return self._without_store(store, exchange, keys, now)
        return self._local(exchange, keys, now)

    def keys(self, exchange: Exchange) -> list[LimitKey]:
        """The key of each limit for this request."""
        client = exchange.client
        address: str | None = None
        keys: list[LimitKey] = []
        for limit in self.limits:
            header = limit.header
            if header is not None:
                values = header_values(exchange.head, header)
                if values:
                    value = b", ".join(values)
                    if len(value) > MAX_KEY_BYTES:
                        value = hashlib.blake2b(value, digest_size=16).digest()
                    keys.append(value)
                    continue
            if address is None:
                address = client.client_ip
                if self.trusted and address in self.trusted:
                    forwarded = header_values(exchange.head, FORWARDED_FOR)
                    pairs = [(FORWARDED_FOR, value) for value in forwarded]
                    address = client_address(address, pairs, self.trusted)
            keys.append(address)
        return keys

    # -- deciding --------------------------------------------------------------------

    def _local(self, exchange: Exchange, keys: list[LimitKey], now: float) -> bool:
        shared = _shared_table
        if shared is not None:
            # On the host's clock, read by the table: one clock for every worker.
            decisions, admitted = shared.decide(
                self.shared_limits, [_as_bytes(key) for key in keys]
            )
            return self._answer(exchange, decisions, admitted)
        now_ns = to_nanoseconds(now)
        limits = self.limits
        if len(limits) == 1:
            local = limits[0].local
            decision, tat = local.peek(keys[0], now_ns)
            local.store(keys[0], tat, now_ns)
            return self._answer(exchange, [decision], decision.allowed)
        peeked = [limit.local.peek(key, now_ns) for limit, key in zip(limits, keys, strict=True)]
        admitted = all(decision.allowed for decision, _ in peeked)
        for limit, key, (decision, tat) in zip(limits, keys, peeked, strict=True):
            if admitted or not decision.allowed:
                limit.local.store(key, tat, now_ns)
            else:
                limit.local.touch(key)  # another limit refused: not counted here
        return self._answer(exchange, [decision for decision, _ in peeked], admitted)

    def _without_store(
        self, store: RedisStore, exchange: Exchange, keys: list[LimitKey], now: float
    ) -> bool:
        """Redis is unreachable: decide as ``on_store_failure`` says."""
        if store.on_failure == "allow":
            return True
        if store.on_failure == "deny":
            exchange.client.answer_error(
                exchange,
                503,
                "rate limit store unavailable",
                extra_headers=((b"Retry-After", b"1"),),
            )
            return False
        return self._local(exchange, keys, now)

    def _shared(self, exchange: Exchange, keys: list[LimitKey], reply: Reply) -> None:
        """Redis answered (or could not): finish the request's admission."""
        if exchange.finished:
            return  # the client went away meanwhile
        now = exchange.client.loop.time()
        try:
            if reply is None:
                store = _store
                if store is None:
                    admitted = self._local(exchange, keys, now)
                else:
                    admitted = self._without_store(store, exchange, keys, now)
            else:
                admitted = self._answer(exchange, _decisions(reply), reply[0] == 1)
            if admitted:
                exchange.resume_after(self, now)
        except Exception:
            log.exception("rate limit decision failed")
            if not exchange.response_begun:
                exchange.client.answer_error(exchange, 500, "internal error")

    def _answer(self, exchange: Exchange, decisions: list[Decision], admitted: bool) -> bool:
        """Add the headers of the decisions; answer 429 when not ``admitted``."""
        limits = self.limits
        if admitted:
            if self.headers:
                index = 0 if len(limits) == 1 else _tightest(limits, decisions)
                decision = decisions[index]
                exchange.response_headers += self._head_start[index] + b"%d;t=%d\r\n" % (
                    decision.remaining,
                    ceil(decision.reset_after),
                )
            return True
        refusing = max(
            (index for index, decision in enumerate(decisions) if not decision.allowed),
            key=lambda index: decisions[index].retry_after,
        )
        decision = decisions[refusing]
        extra = [(b"Retry-After", retry_after(decision.retry_after))]
        if self.headers:
            extra.append((b"RateLimit-Policy", self.policy_line))
            limit = limits[refusing]
            if limit.headers:
                extra.append((b"RateLimit", ratelimit_item(limit.name, 0, decision.reset_after)))
        exchange.client.answer_error(exchange, 429, "rate limited", extra_headers=tuple(extra))
        return False


def _tightest(limits: tuple[AppliedLimit, ...], decisions: list[Decision]) -> int:
    """The limit (with headers) closest to exhaustion: fewest left, then longest to reset."""
    best = -1
    for index, (limit, decision) in enumerate(zip(limits, decisions, strict=True)):
        if not limit.headers:
            continue
        if best < 0 or (decision.remaining, -decision.reset_after) < (
            decisions[best].remaining,
            -decisions[best].reset_after,
        ):
            best = index
    return best


def _decisions(reply: list[int]) -> list[Decision]:
    decisions = []
    for offset in range(1, len(reply), 3):
        remaining, retry_us, reset_us = reply[offset : offset + 3]
        decisions.append(Decision(retry_us == 0, remaining, retry_us / 1e6, reset_us / 1e6))
    return decisions


def _as_bytes(key: LimitKey) -> bytes:
    # Address and header keys live in different namespaces, so a client cannot
    # borrow another's address bucket by sending that address as a header value.
    return b"i:" + key.encode() if isinstance(key, str) else b"h:" + key


# -- building ------------------------------------------------------------------------


def build_policies(listener: Listener, route: Route | None) -> tuple[RequestPolicy, ...]:
    """The policies a request of ``listener`` (matched by ``route``, None for the
    listener's default) passes before going to its pool, in order."""
    limits = []
    if listener.rate_limit is not None:
        limits.append(_applied("listener", (listener.name,), listener.rate_limit))
    if route is not None and route.rate_limit is not None:
        scope = (listener.name, route.match.host, route.match.path_prefix)
        limits.append(_applied("route", scope, route.rate_limit))
    if not limits:
        return ()
    return (RateLimitPolicy(tuple(limits), TrustedProxies(listener.trusted_proxies)),)


def _applied(name: str, scope: tuple[object, ...], settings: RateLimit) -> AppliedLimit:
    identity = (name, *scope, settings.key, settings.rate, settings.per, settings.burst)
    rate = GcraRate.of(settings.rate, settings.per, settings.burst)
    local = _LIMITERS.get(identity)
    if local is None:
        local = LocalLimiter(rate, settings.max_keys)
        _LIMITERS[identity] = local
    local.max_keys = settings.max_keys
    digest = hashlib.blake2b(repr(identity).encode(), digest_size=8).hexdigest()
    header = settings.key.removeprefix("header:").encode() if settings.key != "client_ip" else None
    return AppliedLimit(
        name=name,
        header=header,
        local=local,
        headers=settings.headers,
        policy_item=policy_item(name, rate),
        redis_prefix=REDIS_KEY_PREFIX + digest.encode() + b":",
        redis_args=(max(1, rate.interval // 1000), rate.burst),
        shared=SharedLimit(rate, bytes.fromhex(digest)),
    )


# -- the table shared by worker processes -------------------------------------------

_shared_table: SharedRateTable | None = None


def use_shared_table(table: SharedRateTable | None) -> None:
    """Decide in ``table`` (shared with the other worker processes) from now on, when
    no ``rate_limit_store`` is configured; None: in this process's own tables."""
    global _shared_table
    _shared_table = table


# -- the shared store ----------------------------------------------------------------

_store: RedisStore | None = None


def configure_store(settings: RateLimitStore | None) -> None:
    """Decide with ``settings`` (``Config.rate_limit_store``) from now on.

    Call it from the event loop at every (re)load; unchanged settings keep the
    connection, changed ones replace it (the old one closes once its checks are
    answered). None: decide in process memory.
    """
    global _store
    old = _store
    if old is not None and old.settings == settings:
        return
    if old is None and settings is None:
        return
    _store = None
    if settings is not None:
        from maitred.policies.rate_limit_redis import RedisStore

        _store = RedisStore(settings, asyncio.get_running_loop())
        log.info(
            "rate limit store: redis at %s (on failure: %s)",
            _store.where,
            settings.on_store_failure,
        )
    else:
        log.info("rate limit store: process memory")
    if old is not None:
        task = asyncio.get_running_loop().create_task(old.close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)


async def close_store() -> None:
    """Close the Redis connection (at shutdown, after the drain)."""
    global _store
    store, _store = _store, None
    if store is not None:
        await store.close()


def current_store() -> RedisStore | None:
    return _store


_closing: set[asyncio.Task[None]] = set()
