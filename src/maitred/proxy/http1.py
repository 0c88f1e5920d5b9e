"""The client side of an HTTP/1.1 listener: parse, route, pick, forward.

One ``ClientConnection`` per accepted connection, driven by httptools callbacks
(no Streams, no coroutine per request); a plain request head without a body is
read by plain_head, which makes the same calls directly. Each request becomes an
``Exchange`` that owns the request's framing state and, once dispatched, one
upstream connection. Pipelined requests queue behind the active exchange and are
answered in order; while one waits, reading from the client pauses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

import httptools
from mypy_extensions import i64

from maitred.proxy import proxy_protocol
from maitred.proxy.client_identity import ClientIdentity, address_bytes, forwarded_for_field
from maitred.proxy.deadline import Deadline
from maitred.proxy.framing import (
    CONNECTION,
    CONTENT_LENGTH,
    CR,
    FORWARDED_FOR,
    HOST,
    LF,
    MAX_CHUNK_LINE,
    METHOD_PREFIX,
    ORDINARY,
    PLAIN_CONNECTION_VALUES,
    REQUEST_HEADER_KINDS,
    REQUEST_ID,
    REQUEST_LINE_SPACES,
    REQUEST_PREFILTER,
    TRANSFER_ENCODING,
    UPGRADE,
    append_field,
    connection_named_headers,
    drop_named_headers,
    end_of_blank_line,
    error_response,
    header_kind,
    last_three,
    normalize_transfer_encoding,
    skip_empty_lines,
    unknown_method_status,
    valid_host,
)
from maitred.proxy.plain_head import RequestHead, read_request_head
from maitred.proxy.routing import latency_bucket
from maitred.proxy.upstream import CHUNK_END, CRLF, ServerConnections, UpstreamConnection
from maitred.proxy.write_batch import WriteBatch

if TYPE_CHECKING:
    from maitred.balancing.base import LiveServer
    from maitred.proxy.client_side import ExchangeClient
    from maitred.proxy.routing import ListenerSlot, PoolRuntime, RequestPolicy, RouteRuntime

log = logging.getLogger("maitred.http")
# Final: compiled code holds these in C statics, not looked up by name per call.
_monotonic: Final = time.monotonic

# Reasons to stop reading from a client, as bits: reading resumes when none is left.
PAUSE_PIPELINE: Final = 1  # a request is queued behind the active one
PAUSE_UPSTREAM: Final = 2  # the server's socket buffer is full
PAUSE_BUFFERING: Final = 4  # body bytes are waiting for a connection to the server

# Body bytes kept while the server connection is being opened, before pausing.
MAX_PENDING_BODY: Final = 256 * 1024
# Requests read ahead of the one being answered, at most (then: close after them).
MAX_PIPELINED: Final = 32
# A request is kept for a replay on a fresh connection up to this many bytes.
MAX_REPLAY: Final = 64 * 1024
# Request parsers kept for the next connection to borrow, at most (about 850 bytes each).
MAX_SPARE_PARSERS: Final = 1024

# Methods a request may be sent twice with (RFC 9110 section 9.2.2).
IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Rejected(Exception):
    """Raised inside a parser callback to stop parsing after an error answer."""


class ClientSide(Protocol):
    """A client connection as the data plane tracks it (HTTP or TCP)."""

    transport: asyncio.Transport | None

    def close_when_idle(self) -> None: ...


class DataPlane:
    """Per-process state every client connection shares."""

    __slots__ = (
        "loop",
        "connections",
        "stopping",
        "id_prefix",
        "id_digits",
        "drained",
        "accepted",
        "spare_readers",
        "writes",
        "clock",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: ``loop.time``, bound once: compiled code calls it directly, where
        #: ``loop.time()`` looks the method up on every call.
        self.clock: Callable[[], float] = loop.time
        self.connections: set[ClientSide] = set()
        self.stopping = False
        # Request ids: unique per process without a random draw per request.
        self.id_prefix = os.urandom(6).hex().encode() + b"-"
        #: The last request id's counter, in hex (see new_request_id).
        self.id_digits = bytearray(b"0")
        self.drained: asyncio.Event = asyncio.Event()
        #: Client connections accepted since start.
        self.accepted = 0
        #: Request parsers no connection is using (see RequestReader).
        self.spare_readers: list[RequestReader] = []
        #: Requests to servers and answers to clients go out at the end of a pass.
        self.writes = WriteBatch(loop)

    def new_request_id(self) -> bytes:
        """The process's prefix, "-" and a counter in hex, 1 for the first request.
        The counter is kept as hex digits and counted up in place: ``b"%s-%x" % (...)``
        goes through bytes formatting (about 800 instructions, 600 here)."""
        digits = self.id_digits
        i: i64 = len(digits) - 1
        while i >= 0:
            digit = digits[i]
            if digit != 0x66:  # not "f": no carry
                digits[i] = 0x61 if digit == 0x39 else digit + 1  # "9" → "a"
                return self.id_prefix + digits
            digits[i] = 0x30
            i -= 1
        digits.insert(0, 0x31)  # every digit was "f": one more digit
        return self.id_prefix + digits

    def stop_accepting_requests(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their answer."""
        self.stopping = True
        for conn in list(self.connections):
            conn.close_when_idle()
        if not self.connections:
            self.drained.set()

    def forget(self, conn: ClientSide) -> None:
        self.connections.discard(conn)
        if self.stopping and not self.connections:
            self.drained.set()


