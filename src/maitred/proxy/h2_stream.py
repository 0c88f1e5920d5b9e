"""One HTTP/2 stream as the client side of an ``Exchange``.

The stream turns the request's HEADERS into the HTTP/1.1 head the servers get
(the same head an HTTP/1.1 client's request becomes), hands DATA to the exchange
(chunked when the client declared no length) and acknowledges it only as the
server side takes it, so a client can never have more than one window in flight
per stream. The answer comes back from the upstream relay as HTTP/1.1 bytes on
``StreamTransport``; they are parsed again and sent as HEADERS and DATA frames
within the client's flow-control windows, pausing the server connection while
the client is not reading.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import httptools

from maitred.proxy.framing import (
    CONTENT_LENGTH,
    FORWARDED_FOR,
    FORWARDED_REPLACED,
    HOST,
    ORDINARY,
    REQUEST_HEADER_KINDS,
    REQUEST_ID,
    append_field,
    error_body,
)
from maitred.proxy.http1 import (
    PAUSE_UPSTREAM,
    Exchange,
)
from maitred.proxy.upstream import CHUNK_END, CRLF
from maitred.proxy.write_batch import WriteBatch

if TYPE_CHECKING:
    from maitred.proxy.http2 import Http2Connection
    from maitred.proxy.routing import ListenerSlot
    from maitred.proxy.upstream import ServerConnections, UpstreamConnection

log = logging.getLogger("maitred.http2")

# Answer bytes queued for a stream (waiting for the client's window) above which
# the server connection stops being read, and below which it is read again.
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024

# Response headers that are about one HTTP/1.1 connection: never sent in HTTP/2
# (RFC 9113 section 8.2.2).
CONNECTION_SPECIFIC: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    }
)

_HOST_FORBIDDEN: Final = frozenset(b"/\\@?#\x7f" + bytes(range(0x21)))
#: A request target's bytes as the HTTP/1.1 request line allows them.
_invalid_target = re.compile(rb"[\x00-\x20\x7f#]").search
_valid_method = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch

# Request fields that make the block malformed (RFC 9113 section 8.2.2): they
# are about one HTTP/1.1 connection and have no meaning in HTTP/2.
MALFORMED_IN_H2: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
REQUEST_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path"})
#: A field name as the HTTP/1.1 parser takes it (a token), lowercase as HTTP/2 wants.
_valid_name = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+").fullmatch
#: What no field value may hold: NUL, CR, LF (RFC 9113 section 8.2.1; CR and LF
#: would split the HTTP/1.1 head sent on) and the other control characters the
#: HTTP/1.1 parser refuses, anywhere; whitespace at either end.
_invalid_value = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\A[ \t]|[ \t]\Z").search


class StreamTransport(asyncio.Transport):
    """Where the upstream relay writes the HTTP/1.1 answer of one stream: parsed
    here and queued on the stream as HTTP/2 HEADERS and DATA.

    Once an answer is complete its parser is ready for the next one, so the
    connection hands the transport to a later stream (``reusable``, ``rebind``).
    """

    def __init__(self, stream: H2Stream) -> None:
        super().__init__()
        self.stream = stream
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.header_list: list[tuple[bytes, bytes]] = []
        self.answered = False

    def reusable(self) -> bool:
        parser = self.parser
        return parser is not None and self.answered and parser.should_keep_alive()

    def rebind(self, stream: H2Stream) -> StreamTransport:
        self.stream = stream
        self.answered = False
        self.header_list = []
        return self

    # -- what the relay calls ------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        parser = self.parser
        if parser is None:
            return  # after a HEAD answer's head: nothing more belongs to it
        try:
            parser.feed_data(bytes(data))
        except httptools.HttpParserError:
            log.warning("stream %d: answer could not be re-framed", self.stream.stream_id)
            self.parser = None
            self.stream.reset_from_server()
            return
        self.stream.flush()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def abort(self) -> None:
        self.stream.reset_from_server()

    def close(self) -> None:
        self.stream.reset_from_server()

    def is_closing(self) -> bool:
        return self.stream.transport is None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self.stream.connection.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    # -- httptools callbacks --------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in CONNECTION_SPECIFIC:
            self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        headers, self.header_list = self.header_list, []
        stream = self.stream
        if status < 200:
            # Interim answers (100 Continue, 103 Early Hints) go on as
            # informational HEADERS; 101 never comes (no Upgrade on streams).
            if status != 101 and not stream.head_sent and not stream.closed:
                headers.insert(0, (b":status", b"%d" % status))
                stream.connection.send_headers(stream, headers, False)
            return
        exchange = stream.exchange
        headers.insert(0, (b":status", b"%d" % status))
        no_body = exchange is not None and exchange.is_head
        if no_body:
            # httptools cannot be told that a HEAD answer has no body.
            self.parser = None
        stream.send_head(headers, end=no_body)

    def on_body(self, body: bytes) -> None:
        self.stream.queue_body(body)  # counted in bytes_out by the upstream relay

    def on_message_complete(self) -> None:
        if self.stream.head_sent:
            self.stream.response_ended = True
            self.answered = True


class H2Stream:
    """One request/answer on an HTTP/2 connection; the ``Exchange``'s client side."""

    #: The stream transport re-frames pieces as they come; joining would only copy.
    joins_writes = False

    __slots__ = (
        "connection",
        "stream_id",
        "loop",
        "plane",
        "slot",
        "client_ip",
        "transport",
        "closing",
        "paused",
        "tunnel_pending",
        "exchange",
        "outbound",
        "outbound_size",
        "head_sent",
        "response_ended",
        "end_sent",
        "request_ended",
        "unacknowledged",
        "body_received",
        "closed",
        "writes",
    )

    def __init__(self, connection: Http2Connection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.loop = connection.loop
        self.plane = connection.plane
        self.slot: ListenerSlot = connection.slot
        self.client_ip = connection.client_ip
        spares = connection.spare_transports
        self.transport: asyncio.Transport | None = (
            spares.pop().rebind(self) if spares else StreamTransport(self)
        )
        self.closing = False
        self.paused = 0
        self.tunnel_pending: Exchange | None = None
        self.exchange: Exchange | None = None
        #: Answer body pieces not yet sent (the client's window is smaller).
        self.outbound: deque[bytes | memoryview] = deque()
        self.outbound_size = 0
        self.head_sent = False
        #: The whole answer is in ``outbound``; END_STREAM goes with its last byte.
        self.response_ended = False
        self.end_sent = False
        self.request_ended = False
        #: Request bytes received but not yet acknowledged (the server side is paused).
        self.unacknowledged = 0
        self.body_received = 0
        self.closed = False
        #: Answer pieces are framed as they come (a stream's transport is reused by
        #: later streams): no write batch (None: the relay writes at once).
        self.writes: WriteBatch | None = None

    # -- the request ---------------------------------------------------------------

    def start(self, headers: Iterable[tuple[bytes, bytes]], ended: bool, now: float) -> bool:
        """Build the exchange from the request's header list and let it run;
        False when the header list is malformed (RFC 9113 section 8.1.1), which
        the connection answers by resetting the stream.

        The checks are those h2 would make (and those the HTTP/1.1 parser makes
        of a request head), done in the one pass that builds the HTTP/1.1 head.
        """
        runtime = self.slot.runtime
        method = path = authority = scheme = None
        host_header = None
        parts: list[bytes] = []
        cookies: list[bytes] = []
        content_length = None
        forwarded_for = None
        request_id = None
        field_count = 0
        regular_seen = False
        for name, value in headers:
            field_count += 1
            if value and _invalid_value(value) is not None:
                return False
            if name[:1] == b":":
                if regular_seen or name not in REQUEST_PSEUDO:
                    return False  # late, or a response's or an unknown pseudo-field
                if name == b":method":
                    if method is not None:
                        return False
                    method = value
                elif name == b":path":
                    if path is not None:
                        return False
                    path = value
                elif name == b":authority":
                    if authority is not None:
                        return False
                    authority = value
                else:
                    if scheme is not None:
                        return False
                    scheme = value
                continue
            regular_seen = True
            if _valid_name(name) is None or name in MALFORMED_IN_H2:
                return False
            if name == b"cookie":
                cookies.append(value)  # split in HTTP/2, one field in HTTP/1.1 (RFC 9113 8.2.3)
                continue
            kind = REQUEST_HEADER_KINDS.get(name, ORDINARY)
            if kind == ORDINARY:
                append_field(parts, name, value)
            elif kind == HOST:
                if host_header is not None:
                    return False
                host_header = value
            elif kind == CONTENT_LENGTH:
                if content_length is not None and value != content_length:
                    return False
                content_length = value
            elif kind == FORWARDED_FOR:
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            elif kind == REQUEST_ID:
                request_id = value
                append_field(parts, name, value)
            elif kind == FORWARDED_REPLACED:
                pass  # set by the balancer below
            elif name == b"te" and value != b"trailers":
                return False
            # Other hop-by-hop fields (te: trailers, trailer...) are dropped.
        if method is None or (method != b"CONNECT" and (scheme is None or path is None)):
            return False
        if authority is not None and host_header is not None and authority != host_header:
            return False
        host = authority if authority is not None else host_header
        exchange = Exchange(self)
        self.exchange = exchange
        exchange.received_at = now
        exchange.method = method
        exchange.is_head = method == b"HEAD"
        exchange.request_done = ended
        if request_id is None:
            request_id = self.plane.new_request_id()
            request_id_line = b"X-Request-Id: " + request_id + CRLF
        else:
            request_id_line = b""
        exchange.request_id = request_id
        refusal = _refusal(method, path, host, field_count, content_length, runtime)
        if refusal is not None:
            self.answer_error(exchange, *refusal)
            return True
        assert method is not None and path is not None and host is not None
        if cookies:
            parts += (b"cookie", b": ", b"; ".join(cookies), CRLF)
        parts[:0] = (b"host", b": ", host, CRLF)
        exchange.parts = parts
        if ended:
            body_framing = b""
        elif content_length is not None:
            body_framing = b"Content-Length: " + content_length + CRLF
        else:
            exchange.request_chunked = True
            body_framing = b"Transfer-Encoding: chunked\r\n"
        client_address = self.connection.client_ip_bytes
        if forwarded_for is not None:
            client_address = forwarded_for + b", " + client_address
        exchange.head = b"".join(
            (
                method,
                b" ",
                path,
                b" HTTP/1.1\r\n",
                *parts,
                b"X-Forwarded-For: ",
                client_address,
                b"\r\nX-Forwarded-Proto: ",
                runtime.scheme,
                b"\r\nX-Forwarded-Host: ",
                host,
                CRLF,
                request_id_line,
                body_framing,
                CRLF,
            )
        )
        exchange.route = runtime.route(host, path) if runtime.routes else runtime.default_route
        exchange.start(now)
        return True

    def receive_body(self, data: bytes, flow_length: int) -> None:
        exchange = self.exchange
        if exchange is None or exchange.finished:
            self.connection.acknowledge(self, flow_length)  # answered already: discarded
            return
        self.body_received += len(data)
        limit = self.slot.runtime.max_body_size
        if limit is not None and self.body_received > limit:
            self.connection.acknowledge(self, flow_length)
            if exchange.response_begun:
                self.abort_truncated(exchange)
            else:
                exchange.abandon()
                self.answer_error(exchange, 413, "request body too large")
            return
        if data:
            if exchange.request_chunked:
                exchange.send_body(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                exchange.send_body(data)
        if self.paused:
            self.unacknowledged += flow_length
        else:
            self.connection.acknowledge(self, flow_length)

    def end_request(self) -> None:
        self.request_ended = True
        exchange = self.exchange
        if exchange is None or exchange.request_done:
            return
        if exchange.request_chunked and not exchange.finished:
            exchange.send_body(CHUNK_END)
        exchange.request_done = True

    # -- the exchange's client side ----------------------------------------------------

    @property
    def write_paused(self) -> bool:
        return self.outbound_size > HIGH_WATER or self.connection.write_paused

    def header_pairs(self) -> list[tuple[bytes, bytes]]:
        exchange = self.exchange
        return exchange.header_pairs() if exchange is not None else []

    def pause_reading(self, reason: int) -> None:
        self.paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.unacknowledged:
                held, self.unacknowledged = self.unacknowledged, 0
                self.connection.acknowledge(self, held)
                self.connection.write_out()

    def pause_reading_for_upstream(self) -> None:
        self.pause_reading(PAUSE_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self.resume_reading(PAUSE_UPSTREAM)

    def answer_error(
        self,
        exchange: Exchange,
        status: int,
        why: str,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer from the balancer itself (404, 429, 502, 503, 504...)."""
        exchange.finished = True
        exchange.response_begun = True
        slot = self.slot
        slot.count_own_answer(status, exchange.pool)
        body = error_body(status, why)
        headers = [
            (b":status", b"%d" % status),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-store"),
            (b"x-request-id", exchange.request_id),
        ]
        headers += [(name.lower(), value) for name, value in extra_headers]
        if self.send_head(headers, end=exchange.is_head):
            if not exchange.is_head:
                self.queue_body(body)
                slot.bytes_out += len(body)
            self.response_ended = True
        now = self.loop.time()
        access_log = slot.runtime.access_log
        if access_log is not None:
            access_log(exchange, status, None, now)
        self.exchange_done(exchange, now)

    def exchange_done(self, exchange: Exchange, now: float) -> None:
        # The upstream relay calls this once the whole answer went to ``transport``.
        if self.head_sent:
            self.response_ended = True
        self.flush()

    def abort_truncated(self, exchange: Exchange) -> None:
        """The answer broke after it began: the client sees the stream reset, not short."""
        exchange.abandon()
        self.connection.reset_stream(self, INTERNAL_ERROR)

    def reset_from_server(self) -> None:
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.abandon()
        self.connection.reset_stream(self, INTERNAL_ERROR)

    def tunnel_refused(self, exchange: Exchange) -> None:
        """Upgrades are HTTP/1.1 only: never asked for on a stream."""

    def connection_lost(self, exc: Exception | None) -> None:
        """Tunnels are HTTP/1.1 only: never opened on a stream."""

    def proxy_header(self, version: str) -> bytes:
        return self.connection.proxy_header(version)

    def take_private(self, servers: ServerConnections) -> UpstreamConnection | None:
        return self.connection.take_private(servers)

    def keep_private(self, conn: UpstreamConnection) -> None:
        self.connection.keep_private(conn)

    # -- the answer ----------------------------------------------------------------------

    def send_head(self, headers: list[tuple[bytes, bytes]], *, end: bool) -> bool:
        if self.closed or self.head_sent:
            return False
        self.head_sent = True
        self.connection.send_headers(self, headers, end)
        if end:
            self.response_ended = True
            self.end_sent = True
        return True

    def queue_body(self, body: bytes) -> None:
        if body and not self.closed:
            self.outbound.append(body)
            self.outbound_size += len(body)

    def flush(self) -> None:
        """Send what the windows allow, then adjust reading from the server."""
        if self.closed:
            return
        connection = self.connection
        connection.send_body(self)
        exchange = self.exchange
        if self.end_sent and (exchange is None or exchange.finished):
            # Over once the exchange also is: its server connection goes back to the pool.
            connection.stream_finished(self)
        else:
            self.adjust_upstream()
        connection.write_out()

    def adjust_upstream(self) -> None:
        exchange = self.exchange
        upstream = exchange.upstream if exchange is not None else None
        if upstream is None:
            return
        if self.outbound_size > HIGH_WATER or self.connection.write_paused:
            upstream.pause_reading()
        elif self.outbound_size <= LOW_WATER:
            upstream.resume_reading()

    def forget(self) -> None:
        """The stream is over (answered, reset, or the connection is gone)."""
        self.closed = True
        transport = self.transport
        self.transport = None
        if isinstance(transport, StreamTransport) and transport.reusable():
            # Kept for the next streams (making a parser costs more than parsing
            # a small answer): at most one per stream the connection may have.
            connection = self.connection
            spares = connection.spare_transports
            if len(spares) < connection.settings.max_concurrent_streams:
                spares.append(transport)
        self.outbound.clear()
        self.outbound_size = 0
        exchange = self.exchange
        if exchange is not None and not exchange.finished:
            exchange.abandon()


INTERNAL_ERROR: Final = 0x2


def _refusal(
    method: bytes | None,
    path: bytes | None,
    host: bytes | None,
    field_count: int,
    content_length: bytes | None,
    runtime: Any,
) -> tuple[int, str] | None:
    """Why a request cannot be forwarded (status, reason), or None."""
    if method == b"CONNECT":
        return 501, "CONNECT is not supported"
    if method is None or path is None:
        return 400, "missing :method or :path"
    if _valid_method(method) is None:
        return 400, "invalid :method"
    if host is None or not host or _HOST_FORBIDDEN.intersection(host):
        return 400, "missing or invalid :authority"
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        return 400, "the :path must start with /"
    if _invalid_target(path) is not None:
        return 400, "a fragment, space or control character in :path"
    if len(path) > runtime.max_uri_length:
        return 414, "request target too long"
    if field_count > runtime.max_headers + 4:  # + the pseudo-header fields
        return 431, "too many header fields"
    if content_length is not None:
        if not content_length.isdigit():
            return 400, "invalid content-length"
        if runtime.max_body_size is not None and int(content_length) > runtime.max_body_size:
            return 413, "request body too large"
    return None
