"""``sticky: {mode: cookie}``: a signed cookie names the client's server.

The pool's algorithm picks a server for a client without a valid cookie; the
answer then carries ``Set-Cookie`` with an opaque token for that server (see
``sticky_cookie``), and later requests carrying it go back to that server for
as long as it is available. Nothing is stored on the balancer.

A Set-Cookie is sent only when needed: the client had no valid cookie, its
server went away and the request moved, or the cookie is past half its life
(so an active session never hits its expiry mid-use, without re-sending the
cookie on every answer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from maitred.balancing import Balancer
from maitred.balancing.base import LiveServer
from maitred.config import Sticky
from maitred.policies.sticky_cookie import StickyCookie, StickyCookieCodec
from maitred.policies.sticky_pool import EligibleServers, has_room, refuse_lost_session

if TYPE_CHECKING:
    from maitred.proxy.http1 import Exchange

CRLF = b"\r\n"
_SET_COOKIE = b"Set-Cookie: "


class CookieAffinity:
    """Keeps a client on the server its cookie names."""

    def __init__(
        self,
        pool_name: str,
        settings: Sticky,
        secret: bytes,
        *,
        https: bool = False,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool_name = pool_name
        self._codec = StickyCookieCodec(secret, scope=pool_name)
        self._strict = settings.strict
        self._max_age = settings.max_age
        self._refresh_below = settings.max_age / 2
        self._wall_clock = wall_clock
        name = settings.cookie.encode("ascii")
        self._name_equals = name + b"="
        self._line_start = _SET_COOKIE + self._name_equals
        plain, secure = _attributes(settings)
        # Secure: as configured, or on HTTPS listeners only (decided per request).
        self._attributes_by_scheme = {b"http": plain, b"https": secure}
        if settings.secure or https:
            self._attributes_by_scheme[b"http"] = secure
        elif settings.secure is False:
            self._attributes_by_scheme[b"https"] = plain
        self._servers: tuple[LiveServer, ...] | None = None
        self._server_by_token: dict[bytes, LiveServer] = {}
        self._token_of: dict[LiveServer, bytes] = {}
        self._eligible = EligibleServers()
        # What choose() read for the exchange it saw last: chosen() nearly always
        # follows at once for the same exchange, so the cookie is decoded once.
        self._last_exchange: Exchange | None = None
        self._last_cookie: StickyCookie | None = None
        self._last_wall = 0.0

    def choose(self, exchange: Exchange, now: float) -> LiveServer | None:
        pool = exchange.pool
        assert pool is not None
        balancer = pool.balancer
        self._index(balancer)
        wall = self._wall_clock()
        cookie = self._read_cookie(exchange, wall)
        self._last_exchange, self._last_cookie, self._last_wall = exchange, cookie, wall
        if cookie is None:
            return None
        server = self._server_by_token.get(cookie.token)
        if server is not None and server in self._eligible.of(balancer) and has_room(server):
            return server
        if self._strict:
            refuse_lost_session(exchange, self._pool_name)
        return None

    def chosen(self, exchange: Exchange, server: LiveServer, now: float) -> None:
        if exchange is self._last_exchange:
            cookie, wall = self._last_cookie, self._last_wall
            self._last_exchange = self._last_cookie = None
        else:
            # A retry on another server after the first attempt failed.
            wall = self._wall_clock()
            cookie = self._read_cookie(exchange, wall)
        pool = exchange.pool
        assert pool is not None
        self._index(pool.balancer)
        token = self._token_of.get(server)
        if token is None:
            return  # not a server of this pool generation; nothing sensible to name
        if cookie is not None:
            if cookie.token == token:
                if cookie.expires_at - wall >= self._refresh_below:
                    return
            elif self._strict and cookie.token in self._server_by_token:
                # Only a retry lands a strict session elsewhere: the session stays put.
                return
        self._set_cookie(exchange, token, wall)

    # -- helpers -------------------------------------------------------------------

    def _index(self, balancer: Balancer) -> None:
        """Token ↔ server maps for the pool's current members (rebuilt on membership change)."""
        servers = balancer.servers
        if servers is self._servers:
            return
        self._servers = servers
        token_of = {server: self._codec.server_token(server.address) for server in servers}
        self._token_of = token_of
        self._server_by_token = {token: server for server, token in token_of.items()}

    def _read_cookie(self, exchange: Exchange, wall: float) -> StickyCookie | None:
        """The first valid cookie of ours the request carries (a browser may send several)."""
        name_equals = self._name_equals
        for name, value in exchange.client.header_pairs():
            if len(name) != 6 or name.lower() != b"cookie" or name_equals not in value:
                continue
            for pair in value.split(b";"):
                pair = pair.strip()
                if pair.startswith(name_equals):
                    decoded = self._codec.decode(pair[len(name_equals) :].strip(b'"'), wall)
                    if decoded is not None:
                        return decoded
        return None

    def _set_cookie(self, exchange: Exchange, token: bytes, wall: float) -> None:
        value = self._codec.encode(token, wall + self._max_age).encode("ascii")
        attributes = self._attributes_by_scheme.get(
            exchange.client.slot.runtime.scheme, self._attributes_by_scheme[b"http"]
        )
        line = self._line_start + value + attributes + CRLF
        existing = exchange.response_headers
        if self._line_start in existing:
            # A retry moved the request: replace the cookie set for the failed attempt.
            existing = b"".join(
                kept
                for kept in existing.splitlines(keepends=True)
                if not kept.startswith(self._line_start)
            )
        exchange.response_headers = existing + line


def _attributes(settings: Sticky) -> tuple[bytes, bytes]:
    """The Set-Cookie attributes after the value: (without Secure, with Secure)."""
    parts = [f"Max-Age={math.ceil(settings.max_age)}", f"Path={settings.path}"]
    if settings.domain:
        parts.append(f"Domain={settings.domain}")
    parts.append(f"SameSite={settings.same_site}")
    if settings.http_only:
        parts.append("HttpOnly")
    plain = "".join(f"; {part}" for part in parts)
    secure = plain + "; Secure"
    if settings.same_site == "None":
        # Browsers drop SameSite=None cookies without Secure.
        plain = secure
    return plain.encode("ascii"), secure.encode("ascii")