class Exchange:
    """One request and its answer."""

    __slots__ = (
        "client",
        "pool",
        "server",
        "upstream",
        "head",
        "method",
        "is_head",
        "client_http11",
        "close_after",
        "request_id",
        "pending",
        "pending_size",
        "replay",
        "replay_size",
        "request_done",
        "request_chunked",
        "body_received",
        "started_at",
        "response_begun",
        "server_failed",
        "finished",
        "tried",
        "queue_timer",
        "route",
        "response_headers",
        "parts",
        "received_at",
        "answered_by",
        "upgrade",
        "tunnel_early",
    )

    def __init__(self, client: ExchangeClient) -> None:
        self.client = client
        self.pool: PoolRuntime | None = None
        self.server: LiveServer | None = None
        self.upstream: UpstreamConnection | None = None
        self.head = b""
        self.method = b""
        self.is_head = False
        self.client_http11 = True
        self.close_after = False
        self.request_id = b""
        # Framed body bytes waiting for the server connection; None once streaming.
        self.pending: list[bytes] | None = []
        self.pending_size = 0
        # What was sent of an idempotent request, kept for a retry until the answer begins.
        self.replay: list[bytes] | None = None
        self.replay_size = 0
        self.request_done = False
        self.request_chunked = False
        self.body_received = 0
        self.started_at = 0.0
        self.response_begun = False
        self.server_failed = False
        self.finished = False
        self.tried: list[LiveServer] | None = None
        self.queue_timer: asyncio.TimerHandle | None = None
        self.route: RouteRuntime | None = None
        #: Header lines (each ending in CRLF) policies add to the answer (Set-Cookie...).
        self.response_headers = b""
        #: The request's forwarded headers, flat: [name, b": ", value, CRLF, ...].
        self.parts: list[bytes] = []
        #: When the request's head was complete (loop clock).
        self.received_at = 0.0
        #: The server that took the last attempt (kept after it is released).
        self.answered_by: LiveServer | None = None
        #: The Upgrade asked for (forwarded), and the client's bytes sent after the head.
        self.upgrade: bytes | None = None
        self.tunnel_early = b""

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The request's headers as received, (name, value), hop-by-hop ones excepted."""
        parts = self.parts
        return [(parts[i], parts[i + 2]) for i in range(0, len(parts), 4)]

    # -- called by the upstream side ---------------------------------------------

    def on_connect_done(
        self, task: asyncio.Task[UpstreamConnection], servers: ServerConnections
    ) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        server = self.server
        if self.finished or server is None:
            # The client left while we were connecting: keep the connection for others.
            if exc is None:
                servers.give_back(task.result(), self.client.loop.time())
            return
        if exc is not None:
            if isinstance(exc, TimeoutError):
                log.warning("connect to %s timed out", server.address)
                self._failed(504, f"connect to server {server.id} timed out", nothing_sent=True)
            else:
                log.warning("connect to %s failed: %s", server.address, exc)
                self._failed(502, f"connect to server {server.id} failed", nothing_sent=True)
            return
        conn = task.result()
        if conn.transport is None:
            # Closed right after connecting (e.g. a TLS server refused our certificate).
            self._failed(502, f"server {server.id} closed the connection", nothing_sent=True)
            return
        self._attach(conn, self.client.loop.time())

    def upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if self.finished:
            return
        if self.response_begun:
            self.client.abort_truncated(self)
            return
        if not conn.got_bytes and conn.reused and self.replay is not None:
            # A pooled connection the server had already closed: replay on a fresh one.
            self._replay_on_fresh_connection()
            return
        self._failed(502, "server closed the connection without an answer", nothing_sent=False)

    def upstream_malformed(self, conn: UpstreamConnection, why: str) -> None:
        if self.finished:
            return
        self.server_failed = True
        if self.response_begun:
            self.client.abort_truncated(self)
            return
        self._failed(502, "malformed answer from server", nothing_sent=False, retry=False)

    def upstream_timed_out(self, conn: UpstreamConnection) -> None:
        if self.finished:
            return
        self.server_failed = True
        if self.response_begun:
            self.client.abort_truncated(self)
            return
        # An idempotent request may go to another server (a frozen server never
        # answers); others fail here, as the server may have acted on them.
        self._failed(504, "server did not answer in time", nothing_sent=False)

    def response_complete(self, conn: UpstreamConnection, reusable: bool) -> None:
        self.upstream = None
        pool = self.pool
        server = self.server
        now = self.client.plane.clock()
        if reusable and pool is not None and server is not None:
            if pool.send_proxy_protocol is not None:
                self.client.keep_private(conn)
            else:
                pool.connections[server].give_back(conn, now)
        else:
            conn.close()
        self._release(self.server_failed, now)
        self.finished = True
        access_log = self.client.slot.runtime.access_log
        if access_log is not None:
            length = conn.response_length
            access_log(self, conn.status, int(length) if length is not None else None, now)
        self.client.exchange_done(self, now)

    # -- driven by the client side -----------------------------------------------

    def start(self, now: float) -> None:
        """Run the route's policies, then send the request to a server of its pool."""
        self._run_policies(0, now)

    def resume_after(self, policy: RequestPolicy, now: float) -> None:
        """Go on with a request ``policy`` held: the later policies, then the pool."""
        route = self.route
        assert route is not None
        position = next(i for i, each in enumerate(route.policies) if each is policy)
        self._run_policies(position + 1, now)

    def _run_policies(self, first: int, now: float) -> None:
        route = self.route
        assert route is not None
        policies = route.policies
        for index in range(first, len(policies)):
            if not policies[index].admit(self, now):
                return  # answered, or held until the policy calls resume_after
        if route.pool is None:
            self.client.answer_error(self, 404, "no route matches this request")
            return
        self.pool = route.pool
        self.dispatch(now)

    def dispatch(self, now: float) -> None:
        pool = self.pool
        assert pool is not None
        affinity = pool.affinity
        server = None
        if affinity is not None:
            server = affinity.choose(self, now)
            if self.finished:
                return
        if server is None:
            if pool.limited or pool.needs_headers or self.tried:
                server = self._pick(pool, now)
            else:
                server = pool.balancer.pick(self.client.client_ip, (), now)
        if server is None:
            if pool.queue_size and pool.balancer.eligible:
                self._wait_in_queue(pool, now)
            else:
                self.client.answer_error(self, 503, f"no server available in pool {pool.name}")
            return
        pool.requests += 1
        self._start_on(server, now)

    def _pick(self, pool: PoolRuntime, now: float) -> LiveServer | None:
        headers = self.header_pairs() if pool.needs_headers else ()
        exclude: list[LiveServer] | None = self.tried
        if pool.limited:
            exclude = [
                s
                for s in pool.balancer.eligible
                if s.max_connections and s.active >= s.max_connections
            ] + (self.tried or [])
        if exclude:
            return pool.balancer.pick(self.client.client_ip, headers, now, exclude)
        return pool.balancer.pick(self.client.client_ip, headers, now)

    def _start_on(self, server: LiveServer, now: float) -> None:
        pool = self.pool
        assert pool is not None
        if pool.affinity is not None:
            pool.affinity.chosen(self, server, now)
        self.server = server
        self.answered_by = server
        server.active += 1
        server.requests += 1
        # The loop's clock moves in whole milliseconds: durations need a finer one.
        self.started_at = _monotonic()
        servers = pool.connections[server]
        if pool.send_proxy_protocol is not None:
            # Connections announce one client: only this client's own may be reused.
            private = self.client.take_private(servers)
            if private is not None:
                private.reused = True
                self._attach(private, now)
            else:
                servers.connect(self, pool.connect_timeout)
            return
        idle = servers.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None:
                conn.reused = True
                self._attach(conn, now)
                return
        servers.connect(self, pool.connect_timeout)

    def _wait_in_queue(self, pool: PoolRuntime, now: float) -> None:
        if len(pool.waiting) >= pool.queue_size:
            self.client.answer_error(self, 503, f"every server of pool {pool.name} is full")
            return
        pool.waiting.append(self)
        self.queue_timer = self.client.loop.call_later(pool.queue_timeout, self._queue_timed_out)

    def _queue_timed_out(self) -> None:
        self.queue_timer = None
        pool = self.pool
        if pool is not None and self in pool.waiting:
            pool.waiting.remove(self)
            self.client.answer_error(self, 503, "timed out waiting for a free server")

    def _leave_queue(self) -> None:
        if self.queue_timer is not None:
            self.queue_timer.cancel()
            self.queue_timer = None
            pool = self.pool
            if pool is not None and self in pool.waiting:
                pool.waiting.remove(self)

    def send_body(self, data: bytes) -> None:
        upstream = self.upstream
        if upstream is not None and self.pending is None and upstream.transport is not None:
            upstream.servers.writes.write(upstream.transport, data)
        elif self.pending is not None:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > MAX_PENDING_BODY:
                self.client.pause_reading(PAUSE_BUFFERING)
        replay = self.replay
        if replay is not None:
            self.replay_size += len(data)
            if self.replay_size > MAX_REPLAY:
                self.replay = None
            else:
                replay.append(data)

    def _attach(self, conn: UpstreamConnection, now: float) -> None:
        pool = self.pool
        transport = conn.transport
        assert pool is not None and transport is not None
        self.upstream = conn
        conn.begin(self, pool.response_timeout, now)
        pending = self.pending
        self.pending = None
        idempotent = self.method in IDEMPOTENT_METHODS
        writes = conn.servers.writes
        if pool.send_proxy_protocol is not None and not conn.reused:
            # A fresh connection tied to this client: announce who the client is first.
            writes.write(transport, self.client.proxy_header(pool.send_proxy_protocol))
        if pending:
            self.pending_size = 0
            if idempotent:
                # Kept until the first answer byte, for a replay or a retry.
                self.replay = list(pending)
                self.replay_size = sum(map(len, pending))
            writes.writelines(
                transport, [self.head, *pending], len(self.head) + sum(map(len, pending))
            )
        else:
            if idempotent:
                self.replay = []
            writes.write(transport, self.head)
        client = self.client
        if client.write_paused:
            conn.pause_reading()
        if client.paused & PAUSE_BUFFERING:
            client.resume_reading(PAUSE_BUFFERING)

    def _replay_on_fresh_connection(self) -> None:
        pool = self.pool
        server = self.server
        assert pool is not None and server is not None and self.replay is not None
        self.upstream = None
        self.pending = self.replay
        self.replay = None
        self.replay_size = 0
        pool.connections[server].connect(self, pool.connect_timeout)

    def _failed(self, status: int, why: str, *, nothing_sent: bool, retry: bool = True) -> None:
        """The attempt failed before any answer byte reached the client."""
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.abort()
        client = self.client
        if client.paused & PAUSE_UPSTREAM:
            client.resume_reading(PAUSE_UPSTREAM)  # that connection will never drain
        failed = self.server
        self._release(True, client.loop.time())
        if retry and failed is not None and self._retry_after(failed, nothing_sent):
            return
        self.client.answer_error(self, status, why)

    def _retry_after(self, failed: LiveServer, nothing_sent: bool) -> bool:
        """Send the request to another server when that is safe and within budget."""
        pool = self.pool
        assert pool is not None
        if nothing_sent:
            body = self.pending  # the connection never opened: everything is still here
        elif self.method in IDEMPOTENT_METHODS:
            body = self.replay
        else:
            return False  # the server may have acted on it
        if body is None:
            return False  # too large to have been kept
        tried = self.tried
        if tried is None:
            tried = self.tried = []
        tried.append(failed)
        if len(tried) > pool.retry_attempts:
            return False
        now = self.client.loop.time()
        server = self._pick(pool, now)
        if server is None or not pool.retry_budget.try_spend(pool.requests):
            return False
        log.info("retrying %s on %s after %s failed", self.method.decode(), server.id, failed.id)
        pool.retries += 1
        pool.requests += 1
        self.pending = body
        self.pending_size = sum(map(len, body))
        self.replay = None
        self.replay_size = 0
        self._start_on(server, now)
        return True

    def _release(self, failed: bool | None, now: float) -> None:
        """Give back the server this attempt used: load, latency and (unless None) outcome."""
        server = self.server
        if server is None:
            return
        self.server = None
        server.active -= 1
        pool = self.pool
        assert pool is not None
        latency = _monotonic() - self.started_at
        server.latency_sum += latency
        if pool.observes_latency:
            pool.balancer.observe(server, latency, now)
        pool.latency_counts[latency_bucket(latency)] += 1
        pool.latency_sum += latency
        if failed or (failed is not None and server.consecutive_failures):
            pool.record_outcome(server, not failed, now)
        if pool.waiting:
            waiting = pool.waiting.popleft()
            waiting._leave_queue()
            waiting.dispatch(now)

    def abandon(self) -> None:
        """The client went away: release everything this exchange holds."""
        self._leave_queue()
        upstream = self.upstream
        self.upstream = None
        if upstream is not None:
            upstream.abort()
        self._release(None, self.client.loop.time())
        self.finished = True


