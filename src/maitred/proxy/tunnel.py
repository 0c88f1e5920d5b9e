"""A tunnel between a client and a server after an accepted Upgrade (WebSocket...).

Once the server answered 101, both connections change protocol: bytes go
through unchanged both ways, with flow control and half-close, until either
side closes or the tunnel stays silent for its idle timeout. The exchange that
opened it stays open meanwhile, so the server's active count (least
connections) includes its tunnels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from maitred.proxy.deadline import Deadline


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel: what it receives goes to ``peer``."""

    def __init__(self, on_closed: Callable[[Exception | None], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: TunnelEnd | None = None
        self.deadline: Deadline | None = None
        self.eof = False
        self._on_closed = on_closed

    def adopt(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_protocol(self)
        transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.deadline is not None:
            self.deadline.touched = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            if peer.eof:
                return False  # both directions are done
        return True  # the other direction goes on (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.deadline is not None:
            self.deadline.cancel()
        peer = self.peer
        self.peer = None
        if peer is not None and peer.transport is not None:
            if exc is None:
                peer.transport.close()
            else:
                peer.transport.abort()
        self._on_closed(exc)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def open_tunnel(
    loop: asyncio.AbstractEventLoop,
    client: asyncio.Transport,
    server: asyncio.Transport,
    *,
    to_server: bytes,
    to_client: bytes,
    idle_timeout: float,
    on_client_closed: Callable[[Exception | None], None],
) -> None:
    """Join ``client`` and ``server``; the early bytes each side already sent go first."""
    client_end = TunnelEnd(on_client_closed)
    server_end = TunnelEnd(lambda exc: None)
    client_end.peer, server_end.peer = server_end, client_end

    def idle_too_long(_owner: None) -> None:
        if client_end.transport is not None:
            client_end.transport.close()

    deadline = Deadline(loop, None, idle_too_long)
    client_end.deadline = server_end.deadline = deadline
    deadline.arm(idle_timeout)
    client_end.adopt(client)
    server_end.adopt(server)
    if to_server:
        server.write(to_server)
    if to_client:
        client.write(to_client)
