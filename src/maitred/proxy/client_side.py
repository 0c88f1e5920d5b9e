"""What an ``Exchange`` needs from the side that asked for it.

An HTTP/1.1 ``ClientConnection`` is one such side; an HTTP/2 stream is another.
Routing, policies, balancing, retries and the upstream relay only talk to this
interface, so a request goes through the same code whatever its framing.

The upstream relay writes the answer, framed as HTTP/1.1, to ``transport``: an
HTTP/1.1 client gets those bytes as they are, an HTTP/2 stream re-frames them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from maitred.proxy.http1 import Exchange
    from maitred.proxy.routing import ListenerSlot
    from maitred.proxy.upstream import ServerConnections, UpstreamConnection


class ExchangeClient(Protocol):
    loop: asyncio.AbstractEventLoop
    slot: ListenerSlot
    client_ip: str
    #: Where the answer goes (HTTP/1.1 bytes); None once the client is gone.
    transport: asyncio.Transport | None
    #: True when no further request will be read after the current ones.
    closing: bool
    #: Reasons (bits, see http1.PAUSE_*) not to take more request bytes now.
    paused: int
    #: An exchange whose Upgrade awaits the server's 101 (HTTP/1.1 only).
    tunnel_pending: Exchange | None
    #: Join the pieces of one delivery into one write (one TLS record) instead of
    #: writelines (one writev on a plain socket).
    joins_writes: bool

    @property
    def write_paused(self) -> bool:
        """The client is not taking answer bytes: keep the server's waiting."""
        ...

    def answer_error(
        self,
        exchange: Exchange,
        status: int,
        why: str,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None: ...

    def abort_truncated(self, exchange: Exchange) -> None: ...

    def exchange_done(self, exchange: Exchange, now: float) -> None: ...

    def header_pairs(self) -> list[tuple[bytes, bytes]]: ...

    def pause_reading(self, reason: int) -> None: ...

    def resume_reading(self, reason: int) -> None: ...

    def pause_reading_for_upstream(self) -> None: ...

    def resume_reading_for_upstream(self) -> None: ...

    def tunnel_refused(self, exchange: Exchange) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def proxy_header(self, version: str) -> bytes: ...

    def take_private(self, servers: ServerConnections) -> UpstreamConnection | None: ...

    def keep_private(self, conn: UpstreamConnection) -> None: ...