class RequestReader:
    """An httptools request parser, lent to one client connection while it reads.

    httptools binds its callbacks to the object it is made with, and making one costs
    300 ns and 850 bytes. Made with this forwarder instead of the connection, a parser
    can go back to the data plane whenever its connection waits between requests,
    for the next connection that reads to borrow: 10,000 idle keep-alive connections
    hold none, and a burst of new ones leaves no parsers' worth of freed memory
    between them (memory a process keeps, with its RSS). Between two requests a
    parser is at the start of a message, as it is for the next request of a
    keep-alive connection, so a parser lent to another connection knows nothing
    of the last one.
    """

    __slots__ = ("conn", "parser")

    def __init__(self, conn: ClientConnection) -> None:
        self.conn: ClientConnection | None = conn
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        conn = self.conn
        assert conn is not None  # lent: see ClientConnection._borrow_reader
        conn.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_body(body)

    def on_message_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_message_complete()


class BodyProgress:
    """The request body being read: what the strict framing checks and the minimum
    data rate need. One per request with a body; requests without one share NO_BODY
    (which only ever sees its default values written back), so these fields cost an
    idle connection one slot, not nine."""

    __slots__ = (
        "body_length",
        "body_spans",
        "last_body",
        "chunk_line",
        "chunk_tail",
        "chunk_piece",
        "rate_base",
        "seconds_per_byte",
        "rate_paused_at",
    )

    def __init__(self, body_length: int = 0) -> None:
        #: The Content-Length of the request being read.
        self.body_length = body_length
        #: Chunked bodies: data spans and the last one in a read, and the length of a
        #: chunk-size or trailer line not finished at the end of the last read.
        self.body_spans = 0
        self.last_body = b""
        self.chunk_line = 0
        #: The last bytes of the last chunked piece (a CRLFCRLF may straddle two reads),
        #: and the piece being parsed: (data, start, stop, body bytes before it).
        self.chunk_tail = b""
        self.chunk_piece: tuple[bytes, int, int, int] | None = None
        #: Minimum body data rate: when the allowance started (after the grace), and
        #: 1/rate (0: no minimum); when reading paused (a pause is not the client's).
        self.rate_base = 0.0
        self.seconds_per_byte = 0.0
        self.rate_paused_at: float | None = None


NO_BODY: Final = BodyProgress()


