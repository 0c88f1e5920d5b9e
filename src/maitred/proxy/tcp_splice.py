"""Layer 4 without copying through Python: splice(2) moves bytes socket → pipe → socket.

A ``protocol: tcp`` listener with ``zero_copy`` on hands each accepted connection
to a ``SpliceRelay``. The kernel moves the payload from one socket into a pipe
and from the pipe into the other socket (page references, not copies into user
space); Python only sees readiness events and byte counts. Everything else a
TCP listener does stays: the pool's balancer picks the server (other servers
are tried when a connect fails), the PROXY header goes out first with a plain
send, half-close passes through both ways, the idle timeout closes quiet
connections and a reset on one side resets the other.

Each direction is a ``_Flow``. It reads from its source only while its pipe is
empty, so when the destination would block the flow stops reading and waits
for the destination to become writable: at most one pipe of data (plus the
kernel's socket buffers) is in flight per direction, whatever the peers do.

The relay works on raw file descriptors registered with ``loop.add_reader`` /
``add_writer`` (uvloop and the stock loops both allow it for descriptors no
transport owns). The listener still accepts through ``loop.create_server``; the
accepted transport's socket is duplicated and the transport closed before it
reads anything, which leaves the connection to the duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any, Final, Literal

from maitred.balancing.base import LiveServer
from maitred.proxy.deadline import Deadline
from maitred.proxy.proxy_protocol import header_v1, header_v2

if TYPE_CHECKING:
    from maitred.proxy.http1 import DataPlane
    from maitred.proxy.tcp import TcpListenerRuntime, TcpSlot

log = logging.getLogger("maitred.tcp")

#: What ``auto`` means here: measured faster than copying through Python on this
#: kind of host (bench/tcp_bench.py), so splice wherever the platform has it.
AUTO_PREFERS_SPLICE: Final = True
#: Bytes a pipe holds; each splice moves at most this much. Measured CPU per GB
#: (bench/tcp_bench.py): 64 KiB pipes cost more than copying, 256 KiB about the
#: same, 1 MiB about 40 % less. The pages are kernel memory held only while data
#: is queued: a connection whose reader stalls holds up to this much per direction
#: (an unprivileged user's pipes shrink to the default once over
#: /proc/sys/fs/pipe-user-pages-soft; F_SETPIPE_SZ failing keeps the default size).
PIPE_SIZE: Final = 1024 * 1024
#: Empty pipes kept for the next connections (two per connection).
POOLED_PIPES: Final = 128
#: Reads (and the writes that follow) done for one readiness event before
#: giving the loop back, so one fast connection does not starve the others.
ROUNDS_PER_WAKEUP: Final = 8

_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_RESET_ON_CLOSE: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST
_CONNECT_PENDING: Final = (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK)


def splice_supported() -> bool:
    """Whether this platform can move bytes between sockets with splice(2)."""
    return sys.platform.startswith("linux") and hasattr(os, "splice")


def use_zero_copy(setting: bool | Literal["auto"]) -> bool:
    """A listener's ``zero_copy`` setting resolved for this platform."""
    if setting == "auto":
        return AUTO_PREFERS_SPLICE and splice_supported()
    return bool(setting) and splice_supported()


class PipePool:
    """Empty non-blocking pipes, sized once and reused across connections.

    Only a pipe known to be empty comes back: one closed with bytes still queued
    (a reset mid-transfer) is closed instead. A forked child closes the copies it
    inherited, so two processes never splice through the same pipe.
    """

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._free: list[tuple[int, int, int]] = []
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.clear)

    def take(self) -> tuple[int, int, int]:
        """(read end, write end, capacity in bytes)."""
        if self._free:
            return self._free.pop()
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            capacity = fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            # Above /proc/sys/fs/pipe-max-size or the user's pipe quota: keep the default.
            capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        return read_end, write_end, capacity

    def give_back(self, pipe: tuple[int, int, int], empty: bool) -> None:
        if empty and len(self._free) < self.keep:
            self._free.append(pipe)
            return
        os.close(pipe[0])
        os.close(pipe[1])

    def clear(self) -> None:
        free, self._free = self._free, []
        for read_end, write_end, _ in free:
            os.close(read_end)
            os.close(write_end)

    def __len__(self) -> int:
        return len(self._free)


