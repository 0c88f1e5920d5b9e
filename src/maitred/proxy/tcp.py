"""Layer 4: a `protocol: tcp` listener relays raw bytes to a server of its pool.

One ``TcpClient`` per accepted connection picks a server (retrying others on a
connect failure), then bytes flow both ways unchanged, with flow control on
both sides and half-close passed through (a FIN from one side becomes a FIN to
the other; the connection ends when both sides are done or either resets).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from maitred.balancing.base import LiveServer
from maitred.proxy.deadline import Deadline
from maitred.proxy.proxy_protocol import header_v1, header_v2
from maitred.proxy.routing import PoolRuntime
from maitred.proxy.tcp_splice import adopt

if TYPE_CHECKING:
    from maitred.proxy.http1 import DataPlane

log = logging.getLogger("maitred.tcp")

MAX_EARLY_BYTES: Final = 256 * 1024  # kept while the server connection opens, then reading pauses


class TcpListenerRuntime:
    """What a TCP listener's connections read; swapped whole on reload."""

    __slots__ = ("name", "pool", "idle_timeout", "connect_attempts", "zero_copy")

    def __init__(
        self, name: str, pool: PoolRuntime, idle_timeout: float, zero_copy: bool = False
    ) -> None:
        self.name = name
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.connect_attempts = pool.retry_attempts + 1
        #: Relay with splice(2) (tcp_splice.py) rather than through transports.
        self.zero_copy = zero_copy


class TcpSlot:
    __slots__ = (
        "runtime",
        "bytes_in",
        "bytes_out",
        "own_answers",
        "tls_handshakes",
        "rate_limited",
    )

    def __init__(self, runtime: TcpListenerRuntime) -> None:
        self.runtime = runtime
        #: Bytes relayed from clients to servers and back, over the listener's life.
        self.bytes_in = 0
        self.bytes_out = 0
        # The HTTP listeners' other counters, which stay 0 at layer 4, so that
        # metrics treat every listener alike.
        self.own_answers = [0] * 6
        self.tls_handshakes = 0
        self.rate_limited = 0


class TcpClient(asyncio.Protocol):
    def __init__(self, slot: TcpSlot, loop: asyncio.AbstractEventLoop, plane: DataPlane) -> None:
        self.slot = slot
        self.loop = loop
        self.plane = plane
        self.runtime = slot.runtime
        self.transport: asyncio.Transport | None = None
        self.server: LiveServer | None = None
        self.upstream: TcpServerSide | None = None
        self.early: list[bytes] | None = []
        self.early_size = 0
        self.client_eof = False
        self.tried: list[LiveServer] = []
        self.client_address: tuple[str, int] = ("", 0)
        self.local_address: tuple[str, int] = ("", 0)
        self.deadline = Deadline(loop, self, TcpClient._idle_too_long)
        self.spliced = False  # handed to a SpliceRelay; this protocol is done

    # -- client side ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.runtime.zero_copy:
            self.spliced = True
            adopt(transport, self.slot, self.loop, self.plane)  # type: ignore[arg-type]
            return
        self.transport = transport  # type: ignore[assignment]
        self.plane.connections.add(self)
        self.plane.accepted += 1
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client_address = (peer[0], peer[1]) if peer else ("", 0)
        self.local_address = (local[0], local[1]) if local else ("", 0)
        self.deadline.arm(self.runtime.idle_timeout)
        self._connect()

    def data_received(self, data: bytes) -> None:
        self.deadline.touched = True
        self.slot.bytes_in += len(data)
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)
            return
        if self.early is not None:
            self.early.append(data)
            self.early_size += len(data)
            if self.early_size > MAX_EARLY_BYTES and self.transport is not None:
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.client_eof = True
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            if upstream.transport.can_write_eof():
                upstream.transport.write_eof()
            if upstream.server_eof:
                return False  # both directions done: close
        return True  # keep the other direction open (half-close)

    def close_when_idle(self) -> None:
        """Graceful stop: a tunnel cannot tell when it is idle; it runs until the drain
        timeout or until either side ends it."""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.spliced:
            return
        self.transport = None
        self.deadline.cancel()
        self.plane.forget(self)
        upstream = self.upstream
        self.upstream = None
        if upstream is not None and upstream.transport is not None:
            if exc is None:
                upstream.transport.close()
            else:
                upstream.transport.abort()
        self._release()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # -- choosing and reaching a server ------------------------------------------

    def _connect(self) -> None:
        runtime = self.runtime
        pool = runtime.pool
        server = pool.take_for_connection(
            self.client_address[0], self.tried, runtime.connect_attempts, self.loop.time()
        )
        if server is None:
            log.warning("tcp listener %s: no server available for %s", runtime.name, pool.name)
            if self.transport is not None:
                self.transport.close()
            return
        self.server = server
        task = self.loop.create_task(self._open(server, pool.connect_timeout))
        task.add_done_callback(self._connected)

    async def _open(self, server: LiveServer, timeout: float) -> TcpServerSide:
        _, side = await asyncio.wait_for(
            self.loop.create_connection(lambda: TcpServerSide(self), server.host, server.port),
            timeout,
        )
        return side

    def _connected(self, task: asyncio.Task[TcpServerSide]) -> None:
        server = self.server
        if task.cancelled() or server is None:
            return
        exc = task.exception()
        if exc is not None:
            log.warning("tcp: connect to %s failed: %r", server.address, exc)
            self._release(failed=True)
            if self.transport is not None:
                self.tried.append(server)
                self._connect()
            return
        side = task.result()
        if self.transport is None:
            if side.transport is not None:
                side.transport.close()
            return
        self.upstream = side
        assert side.transport is not None
        announce = self.runtime.pool.send_proxy_protocol
        early = self.early or []
        self.early = None
        if announce:
            build = header_v2 if announce == "v2" else header_v1
            early.insert(0, build(self.client_address, self.local_address))
        if early:
            side.transport.writelines(early)
        if self.early_size > MAX_EARLY_BYTES:
            self.transport.resume_reading()
        if self.client_eof and side.transport.can_write_eof():
            side.transport.write_eof()

    def _release(self, failed: bool = False) -> None:
        server, self.server = self.server, None
        if server is not None:
            self.runtime.pool.give_back_from_connection(server, failed, self.loop.time())

    def _idle_too_long(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- called by the server side -------------------------------------------------

    def server_data(self, data: bytes) -> None:
        self.deadline.touched = True
        self.slot.bytes_out += len(data)
        if self.transport is not None:
            self.transport.write(data)

    def server_eof(self) -> bool:
        if self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        return not self.client_eof

    def server_closed(self, exc: Exception | None) -> None:
        self.upstream = None
        if self.transport is not None:
            if exc is None:
                self.transport.close()
            else:
                self.transport.abort()


class TcpServerSide(asyncio.Protocol):
    def __init__(self, client: TcpClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.server_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.server_data(data)

    def eof_received(self) -> bool:
        self.server_eof = True
        return self.client.server_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client.server_closed(exc)

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()