class ClientConnection(ClientIdentity, asyncio.Protocol):
    #: Answer pieces go out in one writelines (one writev); see TlsClientConnection.
    joins_writes = False

    __slots__ = (
        "plane",
        "slot",
        "loop",
        "transport",
        "reader",
        "client_ip",
        "client_ip_bytes",
        "forwarded_for_field",
        "client_port",
        "local_address",
        "proxy_preface",
        "private_upstreams",
        "starting",
        "deadline",
        "parsing",
        "active",
        "queue",
        "paused",
        "write_paused",
        "closing",
        "in_head",
        "head_bytes",
        "head_size",
        "head_deadline",
        "url",
        "parts",
        "host",
        "forwarded_for",
        "request_id",
        "content_length",
        "transfer_encoding",
        "named_hop",
        "host_count",
        "upgrade",
        "connection_upgrade",
        "tunnel_pending",
        "refusal",
        "body",
        "at_boundary",
        "pending_cr",
        "message_ended",
        "line_open",
        "line_cr",
        "line_spaces",
        "line_start",
        "line_http11",
        "head_tail",
        "writes",
    )

    def __init__(self, plane: DataPlane, slot: ListenerSlot) -> None:
        self.plane = plane
        self.slot = slot
        self.loop = plane.loop
        #: Answers go out through the plane's batch (see write_batch).
        self.writes = plane.writes
        #: Where answers go, as HTTP/1.1 bytes; None once the client is gone.
        self.transport: asyncio.Transport | None = None
        #: The borrowed parser; None while the connection waits idle (see _shed_parser).
        self.reader: RequestReader | None = None
        self.client_ip = ""
        self.client_ip_bytes = b""
        #: "X-Forwarded-For: " and client_ip_bytes, shared by the connections from one
        #: address (client_identity); b"" until the first request needs it.
        self.forwarded_for_field = b""
        self.client_port = 0
        self.local_address: tuple[str, int] = ("", 0)
        #: Bytes of a PROXY protocol header still being read (None: none expected).
        self.proxy_preface: bytes | None = None
        #: Idle server connections that announced this client (send_proxy_protocol).
        self.private_upstreams: list[UpstreamConnection] | None = None
        self.starting: Exchange | None = None
        self.deadline = Deadline(
            plane.loop, self, ClientConnection._on_timeout, on_quiet=ClientConnection._shed_parser
        )
        self.parsing: Exchange | None = None
        self.active: Exchange | None = None
        # Pipelined requests waiting their turn; created on first use (an idle
        # connection should cost as little memory as possible).
        self.queue: deque[Exchange] | None = None
        #: Reasons (bits, PAUSE_*) not to take more request bytes now.
        self.paused = 0
        #: The client is not taking answer bytes: its server connections stop reading.
        self.write_paused = False
        #: No further request will be read after the current ones.
        self.closing = False
        self.in_head = True
        self.head_bytes = 0
        self.head_size = 0
        self.head_deadline = True  # armed in connection_made
        self.url = b""
        self.parts: list[bytes] = _NO_PARTS  # a list of its own comes with a request
        self.host: bytes | None = None
        self.forwarded_for: bytes | None = None
        self.request_id: bytes | None = None
        self.content_length: bytes | None = None
        self.transfer_encoding: bytes | None = None
        self.named_hop: list[bytes] | None = None
        self.host_count = 0
        self.upgrade: bytes | None = None
        self.connection_upgrade = False
        #: An exchange whose Upgrade awaits the server's 101: bytes wait in it.
        self.tunnel_pending: Exchange | None = None
        #: The error answer to a refused pipelined request, waiting for the answers to
        #: the requests before it (then the connection closes).
        self.refusal: bytes | None = None
        # Where llhttp is more lenient than the policy, the bytes are checked before it
        # sees them; that needs to know where a request starts (see _parse).
        #: The next byte starts a request (after empty lines); all before it was checked.
        self.at_boundary = True
        #: An empty line's CR was the last byte: its LF must come next.
        self.pending_cr = False
        #: A request ended and no other began since (on_url clears it).
        self.message_ended = False
        #: The request line has begun and not ended; its spaces so far; whether its
        #: last byte was a CR; the first bytes of it kept from earlier reads.
        self.line_open = False
        self.line_cr = False
        self.line_spaces = 0
        self.line_start = b""
        #: The last bytes (at most 3) of a request head that goes on in the next read.
        self.head_tail = b""
        #: The one request head of this read ends its line with " HTTP/1.1": its
        #: version is known without asking llhttp (which formats a string for it).
        self.line_http11 = False
        #: The request body being read (a shared blank until the first body comes).
        self.body: BodyProgress = NO_BODY

    # -- connection lifecycle ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.identify_peer(transport)
        self.plane.connections.add(self)
        self.plane.accepted += 1
        slot = self.slot
        runtime = slot.runtime
        if runtime.proxy_protocol:
            self.proxy_preface = b""
        if not slot.admit(self.client_ip):
            log.warning("refusing a connection from %s: connection limit reached", self.client_ip)
            self.closing = True
            self.transport.abort()  # type: ignore[union-attr]
            return
        self.deadline.arm(runtime.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release(self.client_ip)
        self.transport = None
        self.closing = True
        self.deadline.cancel()
        for exchange in (self.active, *(self.queue or ())):
            if exchange is not None:
                exchange.abandon()
        self.active = None
        self.queue = None
        reader = self.reader
        if reader is not None:
            # Perhaps in the middle of a request: not lent again.
            reader.conn = None
            self.reader = None
        for upstream in self.private_upstreams or ():
            upstream.close()
        self.plane.forget(self)

    def close_when_idle(self) -> None:
        self.closing = True
        if self.active is None and self.parsing is None and self.transport is not None:
            self.writes.flush()
            self.transport.close()

    def _shed_parser(self) -> None:
        """Waiting idle between requests: give the parser back (see RequestReader), and
        hold nothing the next request makes anew."""
        if (
            self.parsing is None
            and self.active is None
            and self.at_boundary
            and not self.pending_cr
            and not self.head_bytes
            and not self.queue
            and self.tunnel_pending is None
            and not self.closing
        ):
            self.parts = _NO_PARTS  # a new list comes with the next request
            self.body = NO_BODY
            reader = self.reader
            if reader is not None:
                reader.conn = None
                self.reader = None
                spare = self.plane.spare_readers
                if len(spare) < MAX_SPARE_PARSERS:
                    spare.append(reader)

    def _borrow_reader(self) -> RequestReader:
        spare = self.plane.spare_readers
        if spare:
            reader = spare.pop()
            reader.conn = self
        else:
            reader = RequestReader(self)
        self.reader = reader
        self.parts = []
        return reader

    def _on_timeout(self) -> None:
        if self.transport is None:
            return
        self.writes.flush()  # what was answered goes before the 408 or the close
        if self.in_head and self.head_bytes:
            self.transport.write(
                error_response(408, "request headers not received in time", close=True)
            )
        elif self.parsing is not None:
            exchange = self.parsing
            exchange.abandon()
            if not exchange.response_begun:
                why = "request body not received in time"
                if self.body.seconds_per_byte and self.loop.time() >= self._rate_deadline(exchange):
                    why = "request body arriving below the minimum data rate"
                    log.info("closing a connection from %s: %s", self.client_ip, why)
                self.transport.write(error_response(408, why, close=True))
            else:
                self.transport.abort()
                return
        self.transport.close()

    # -- flow control ------------------------------------------------------------

    def pause_reading(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
            if self.body.seconds_per_byte and self.parsing is not None:
                self.body.rate_paused_at = self.loop.time()
                self.deadline.disarm()
        self.paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None:
                self.transport.resume_reading()
                if self.body.rate_paused_at is not None:
                    self._rate_resumed()

    def _rate_resumed(self) -> None:
        """Reading resumes in a body with a minimum rate: the pause does not count."""
        now = self.loop.time()
        paused_at, self.body.rate_paused_at = self.body.rate_paused_at, None
        exchange = self.parsing
        if exchange is None or paused_at is None:
            return
        self.body.rate_base += now - paused_at
        timeout = self.slot.runtime.body_timeout
        self.deadline.arm_at(min(now + timeout, self._rate_deadline(exchange)), timeout, now)

    def _rate_deadline(self, exchange: Exchange) -> float:
        """When the body received so far stops covering the minimum data rate."""
        return self.body.rate_base + exchange.body_received * self.body.seconds_per_byte

    def pause_reading_for_upstream(self) -> None:
        self.pause_reading(PAUSE_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self.resume_reading(PAUSE_UPSTREAM)

    def pause_writing(self) -> None:
        self.write_paused = True
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.resume_reading()

    # -- parsing -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing and (
            self.refusal is not None or (self.active is None and self.parsing is None)
        ):
            return
        if self.tunnel_pending is not None:
            self.tunnel_pending.tunnel_early += data
            if len(self.tunnel_pending.tunnel_early) > MAX_PENDING_BODY:
                self.pause_reading(PAUSE_BUFFERING)
            return
        self.slot.bytes_in += len(data)
        if self.proxy_preface is not None:
            rest = self._read_proxy_header(data)
            if not rest:
                return
            data = rest
        if self.in_head:
            self.head_bytes += len(data)
        elif not self.body.seconds_per_byte:
            # A body is arriving: inactivity timeout (with a minimum rate, on_body
            # moves the deadline itself).
            self.deadline.touched = True
        if not self._parse(data):
            return
        if self.in_head and self.head_bytes:
            # A request head has begun and is not complete: it must be within
            # client_header (the deadline is armed once per request, not per read).
            if self.head_bytes > self.slot.runtime.max_header_size:
                self._reject(431, "request head too large")
            elif not self.head_deadline:
                self.head_deadline = True
                self.deadline.arm(self.slot.runtime.header_timeout)

    def _parse(self, data: bytes) -> bool:
        """Feed ``data`` to llhttp; False when parsing stopped (an answer, an upgrade).

        llhttp skips a lone CR or LF before a request line and repeated spaces inside
        one, and takes ``chunked<HTAB>`` for an unknown coding; it reads chunk-size
        lines of any length. Those bytes are checked here before it sees them, which
        needs to know where a request starts: ``data`` is fed in pieces cut where a
        request ends when that is known (a head without body, a Content-Length body,
        a chunked body's last CRLFCRLF). A piece is a view, never a copy.
        """
        if self.at_boundary and not self.pending_cr and data.endswith(b"\r\n\r\n"):
            # Maybe the common read: one whole request head in the plain form, nothing
            # after it. plain_head checks all of it, in one pass, and no parser is lent.
            plain = read_request_head(data)
            if plain is not None:
                self.at_boundary = False
                self.line_open = False
                if self.parts is _NO_PARTS:
                    self.parts = []
                return self._plain_request(plain)
        reader = self.reader
        if reader is None:
            reader = self._borrow_reader()
        parser = reader.parser
        end = len(data)
        pos = 0
        while pos < end:
            if (
                not pos
                and self.at_boundary
                and not self.pending_cr
                and data.endswith(b"\r\n\r\n")
                and data[0] != CR
                and data[0] != LF
                and data.find(b"\t") < 0
                and (line_end := data.find(b"\r\n")) > 0
                and data.count(b" ", 0, line_end) <= REQUEST_LINE_SPACES
                and data.find(b"\r\n\r\n", line_end) == end - 4
            ):
                # The common read: one whole request head, nothing after it, no HTAB.
                self.at_boundary = False
                self.line_open = False
                # A slice and == are compiled; startswith(x, start) is a generic call.
                # A compiled slice must not start after its end (mypyc raises
                # SystemError where Python gives b""): a line may be shorter than 9.
                self.line_http11 = line_end >= 9 and data[line_end - 9 : line_end] == b" HTTP/1.1"
                stop = end
                exact = True
                line_from = 0
                exchange = None
                chunked = False
                received = 0
                piece: bytes | memoryview = data
            else:
                self.line_http11 = False
                stop = end
                exact = False  # a request that ends in this piece ends at its end
                line_from = -1
                if self.at_boundary:
                    first = data[pos]
                    if first in (CR, LF) or self.pending_cr:
                        pos, self.pending_cr = skip_empty_lines(data, pos, self.pending_cr)
                        if pos < 0:
                            self._reject(400, "a lone CR or LF before the request line")
                            return False
                        if pos == end:
                            return True
                    self.at_boundary = False
                    self.line_open = True
                    self.line_cr = False
                    self.line_spaces = 0
                    self.line_start = b""
                    self.head_tail = b""
                if self.line_open:
                    line_from = pos
                    if self.line_cr and data[pos] == LF:
                        self.line_open = False
                    else:
                        line_end = data.find(b"\r\n", pos)
                        self.line_spaces += data.count(b" ", pos, end if line_end < 0 else line_end)
                        if line_end < 0:
                            self.line_cr = data[end - 1] == CR
                            if len(self.line_start) < METHOD_PREFIX:
                                self.line_start += data[pos : pos + METHOD_PREFIX]
                        else:
                            self.line_open = False
                            head_end = data.find(b"\r\n\r\n", line_end)
                            if head_end >= 0:
                                stop = head_end + 4
                                exact = True
                        if self.line_spaces > REQUEST_LINE_SPACES:
                            self._reject(400, "invalid request line (repeated spaces)")
                            return False
                if self.in_head and not exact and not self.line_open:
                    # A head begun in an earlier read ends here, or its request line
                    # did: cut where it ends too, so that a body or a next request in
                    # the same read starts a piece (and the request's end is known).
                    cut = end_of_blank_line(self.head_tail, data, pos)
                    if cut >= 0:
                        stop = cut
                        exact = True
                exchange = None if self.in_head else self.parsing
                chunked = False
                received = 0
                if exchange is not None:
                    if exchange.request_chunked:
                        # A chunked body ends at a CRLFCRLF: cut at the first one, so that
                        # the end is where a piece ends (the check before it goes out
                        # needs that: see on_message_complete).
                        chunked = True
                        cut = end_of_blank_line(self.body.chunk_tail, data, pos)
                        if cut >= 0:
                            stop = cut
                            exact = True
                        self.body.body_spans = 0
                        received = exchange.body_received
                        self.body.chunk_piece = (data, pos, stop, received)
                    else:
                        left = self.body.body_length - exchange.body_received
                        if left < end - pos:
                            stop = pos + left
                        exact = True
                piece = data
                # A lone HTAB search is a memchr; the exact one only when a HTAB is there.
                if (
                    self.in_head
                    and data.find(b"\t", pos, stop) >= 0
                    and data.find(b"\t\r\n", pos, stop) >= 0
                ):
                    piece = normalize_transfer_encoding(data[pos:stop])
                elif pos or stop != end:
                    piece = memoryview(data)[pos:stop]
            try:
                parser.feed_data(piece)
            except Rejected:
                return False
            except httptools.HttpParserCallbackError as exc:
                if isinstance(exc.__context__, Rejected):
                    return False
                log.exception("request handling failed")
                self._reject(500, "internal error")
                return False
            except httptools.HttpParserInvalidMethodError:
                start = data[line_from : line_from + METHOD_PREFIX] if line_from >= 0 else b""
                status = unknown_method_status(self.line_start + start)
                self._reject(status, "unknown method" if status == 501 else "invalid method")
                return False
            except httptools.HttpParserUpgrade as upgrade:
                self.at_boundary = self.message_ended
                self._upgrade_requested(data[pos + upgrade.args[0] :])
                return False
            except httptools.HttpParserError as exc:
                self._reject(*_classify_parse_error(str(exc)))
                return False
            if chunked and exchange is not None:
                self.body.chunk_piece = None
                if self.parsing is exchange:
                    if not self._chunk_lines_ok(exchange, data, pos, stop, received):
                        return False
                    self.body.chunk_tail = last_three(self.body.chunk_tail, data, pos, stop)
            if self.in_head and not exact:
                # A head goes on in the next read: its end may straddle the two.
                self.head_tail = last_three(self.head_tail, data, pos, stop)
            elif self.head_tail:
                self.head_tail = b""
            self.at_boundary = self.message_ended and (exact or data[stop - 1] == LF)
            pos = stop
        return True

    def _chunk_lines_ok(
        self, exchange: Exchange, data: bytes, pos: int, stop: int, received: int
    ) -> bool:
        """Chunk-size lines (with extensions) and trailer lines stay within
        MAX_CHUNK_LINE: per chunk of the piece parsed, and for a line that runs on
        from the last piece. False: the request was refused."""
        ended = self.parsing is not exchange
        spans = self.body.body_spans
        framing = stop - pos - (exchange.body_received - received)
        line = self.body.chunk_line
        if line:
            line_end = data.find(b"\n", pos, stop)
            line += (stop if line_end < 0 else line_end) - pos
        if framing > MAX_CHUNK_LINE * max(spans, 1) or line > MAX_CHUNK_LINE:
            exchange.abandon()
            if exchange.response_begun:
                self.abort_truncated(exchange)
            else:
                self._reject(400, "chunk-size or trailer line too long")
            return False
        last = self.body.last_body
        if ended or (spans and data.startswith(last, stop - len(last))):
            self.body.chunk_line = 0  # at the end of the body, or inside chunk data
        else:
            line_end = data.rfind(b"\n", pos, stop)
            self.body.chunk_line = stop - line_end - 1 if line_end >= 0 else line
        return True

    def _upgrade_requested(self, after: bytes) -> None:
        """llhttp stopped after a request asking to switch protocols."""
        exchange = self.active
        if exchange is not None and exchange.upgrade is not None and not exchange.finished:
            # Bytes after the head belong to the new protocol: held for the tunnel.
            self.tunnel_pending = exchange
            exchange.tunnel_early = after
            return
        # An upgrade we do not tunnel (h2c) was forwarded as a plain request: what
        # follows it is HTTP/1.1 again.
        if after:
            self.data_received(after)

    def tunnel_refused(self, exchange: Exchange) -> None:
        """The server did not switch protocols: answer normally, then close (the
        bytes sent after the head cannot be told apart)."""
        if self.tunnel_pending is exchange:
            self.tunnel_pending = None
            exchange.close_after = True

    def _read_proxy_header(self, data: bytes) -> bytes:
        """Consume the PROXY header; what follows it is HTTP (empty: wait for more)."""
        assert self.proxy_preface is not None
        buffered = self.proxy_preface + data
        try:
            header = proxy_protocol.parse(buffered)
        except proxy_protocol.ProxyProtocolError as exc:
            log.warning("closing a connection from %s: %s", self.client_ip, exc)
            self.closing = True
            if self.transport is not None:
                self.transport.abort()
            return b""
        if header is None:
            self.proxy_preface = buffered
            return b""
        self.proxy_preface = None
        if header.source is not None:
            self.client_ip, self.client_port = header.source
            self.client_ip_bytes = address_bytes(self.client_ip)
            self.forwarded_for_field = b""
        if header.destination is not None:
            self.local_address = header.destination
        return buffered[header.length :]

    def _new_head(self) -> None:
        """Forget the last request head; the next one starts from here."""
        self.in_head = True
        self.head_deadline = False
        self.url = b""
        self.head_size = 0
        self.parts = []
        self.host = None
        self.forwarded_for = None
        self.request_id = None
        self.content_length = None
        self.transfer_encoding = None
        self.named_hop = None
        self.host_count = 0
        self.upgrade = None
        self.connection_upgrade = False

    def on_url(self, url: bytes) -> None:
        if self.closing:
            raise Rejected  # stop at a pipelined request after a rejection
        self.message_ended = False
        self.url += url
        self.head_size += len(url)
        if len(self.url) > self.slot.runtime.max_uri_length:
            self._reject(414, "request target too long")
            raise Rejected

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            # Trailer fields of a chunked body: never forwarded, and never part of
            # the next request's head.
            return
        self._field(name, value, header_kind(name, REQUEST_HEADER_KINDS, REQUEST_PREFILTER))

    def _field(self, name: bytes, value: bytes, kind: int) -> None:
        """A field of the request head, of header_kind ``kind``."""
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.slot.runtime.max_header_size:
            self._reject(431, "request head too large")
            raise Rejected
        if kind == ORDINARY:
            append_field(self.parts, name, value)
            return
        if kind == HOST:
            self.host = value
            self.host_count += 1
            append_field(self.parts, name, value)
        elif kind == CONTENT_LENGTH:
            self.content_length = value
        elif kind == TRANSFER_ENCODING:
            # Several fields form one list (RFC 9110 5.3): check the whole of it.
            self.transfer_encoding = (
                value if self.transfer_encoding is None else self.transfer_encoding + b"," + value
            )
        elif kind == FORWARDED_FOR:
            self.forwarded_for = (
                value if self.forwarded_for is None else self.forwarded_for + b", " + value
            )
        elif kind == REQUEST_ID:
            self.request_id = value
            append_field(self.parts, name, value)
        elif kind == CONNECTION:
            if value not in PLAIN_CONNECTION_VALUES:
                named = connection_named_headers(value)
                if named:
                    self.named_hop = (self.named_hop or []) + named
            if value.lower().find(b"upgrade") >= 0:
                self.connection_upgrade = True
        elif kind == UPGRADE:
            self.upgrade = value
        # HOP_BY_HOP and FORWARDED_REPLACED are dropped; we set the latter ourselves.

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The headers of the request being started (see ``Exchange.header_pairs``)."""
        exchange = self.starting
        return exchange.header_pairs() if exchange is not None else []

    def _plain_request(self, head: RequestHead) -> bool:
        """A request head in the plain form, read without llhttp (see plain_head):
        the calls llhttp's callbacks would make, made directly. False: parsing stopped.
        """
        try:
            self.on_url(head.target)
            fields = head.fields
            kinds = head.kinds
            for k in range(len(kinds)):
                self._field(fields[2 * k], fields[2 * k + 1], kinds[k])
            self._head_ended()
            self._head_complete(head.http11, head.method, head.close, head.line)
            self.on_message_complete()
        except Rejected:
            return False
        except Exception:
            log.exception("request handling failed")
            self._reject(500, "internal error")
            return False
        self.head_tail = b""
        self.at_boundary = self.message_ended
        return True

    def _head_ended(self) -> None:
        """The request head is whole: it no longer counts against its size limit or
        its deadline."""
        self.in_head = False
        self.head_bytes = 0
        self.deadline.at = None

    def on_headers_complete(self) -> None:
        self._head_ended()
        # Here, not in _head_complete: a plain target (plain_head.TARGET) holds no "#".
        if self.url.find(b"#") >= 0:  # not `in`: see the README, "The compiled data plane"
            self._reject(400, "a fragment is not part of a request target")
            raise Rejected
        reader = self.reader
        assert reader is not None  # data_received borrowed it
        parser = reader.parser
        if self.line_http11:
            self.line_http11 = False
            http11 = True
        else:
            version = parser.get_http_version()
            if version == "1.1":
                http11 = True
            elif version == "1.0":
                http11 = False
            else:
                self._reject(505, f"HTTP/{version} is not supported")
                raise Rejected
        self._head_complete(http11, parser.get_method(), not parser.should_keep_alive())

    def _head_complete(
        self, http11: bool, method: bytes, close_after: bool, line: bytes = b""
    ) -> None:
        """A request head is read: check it, build what goes to the server, and start
        the exchange (or queue it behind the one being answered). ``line``: the
        request line to forward unchanged, if it can be."""
        runtime = self.slot.runtime
        exchange = Exchange(self)
        exchange.client_http11 = http11
        exchange.method = method
        exchange.is_head = method == b"HEAD"
        exchange.close_after = close_after

        host = self.host
        if self.host_count > 1:
            self._reject(400, "several Host headers")
            raise Rejected
        if host is None and http11:
            self._reject(400, "missing Host header")
            raise Rejected
        if len(self.parts) > 4 * runtime.max_headers:
            self._reject(431, "too many header fields")
            raise Rejected
        if host is not None and not valid_host(host):
            self._reject(400, "invalid Host header")
            raise Rejected
        url = self.url
        if url[:1] != b"/":
            url = self._origin_form(url, host, method)
            host = self.host

        body_framing: bytes = b""
        if self.transfer_encoding is not None:
            if not http11:
                self._reject(400, "Transfer-Encoding on HTTP/1.0")
                raise Rejected
            if self.transfer_encoding.strip(b" ").lower() != b"chunked":
                self._reject(501, "only the chunked transfer coding is supported")
                raise Rejected
            exchange.request_chunked = True
            body_framing = b"Transfer-Encoding: chunked\r\n"
        elif self.content_length is not None:
            if (
                runtime.max_body_size is not None
                and int(self.content_length) > runtime.max_body_size
            ):
                self._reject(413, "request body too large")
                raise Rejected
            body_framing = b"Content-Length: " + self.content_length + CRLF

        request_id = self.request_id
        if request_id is None:
            request_id = self.plane.new_request_id()
            id_name, id_value = b"\r\nX-Request-Id: ", request_id
        else:
            id_name = id_value = b""  # the client's own is among the parts
        exchange.request_id = request_id

        if self.forwarded_for is None:
            forwarded_for = self.forwarded_for_field
            if not forwarded_for:
                forwarded_for = self.forwarded_for_field = forwarded_for_field(self.client_ip)
        else:
            forwarded_for = b"X-Forwarded-For: " + self.forwarded_for + b", " + self.client_ip_bytes
        upgrade_lines = b""
        if (
            self.upgrade is not None
            and self.connection_upgrade
            and self.upgrade.strip().lower() != b"h2c"
        ):
            # WebSocket and other upgrades become a tunnel once the server says 101.
            exchange.upgrade = self.upgrade
            upgrade_lines = b"Connection: Upgrade\r\nUpgrade: " + self.upgrade + CRLF
        parts = self.parts
        if self.named_hop:
            parts = drop_named_headers(parts, self.named_hop)
        if self.host_count == 0:
            # HTTP/1.0 without Host: HTTP/1.1 to the server needs one (RFC 9112 3.2).
            parts = [b"Host", b": ", host or b"", CRLF, *parts]
        exchange.parts = parts
        # As few pieces as can be: joining costs about 100 instructions a piece. Appends,
        # not tuples: ``head += (...)`` builds and drops a tuple.
        head = [line] if line and url is self.url else [method, b" ", url, b" HTTP/1.1\r\n"]
        head += parts
        head.append(forwarded_for)
        head.append(_PROTO_THEN_HOST[runtime.scheme])
        head.append(host or b"")
        head.append(id_name)
        head.append(id_value)
        if body_framing or upgrade_lines:
            head.append(b"\r\n" + body_framing + upgrade_lines + CRLF)
        else:
            head.append(b"\r\n\r\n")
        exchange.head = b"".join(head)
        if exchange.request_chunked or (
            self.content_length is not None and self.content_length != b"0"
        ):
            # A body follows: from here the deadline is the body's inactivity timeout.
            now = self.loop.time()
            inactive_at = now + runtime.body_timeout
            self.body = body = BodyProgress(
                0 if exchange.request_chunked else int(self.content_length or 0)
            )
            if runtime.body_min_rate is not None:
                # Past the grace, each byte buys 1/rate s (on_body moves the deadline).
                body.seconds_per_byte = 1.0 / runtime.body_min_rate
                body.rate_base = now + runtime.body_min_rate_grace
                self.deadline.arm_at(min(body.rate_base, inactive_at), runtime.body_timeout, now)
            else:
                self.deadline.arm_at(inactive_at, runtime.body_timeout, now)
        self.parsing = exchange
        exchange.route = (
            runtime.route(host or b"", url) if runtime.routes else runtime.default_route
        )
        self._new_head()
        self.in_head = False
        if self.active is None:
            self.active = exchange
            now = self.plane.clock()
            exchange.received_at = now
            self._start(exchange, now)
        else:
            exchange.received_at = self.plane.clock()
            if self.queue is None:
                self.queue = deque()
            self.queue.append(exchange)
            self.pause_reading(PAUSE_PIPELINE)
            if len(self.queue) >= MAX_PIPELINED:
                # Answer what is queued, then close: a client may resend the rest
                # (RFC 9112 9.3.2); parsing more would grow memory without bound.
                self.closing = True
                raise Rejected

    def _start(self, exchange: Exchange, now: float) -> None:
        self.starting = exchange
        exchange.start(now)
        self.starting = None

    def _origin_form(self, target: bytes, host: bytes | None, method: bytes) -> bytes:
        """The path to forward for an absolute-form target (RFC 9112 section 3.2.2),
        after checking that its authority is the Host header's."""
        if target == b"*" and method == b"OPTIONS":
            return target
        scheme, sep, rest = target.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            if method == b"CONNECT":
                self._reject(501, "CONNECT is not supported")
            else:
                self._reject(400, "the request target must be a path or an absolute URI")
            raise Rejected
        end = len(rest)
        for delimiter in (b"/", b"?"):
            found = rest.find(delimiter)
            if found != -1:
                end = min(end, found)
        authority, path = rest[:end], rest[end:]
        if authority.find(b"@") >= 0 or not authority:
            self._reject(400, "invalid authority in the request target")
            raise Rejected
        if host is not None and host.lower() != authority.lower():
            self._reject(400, "the request target's authority differs from Host")
            raise Rejected
        if host is None:
            self.host = authority
        return path if path.startswith(b"/") else b"/" + path

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None:
            return
        exchange.body_received += len(body)
        limit = self.slot.runtime.max_body_size
        if limit is not None and exchange.body_received > limit:
            exchange.abandon()
            if exchange.response_begun:
                self.abort_truncated(exchange)
            else:
                self._reject(413, "request body too large")
            raise Rejected
        if exchange.finished:
            return  # answered already (an error): the rest of the body is discarded
        if self.body.seconds_per_byte and self.body.rate_paused_at is None:
            # Later only, so an attribute write: no timer call per read.
            self.deadline.at = min(
                self.loop.time() + self.slot.runtime.body_timeout,
                self.body.rate_base + exchange.body_received * self.body.seconds_per_byte,
            )
        if exchange.request_chunked:
            self.body.body_spans += 1
            self.body.last_body = body
            exchange.send_body(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            exchange.send_body(body)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        self.parsing = None
        self.in_head = True
        self.message_ended = True
        self.body.seconds_per_byte = 0.0
        self.body.rate_paused_at = None
        piece = self.body.chunk_piece
        if piece is not None and exchange is not None:
            # The body's end is the piece's end: check its framing before it goes out.
            self.body.chunk_piece = None
            if not self._chunk_lines_ok(exchange, *piece):
                raise Rejected
        if exchange is None:
            return
        if exchange.request_chunked and not exchange.finished:
            exchange.send_body(CHUNK_END)
        exchange.request_done = True
        self.deadline.at = None
        if exchange.finished and exchange is self.active:
            # The answer went out before the request ended (an error answer).
            self.exchange_done(exchange, self.loop.time())

    # -- answering ---------------------------------------------------------------

    def exchange_done(self, exchange: Exchange, now: float) -> None:
        if exchange is not self.active:
            return
        if not exchange.request_done:
            # Wait for the rest of the request (being discarded) before moving on,
            # unless the connection closes anyway.
            if exchange.close_after:
                self._close()
            return
        self.active = None
        if self.paused & PAUSE_UPSTREAM:
            self.resume_reading(PAUSE_UPSTREAM)
        if exchange.close_after or (self.closing and not self.queue):
            self._close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.active = nxt
            if not self.queue:
                self.resume_reading(PAUSE_PIPELINE)
            self._start(nxt, now)
            return
        if self.parsing is None:
            idle = self.slot.runtime.idle_timeout
            self.deadline.arm_at(now + idle, idle, now)
            self._shed_parser()

    def answer_error(
        self,
        exchange: Exchange,
        status: int,
        why: str,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer an exchange from the balancer itself (502, 503, 504, 404, 429...)."""
        exchange.finished = True
        exchange.response_begun = True
        self.slot.count_own_answer(status, exchange.pool)
        transport = self.transport
        if transport is not None:
            self.writes.write(
                transport,
                error_response(
                    status,
                    why,
                    close=exchange.close_after or self.closing,
                    request_id=exchange.request_id,
                    extra_headers=extra_headers,
                ),
            )
        now = self.loop.time()
        access_log = self.slot.runtime.access_log
        if access_log is not None:
            access_log(exchange, status, None, now)
        # Before the request's end the rest of its body is read and discarded;
        # on_message_complete then moves on.
        self.exchange_done(exchange, now)

    def abort_truncated(self, exchange: Exchange) -> None:
        """The answer broke after it began: the client must see it cut, not short."""
        exchange.abandon()
        if self.transport is not None:
            self.writes.flush()  # the answer's bytes relayed so far go out first
            self.transport.abort()

    def _reject(self, status: int, why: str) -> None:
        """A malformed request: answer, stop parsing, close.

        Requests before it on the connection (pipelined) are answered first, in order:
        the refusal waits its turn, and nothing more is read meanwhile."""
        self.closing = True
        self.slot.count_own_answer(status, None)
        transport = self.transport
        if transport is None:
            return
        log.info("rejecting request from %s: %d %s", self.client_ip, status, why)
        answer = error_response(status, why, close=True)
        refused = self.parsing
        if refused is not None and refused is not self.active:
            self.parsing = None
            if self.queue and refused in self.queue:
                self.queue.remove(refused)
            refused.abandon()
        active = self.active
        if active is not None and active is not refused and not active.finished:
            self.refusal = answer
            transport.pause_reading()
            return
        self.writes.flush()  # the answers before it go first
        transport.write(answer)
        transport.close()

    def _close(self) -> None:
        transport = self.transport
        if transport is not None:
            self.writes.flush()
            if self.refusal is not None:
                transport.write(self.refusal)
                self.refusal = None
            transport.close()


#: What follows X-Forwarded-For's field in a request head, up to the Host's value,
#: by listener scheme (ListenerRuntime.scheme).
_PROTO_THEN_HOST: Final = {
    scheme: b"\r\nX-Forwarded-Proto: " + scheme + b"\r\nX-Forwarded-Host: "
    for scheme in (b"http", b"https")
}
#: The header list of a connection waiting idle, never appended to (see _shed_parser).
_NO_PARTS: Final[list[bytes]] = []


def _classify_parse_error(message: str) -> tuple[int, str]:
    lowered = message.lower()
    if "request has invalid `transfer-encoding`" in lowered:
        return 501, message  # a transfer coding other than chunked
    if "http version" in lowered:
        return 505, message
    if "pri/upgrade" in lowered:  # llhttp stops at the HTTP/2 preface
        return 505, "HTTP/2 with prior knowledge (h2c) is not enabled on this listener"
    return 400, message