PIPES: Final = PipePool(PIPE_SIZE, POOLED_PIPES)


def adopt(
    transport: asyncio.Transport,
    slot: TcpSlot,
    loop: asyncio.AbstractEventLoop,
    plane: DataPlane,
) -> SpliceRelay | None:
    """Take an accepted connection away from its transport and relay it with splice.

    Called from ``connection_made``, before the transport has read anything.
    """
    transport.pause_reading()
    try:
        fd = os.dup(transport.get_extra_info("socket").fileno())
    except OSError as exc:  # out of descriptors: refuse this one connection
        log.warning("tcp listener %s: cannot take the connection: %r", slot.runtime.name, exc)
        transport.abort()
        return None
    transport.abort()  # closes the transport's descriptor; the duplicate keeps the connection
    client = socket.socket(fileno=fd)
    client.setblocking(False)
    relay = SpliceRelay(client, slot, loop, plane)
    relay.start()
    return relay


class _Flow:
    """One direction of a relay: ``source`` → pipe → ``destination``."""

    __slots__ = (
        "relay",
        "source",
        "destination",
        "pipe",
        "queued",
        "waiting_for_destination",
        "done",
        "inbound",
    )

    def __init__(self, relay: SpliceRelay, source: int, destination: int, inbound: bool) -> None:
        self.relay = relay
        self.source = source
        self.destination = destination
        self.pipe = PIPES.take()
        self.queued = 0  # bytes in the pipe, not yet in the destination
        self.waiting_for_destination = False
        self.done = False  # the source ended and the destination got its FIN
        self.inbound = inbound  # client → server (counted as bytes in)

    def source_readable(self) -> None:
        relay = self.relay
        if relay.closed:
            return  # an event reported in the same loop pass as the close
        relay.deadline.touched = True
        read_end, write_end, capacity = self.pipe
        source, destination = self.source, self.destination
        for _ in range(ROUNDS_PER_WAKEUP):
            try:
                count = os.splice(source, write_end, capacity, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                return  # nothing more to read (the pipe is empty whenever we read)
            except OSError as exc:
                relay.fail(exc)
                return
            if count == 0:
                self._source_ended()
                return
            if self.inbound:
                relay.slot.bytes_in += count
            else:
                relay.slot.bytes_out += count
            queued = count
            try:
                while queued:
                    queued -= os.splice(read_end, destination, queued, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.queued = queued
                self._wait_for_destination()
                return
            except OSError as exc:
                self.queued = queued
                relay.fail(exc)
                return
            if count < capacity:
                return  # the socket is most likely empty: spare the read that says so

    def destination_writable(self) -> None:
        relay = self.relay
        if relay.closed:
            return
        relay.deadline.touched = True
        try:
            while self.queued:
                self.queued -= os.splice(
                    self.pipe[0], self.destination, self.queued, flags=_SPLICE_FLAGS
                )
        except BlockingIOError:
            return
        except OSError as exc:
            relay.fail(exc)
            return
        self.waiting_for_destination = False
        loop = relay.loop
        loop.remove_writer(self.destination)
        loop.add_reader(self.source, self.source_readable)

    def _wait_for_destination(self) -> None:
        # Backpressure: stop reading until the pipe drains into the destination.
        self.waiting_for_destination = True
        loop = self.relay.loop
        loop.remove_reader(self.source)
        loop.add_writer(self.destination, self.destination_writable)

    def _source_ended(self) -> None:
        relay = self.relay
        relay.loop.remove_reader(self.source)
        try:
            relay.socket_of(self.destination).shutdown(socket.SHUT_WR)
        except OSError as exc:
            relay.fail(exc)
            return
        self.done = True
        relay.flow_done()

    def release_pipe(self) -> None:
        pipe, self.pipe = self.pipe, (-1, -1, 0)
        if pipe[0] >= 0:
            PIPES.give_back(pipe, empty=self.queued == 0)


class _RelayTransport(asyncio.Transport):
    """What the data plane calls on a client connection while draining."""

    def __init__(self, relay: SpliceRelay) -> None:
        super().__init__()
        self._relay = relay

    def abort(self) -> None:
        self._relay.close(reset=True)

    def close(self) -> None:
        self._relay.close(reset=False)

    def is_closing(self) -> bool:
        return self._relay.closed


class SpliceRelay:
    """One client connection relayed to one server with splice(2)."""

    __slots__ = (
        "slot",
        "runtime",
        "loop",
        "plane",
        "client",
        "upstream",
        "transport",
        "server",
        "tried",
        "client_address",
        "local_address",
        "deadline",
        "connect_timer",
        "preamble",
        "inbound",
        "outbound",
        "closed",
    )

    def __init__(
        self,
        client: socket.socket,
        slot: TcpSlot,
        loop: asyncio.AbstractEventLoop,
        plane: DataPlane,
    ) -> None:
        self.slot = slot
        self.runtime: TcpListenerRuntime = slot.runtime
        self.loop = loop
        self.plane = plane
        self.client = client
        self.upstream: socket.socket | None = None
        self.transport: asyncio.Transport | None = _RelayTransport(self)
        self.server: LiveServer | None = None
        self.tried: list[LiveServer] = []
        self.client_address: tuple[str, int] = ("", 0)
        self.local_address: tuple[str, int] = ("", 0)
        self.deadline = Deadline(loop, self, SpliceRelay._idle_too_long)
        self.connect_timer: asyncio.TimerHandle | None = None
        self.preamble = b""  # the PROXY header while the server socket takes it
        self.inbound: _Flow | None = None  # client → server
        self.outbound: _Flow | None = None  # server → client
        self.closed = False

    def start(self) -> None:
        self.plane.connections.add(self)
        self.plane.accepted += 1
        try:
            peer = self.client.getpeername()
            local = self.client.getsockname()
        except OSError:
            self.close(reset=True)  # reset before we got to it
            return
        self.client_address = (peer[0], peer[1])
        self.local_address = (local[0], local[1])
        self.deadline.arm(self.runtime.idle_timeout)
        self._connect()

    def close_when_idle(self) -> None:
        """Graceful stop: a tunnel cannot tell when it is idle; it runs until the drain
        timeout or until either side ends it."""

    # -- choosing and reaching a server ------------------------------------------

    def _connect(self) -> None:
        runtime = self.runtime
        pool = runtime.pool
        server = pool.take_for_connection(
            self.client_address[0], self.tried, runtime.connect_attempts, self.loop.time()
        )
        if server is None:
            log.warning("tcp listener %s: no server available for %s", runtime.name, pool.name)
            self.close(reset=False)
            return
        self.server = server
        family = _numeric_family(server.host)
        if family is None:
            task = self.loop.create_task(self._resolve(server))
            task.add_done_callback(self._resolved)
            return
        self._begin_connect(family, (server.host, server.port))

    async def _resolve(self, server: LiveServer) -> tuple[int, Any]:
        infos = await self.loop.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        return family, address

    def _resolved(self, task: asyncio.Task[tuple[int, Any]]) -> None:
        if self.closed or task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._connect_failed(exc)
            return
        self._begin_connect(*task.result())

    def _begin_connect(self, family: int, address: Any) -> None:
        upstream = socket.socket(family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream = upstream
        status = upstream.connect_ex(address)
        if status == 0:
            self._connected()
        elif status in _CONNECT_PENDING:
            self.loop.add_writer(upstream.fileno(), self._connect_finished)
            self.connect_timer = self.loop.call_later(
                self.runtime.pool.connect_timeout, self._connect_timed_out
            )
        else:
            self._connect_failed(OSError(status, os.strerror(status)))

    def _connect_finished(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        fd = upstream.fileno()
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        status = upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if status:
            self.loop.remove_writer(fd)
            self._connect_failed(OSError(status, os.strerror(status)))
            return
        self._connected()
        if not self.closed and not self.preamble:
            # After the flows registered their reader: uvloop keeps one poll handle
            # per descriptor, dropped when nothing watches it, so this order saves
            # closing and re-creating it.
            self.loop.remove_writer(fd)

    def _connect_timed_out(self) -> None:
        self.connect_timer = None
        upstream = self.upstream
        if upstream is not None:
            self.loop.remove_writer(upstream.fileno())
        self._connect_failed(TimeoutError("connect timed out"))

    def _connect_failed(self, exc: BaseException) -> None:
        server = self.server
        log.warning("tcp: connect to %s failed: %r", server.address if server else "?", exc)
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()
        self._release(failed=True)
        if server is not None:
            self.tried.append(server)
        if not self.closed:
            self._connect()

    def _connected(self) -> None:
        announce = self.runtime.pool.send_proxy_protocol
        if announce:
            build = header_v2 if announce == "v2" else header_v1
            self.preamble = build(self.client_address, self.local_address)
            self._send_preamble()
            return
        self._start_flows()

    def _send_preamble(self) -> None:
        # A fresh socket's send buffer takes the header whole; the loop is for form's sake.
        upstream = self.upstream
        assert upstream is not None
        try:
            sent = upstream.send(self.preamble)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(exc)
            return
        self.preamble = self.preamble[sent:]
        if self.preamble:
            self.loop.add_writer(upstream.fileno(), self._preamble_writable)
            return
        self._start_flows()

    def _preamble_writable(self) -> None:
        if self.upstream is not None:
            self._send_preamble()
            if not self.preamble and self.upstream is not None:
                self.loop.remove_writer(self.upstream.fileno())

    def _start_flows(self) -> None:
        upstream = self.upstream
        assert upstream is not None
        client_fd, server_fd = self.client.fileno(), upstream.fileno()
        try:
            inbound = self.inbound = _Flow(self, client_fd, server_fd, inbound=True)
            outbound = self.outbound = _Flow(self, server_fd, client_fd, inbound=False)
        except OSError as exc:  # no descriptors left for a pipe
            log.warning("tcp listener %s: no pipe for a relay: %r", self.runtime.name, exc)
            self.close(reset=True)
            return
        self.loop.add_reader(client_fd, inbound.source_readable)
        self.loop.add_reader(server_fd, outbound.source_readable)

    def _release(self, failed: bool = False) -> None:
        server, self.server = self.server, None
        if server is not None:
            self.runtime.pool.give_back_from_connection(server, failed, self.loop.time())

    # -- called by the flows -------------------------------------------------------

    def socket_of(self, fd: int) -> socket.socket:
        if fd == self.client.fileno() or self.upstream is None:
            return self.client
        return self.upstream

    def flow_done(self) -> None:
        inbound, outbound = self.inbound, self.outbound
        if inbound is not None and outbound is not None and inbound.done and outbound.done:
            self.close(reset=False)

    def fail(self, exc: OSError) -> None:
        """A reset or error on either side: the other side is reset too."""
        if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
            log.info("tcp listener %s: relay error %r", self.runtime.name, exc)
        self.close(reset=True)

    def _idle_too_long(self) -> None:
        self.close(reset=False)

    def close(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadline.cancel()
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        loop = self.loop
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            # Whatever was registered (flows, a pending connect or header), unregistered
            # before the descriptor number can be reused.
            fd = sock.fileno()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            if reset:
                with contextlib.suppress(OSError):  # already reset by the peer
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            sock.close()
        for flow in (self.inbound, self.outbound):
            if flow is not None:
                flow.release_pipe()
        self.upstream = None
        self.transport = None
        self._release()
        self.plane.forget(self)


def _numeric_family(host: str) -> int | None:
    """AF_INET / AF_INET6 for an address literal, None for a name to resolve."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None
