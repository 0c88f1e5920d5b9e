"""Connections to the servers: a keep-alive pool per server and the response relay.

An ``UpstreamConnection`` carries one exchange at a time. It parses the server's
answer with httptools and relays it to the client connection, re-framed: the
head is rebuilt without hop-by-hop headers and the body keeps or gains one
unambiguous framing. An answer in the plain form most servers send (see
plain_head) skips httptools: its head is read in compiled code and its
Content-Length body relayed as the server's bytes. Everything written to the
client for one read event goes out in one ``writelines`` call.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import httptools
from mypy_extensions import mypyc_attr

from maitred.proxy.deadline import Deadline
from maitred.proxy.framing import (
    CONNECTION,
    CONTENT_LENGTH,
    ORDINARY,
    PLAIN_CONNECTION_VALUES,
    REQUEST_ID,
    RESPONSE_HEADER_KINDS,
    RESPONSE_PREFILTER,
    TRANSFER_ENCODING,
    UPGRADE,
    append_field,
    connection_named_headers,
    drop_named_headers,
    end_of_blank_line,
    header_kind,
    last_three,
    normalize_transfer_encoding,
    reason_is_valid,
    skip_empty_lines,
)
from maitred.proxy.plain_head import read_answer_head
from maitred.proxy.tunnel import open_tunnel
from maitred.proxy.write_batch import WriteBatch

if TYPE_CHECKING:
    from maitred.proxy.http1 import Exchange

log = logging.getLogger("maitred.upstream")

# How the answer's body is framed towards the client.
BODY_NONE: Final = 0
BODY_LENGTH: Final = 1
BODY_CHUNKED: Final = 2
BODY_UNTIL_CLOSE: Final = 3  # client is HTTP/1.0: relay raw, close after

CHUNK_END: Final = b"0\r\n\r\n"
# An answer's head larger than this is refused (502), like a request's is (431).
MAX_RESPONSE_HEAD: Final = 64 * 1024
CRLF: Final = b"\r\n"
# A Content-Length body at least this long is relayed as the server's bytes
# (views of each read) without passing through llhttp, which copies what it reports.
RAW_BODY_MIN: Final = 8 * 1024


# Tests open server connections in memory by overriding ``_connect``.
@mypyc_attr(allow_interpreted_subclasses=True)
class ServerConnections:
    """The idle keep-alive connections to one server, shared by every pool that names it."""

    __slots__ = (
        "host",
        "port",
        "idle",
        "max_idle",
        "idle_timeout",
        "opened",
        "loop",
        "tls_context",
        "server_hostname",
        "max_requests",
        "writes",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        writes: WriteBatch,
        host: str,
        port: int,
        max_idle: int,
        idle_timeout: float,
        tls_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.loop = loop
        #: The loop's batch, which the client side's writes go through too (see
        #: write_batch): requests and their bodies to these servers go through it
        #: (a large body piece after flushing it).
        self.writes = writes
        #: TLS to the server: new connections use the context set here (reloadable).
        self.tls_context = tls_context
        self.server_hostname = server_hostname if tls_context is not None else None
        self.host = host
        self.port = port
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.opened = 0
        #: Requests one connection carries before it is closed (0: no limit).
        self.max_requests = 0

    def give_back(self, conn: UpstreamConnection, now: float) -> None:
        if (
            len(self.idle) >= self.max_idle
            or conn.transport is None
            or (self.max_requests and conn.served >= self.max_requests)
        ):
            conn.close()
            return
        conn.exchange = None
        conn.deadline.arm_at(now + self.idle_timeout, self.idle_timeout, now)
        # Read while idle, so a close from the server is noticed at once.
        conn.resume_reading()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def connect(self, exchange: Exchange, timeout: float) -> None:
        """Open a new connection for ``exchange``; the outcome is reported to it."""
        self.opened += 1
        task = self.loop.create_task(self._connect(timeout))
        task.add_done_callback(lambda done: exchange.on_connect_done(done, self))

    def warm(self, count: int, timeout: float) -> None:
        """Open connections until ``count`` are idle (pool warm-up), in the background."""
        for _ in range(count - len(self.idle)):
            self.opened += 1
            task = self.loop.create_task(self._connect(timeout))
            task.add_done_callback(self._warmed)

    def _warmed(self, task: asyncio.Task[UpstreamConnection]) -> None:
        if task.cancelled() or task.exception() is not None:
            return  # the server is not reachable yet: health checks will say so
        self.give_back(task.result(), self.loop.time())

    async def _connect(self, timeout: float) -> UpstreamConnection:
        transport, conn = await asyncio.wait_for(
            self.loop.create_connection(
                lambda: UpstreamConnection(self),
                self.host,
                self.port,
                ssl=self.tls_context,
                server_hostname=self.server_hostname,
            ),
            timeout,
        )
        if conn.transport is None:
            # A TLS server that refuses our client certificate says so right after
            # the handshake: the connection can be gone before anything was sent.
            raise ConnectionResetError("the server closed the connection on connect")
        return conn


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "servers",
        "transport",
        "parser",
        "exchange",
        "deadline",
        "reused",
        "got_bytes",
        "head_parts",
        "status",
        "body_mode",
        "response_length",
        "keep_alive",
        "out",
        "reading_paused",
        "named_hop",
        "has_request_id",
        "complete",
        "chunked",
        "until_close",
        "upgrade_value",
        "tunnel",
        "served",
        "transfer_codings",
        "delivered",
        "head_bytes",
        "answer_start",
        "answer_pending_cr",
        "answer_open",
        "answer_tail",
        "answer_http11",
        "raw_left",
        "body_seen",
    )

    def __init__(self, servers: ServerConnections) -> None:
        self.servers = servers
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.deadline = Deadline(servers.loop, self, UpstreamConnection._on_timeout)
        self.reused = False
        self.got_bytes = False
        self.head_parts: list[bytes] = []
        self.status = 0
        self.body_mode = BODY_NONE
        self.response_length: bytes | None = None
        self.keep_alive = True
        self.out: list[bytes | memoryview] = []
        self.reading_paused = False
        self.named_hop: list[bytes] | None = None
        self.has_request_id = False
        self.complete = False
        self.chunked = False
        self.until_close = False
        self.upgrade_value = b""
        self.tunnel = False
        #: Requests this connection carried.
        self.served = 0
        self.transfer_codings: list[bytes] = []
        #: True once a byte of the current answer went to the client.
        self.delivered = False
        #: Bytes received while the answer's head is incomplete (bounded).
        self.head_bytes = 0
        #: The next byte starts an answer (the first, or the one after an interim
        #: answer): what llhttp lets through before a status line is checked first.
        self.answer_start = False
        #: An empty line's CR was the last byte: its LF must come next.
        self.answer_pending_cr = False
        #: A head that may be an interim answer's goes on in the next read; the last
        #: bytes of this one (its CRLFCRLF may straddle the two).
        self.answer_open = False
        self.answer_tail = b""
        #: The answer's status line starts "HTTP/1.1 ": its version is known without
        #: asking llhttp (which formats a string for it).
        self.answer_http11 = False
        #: Bytes of a Content-Length body still to relay past llhttp (see RAW_BODY_MIN).
        self.raw_left = 0
        #: Body bytes llhttp reported for the current answer.
        self.body_seen = 0

    # -- lifecycle -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.deadline.cancel()
        exchange = self.exchange
        if exchange is None:
            self.servers.forget(self)
            return
        if self.until_close and self.status >= 200 and not self.complete:
            # The answer was delimited by the close: it is complete now.
            if self.body_mode == BODY_CHUNKED:
                self.out.append(CHUNK_END)
            self.keep_alive = False
            self.complete = True
            self._deliver(exchange)
            return
        self.exchange = None
        if not self.complete:
            exchange.upstream_lost(self, exc)

    def close(self) -> None:
        self.deadline.cancel()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.deadline.cancel()
        self.exchange = None
        if self.transport is not None:
            self.transport.abort()

    # -- sending the request ---------------------------------------------------

    def begin(self, exchange: Exchange, response_timeout: float, now: float) -> None:
        """Carry ``exchange``; the server must answer within ``response_timeout``."""
        self.exchange = exchange
        self.served += 1
        self.got_bytes = False
        self.delivered = False
        self.head_bytes = 0
        self.answer_start = True
        self.answer_pending_cr = False
        self.answer_open = False
        self.complete = False
        self.status = 0
        self._reset_head()
        self.deadline.arm_at(now + response_timeout, response_timeout, now)

    def _reset_head(self) -> None:
        self.head_parts = []
        self.named_hop = None
        self.has_request_id = False
        self.response_length = None
        self.chunked = False
        if self.transfer_codings:
            self.transfer_codings = []  # an unused empty list is kept: one allocation less
        self.until_close = False
        self.body_mode = BODY_NONE
        self.body_seen = 0

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading_for_upstream()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    # -- receiving the answer --------------------------------------------------

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # A server talking on an idle connection has broken the protocol.
            self.abort()
            return
        self.got_bytes = True
        self.deadline.touched = True  # inactivity timeout: still alive
        if self.raw_left:
            self._relay_raw(exchange, data, 0)
            return
        status = self.status
        if not status:
            self.head_bytes += len(data)
        start = 0
        end = len(data)
        if self.answer_start or self.answer_open:
            start = self._answer_heads(exchange, data)
            if start < 0:
                return
            if not self.answer_start and not self.answer_open and not self.status:
                # A final answer starts here.
                head_end = data.find(b"\r\n\r\n", start)
                if head_end >= 0:
                    if self._plain_answer(exchange, data, start, head_end + 4):
                        return
                    if end - start >= RAW_BODY_MIN:
                        # A long body may follow: parse the head alone, so that the
                        # body need not go through llhttp.
                        if not self._feed(exchange, data, start, head_end + 4):
                            return
                        start = head_end + 4
                        if self._body_goes_raw():
                            self._relay_raw(exchange, data, start)
                            return
        if not self._feed(exchange, data, start, end):
            return
        if not self.status:
            if self.head_bytes > MAX_RESPONSE_HEAD:
                # Still no end of the head after this many bytes.
                self._malformed(exchange, "answer head too large")
                return
        elif not status:
            self._body_goes_raw()  # the head ended in this read: the rest may skip llhttp
        self._deliver(exchange)

    def _plain_answer(self, exchange: Exchange, data: bytes, start: int, stop: int) -> bool:
        """Relay an answer whose head ``data[start:stop]`` is in the plain form that
        plain_head reads without llhttp, its body as the server's bytes. False: the
        head is not in that form, or its body is not framed by a length; llhttp reads it.
        """
        head = read_answer_head(data, start, stop)
        if head is None:
            return False
        status = head.status
        if head.length < 0 and status != 204 and status != 304:
            return False  # delimited by the close (llhttp's reading decides reuse)
        self.head_parts = head.fields
        self.response_length = head.length_value
        self.has_request_id = head.has_request_id
        self.keep_alive = not head.close
        self._final_head(exchange, status)
        # The body (none for HEAD, 204, 304) as the server's bytes; _relay_raw completes
        # the answer and never reuses a connection that sent more than it framed.
        self.raw_left = head.length if self.body_mode == BODY_LENGTH else 0
        self._relay_raw(exchange, data, stop)
        return True

    def _body_goes_raw(self) -> bool:
        """After a final answer's head: relay the rest of a long Content-Length body
        as it comes, llhttp (which waits for it) being replaced for the next answer."""
        if self.body_mode != BODY_LENGTH or self.complete or self.status < 200:
            return False
        length = self.response_length
        assert length is not None  # BODY_LENGTH
        left = int(length) - self.body_seen
        if left < RAW_BODY_MIN:
            return False
        self.raw_left = left
        self.parser = httptools.HttpResponseParser(self)
        return True

    def _feed(self, exchange: Exchange, data: bytes, start: int, stop: int) -> bool:
        """llhttp reads ``data[start:stop]``; False: parsing stopped, nothing more to do."""
        try:
            if start or stop != len(data):
                self.parser.feed_data(memoryview(data)[start:stop])
            else:
                self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as switched:
            if self.tunnel:
                self._open_tunnel(exchange, data[start + switched.args[0] :])
            else:
                self._malformed(exchange, "unexpected protocol switch")
            return False
        except httptools.HttpParserError as exc:
            if self.complete:
                # Bytes after a complete answer: deliver it, but never reuse a
                # connection whose server sent more than it framed.
                self.keep_alive = False
                self._deliver(exchange)
                return False
            self._malformed(exchange, str(exc))
            return False
        return True

    def _relay_raw(self, exchange: Exchange, data: bytes, start: int) -> None:
        """Relay ``data[start:]``, bytes of a Content-Length body, as they are."""
        left = self.raw_left
        size = len(data) - start
        if size > left:
            # More than the answer framed: deliver it, but never reuse the connection.
            self.keep_alive = False
            size = left
        if size == len(data):
            self.out.append(data)
        elif size >= RAW_BODY_MIN:
            self.out.append(memoryview(data)[start : start + size])
        elif size:
            self.out.append(data[start : start + size])  # small: a copy costs less than a view
        self.raw_left = left - size
        if not self.raw_left:
            self.complete = True
        self._deliver(exchange)

    def _answer_heads(self, exchange: Exchange, data: bytes) -> int:
        """Check the start of an answer where llhttp is lenient: a lone CR or LF
        before the status line, ``chunked<HTAB>``. Interim answers are parsed here,
        one head at a time, so that the next answer's start is known too. Returns
        the offset from which ``data`` is still to be parsed; -1: parsing stopped.
        """
        pos = 0
        end = len(data)
        self.answer_http11 = False
        if self.answer_open:
            # The end of a head begun in an earlier read: after it, if it was an
            # interim answer's, the next answer starts.
            cut = end_of_blank_line(self.answer_tail, data, 0)
            if cut < 0:
                self.answer_tail = last_three(self.answer_tail, data, 0, end)
                return 0
            self.answer_open = False
            if not self._feed_head(exchange, memoryview(data)[:cut], data[cut:]):
                return -1
            self.answer_start = not self.status
            pos = cut
        while self.answer_start and pos < end:
            first = data[pos]
            if first in (13, 10) or self.answer_pending_cr:
                pos, self.answer_pending_cr = skip_empty_lines(data, pos, self.answer_pending_cr)
                if pos < 0:
                    self._malformed(exchange, "a lone CR or LF before the status line")
                    return -1
                if pos == end:
                    return end
            if end > pos + 9 and data[pos + 9] != 0x31 and data.find(b"\t", pos) < 0:
                # A final answer ("HTTP/1.1 2xx") without a HTAB anywhere: nothing to
                # cut or normalise (the common case; a lone HTAB search is a memchr).
                self.answer_start = False
                # A slice and == are compiled; startswith(x, start) is a generic call.
                self.answer_http11 = data[pos : pos + 9] == b"HTTP/1.1 "
                return pos
            head_end = data.find(b"\r\n\r\n", pos)
            if head_end < 0:
                # The head goes on in the next read; if it may be an interim answer's
                # (its status code is not here yet, or starts with 1), follow it.
                self.answer_start = False
                self.answer_open = end <= pos + 9 or data[pos + 9] == 0x31
                self.answer_tail = data[-3:]
                return pos
            stop = head_end + 4
            interim = data.startswith(b"1", pos + 9)  # "HTTP/1.1 1xx"
            if not interim and data.find(b"\t\r\n", pos, stop) < 0:
                self.answer_start = False
                return pos
            piece: bytes | memoryview = memoryview(data)[pos:stop]
            if data.find(b"\t\r\n", pos, stop) >= 0:
                piece = normalize_transfer_encoding(data[pos:stop])
            if not self._feed_head(exchange, piece, data[stop:]):
                return -1
            self.answer_start = interim and not self.status
            pos = stop
        return pos

    def _feed_head(self, exchange: Exchange, piece: bytes | memoryview, after: bytes) -> bool:
        """Parse one answer head on its own; False: parsing stopped."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            if self.tunnel:
                self._open_tunnel(exchange, after)
            else:
                self._malformed(exchange, "unexpected protocol switch")
            return False
        except httptools.HttpParserError as exc:
            self._malformed(exchange, str(exc))
            return False
        return True

    def _deliver(self, exchange: Exchange) -> None:
        """Everything this read produced goes to the client in one write."""
        out = self.out
        if out:
            self.out = []
            if self.status:
                # Only the final answer counts: after interim answers alone, a 502
                # can still take the final answer's place.
                self.delivered = True
            client = exchange.client
            size = 0
            for piece in out:  # compiled, a loop beats sum(map(len, ...))'s builtin lookups
                size += len(piece)
            client.slot.bytes_out += size
            transport = client.transport
            if transport is not None:
                writes = client.writes
                if client.joins_writes and len(out) > 1:
                    if writes is not None:
                        writes.write(transport, b"".join(out))
                    else:
                        transport.write(b"".join(out))
                elif writes is not None:
                    writes.writelines(transport, out, size)
                else:
                    transport.writelines(out)
        if self.complete:
            self.exchange = None
            self.deadline.at = None
            reusable = self.keep_alive and exchange.request_done and exchange.pending is None
            exchange.response_complete(self, reusable)

    def _malformed(self, exchange: Exchange, why: str) -> None:
        log.warning("malformed answer from %s:%d: %s", self.servers.host, self.servers.port, why)
        if self.out and not self.delivered:
            # The head was parsed but nothing reached the client yet: a 502 is possible.
            exchange.response_begun = False
        self.out = []
        self.abort()
        exchange.upstream_malformed(self, why)

    def on_status(self, reason: bytes) -> None:
        if not reason_is_valid(reason):
            raise UnsolicitedAnswer  # control characters in the reason phrase: 502

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = header_kind(name, RESPONSE_HEADER_KINDS, RESPONSE_PREFILTER)
        if kind == ORDINARY:
            append_field(self.head_parts, name, value)
        elif kind == CONTENT_LENGTH:
            self.response_length = value
        elif kind == REQUEST_ID:
            self.has_request_id = True
            append_field(self.head_parts, name, value)
        elif kind == CONNECTION:
            if value not in PLAIN_CONNECTION_VALUES:
                named = connection_named_headers(value)
                if named:
                    self.named_hop = (self.named_hop or []) + named
        elif kind == TRANSFER_ENCODING:
            # Only plain chunked is relayed: the body is re-framed, so any other
            # coding would reach the client undeclared (502 in on_headers_complete).
            self.transfer_codings.append(value)
            self.chunked = True
        elif kind == UPGRADE:
            self.upgrade_value = value

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        if self.complete:
            raise UnsolicitedAnswer  # a second answer to one request
        parser = self.parser
        status = parser.get_status_code()
        if not 100 <= status <= 599 or (
            not self.answer_http11 and parser.get_http_version() not in ("1.1", "1.0")
        ):
            raise UnsolicitedAnswer  # malformed (RFC 9110 15: 100 to 599): 502
        if (
            self.transfer_codings
            and b",".join(self.transfer_codings).strip(b" ").lower() != b"chunked"
        ):
            raise UnsolicitedAnswer  # a coding maitred does not relay: 502
        if status == 101:
            self._switching(exchange)
            return
        if status < 200:
            # Interim answers: relay and keep waiting for the final one. 101 is
            # never seen here because Upgrade is stripped from requests.
            if exchange.client_http11:
                self.out.append(b"".join((status_line(status), *self.head_parts, CRLF)))
            self._reset_head()
            # A 1xx answer ends with its head (RFC 9110 15.2), whatever its
            # Content-Length says; llhttp would read a body for all but 100. The
            # head was fed alone (see _answer_heads): the next answer starts on a
            # fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            return
        self.keep_alive = parser.should_keep_alive()
        self._final_head(exchange, status)
        if exchange.is_head:
            # httptools cannot be told that a HEAD answer has no body: the answer
            # ends here, and the next one starts on a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            self.complete = True

    def _final_head(self, exchange: Exchange, status: int) -> None:
        """The final answer's head is read: rebuild it for the client, and choose how
        its body is framed there."""
        if exchange.upgrade is not None:
            exchange.client.tunnel_refused(exchange)
        self.status = status
        parts = self.head_parts
        if self.named_hop:
            parts = drop_named_headers(parts, self.named_hop)
        head = [status_line(status)]
        head += parts
        # Name and ": " as one piece: the head is joined, at about 100 instructions a piece.
        if not self.has_request_id:
            head.append(b"X-Request-Id: ")
            head.append(exchange.request_id)
            head.append(CRLF)
        if exchange.response_headers:
            head.append(exchange.response_headers)
        if not exchange.request_done:
            # The server answered before the request body ended: the rest of the
            # body cannot be told apart from a next request, so close after.
            exchange.close_after = True
        client_close = exchange.close_after or exchange.client.closing
        # Declared when the answer has one, body or not (HEAD, 304), except on 204
        # (RFC 9110 8.6).
        length = self.response_length
        if exchange.is_head or status == 204 or status == 304:
            self.body_mode = BODY_NONE
            if status == 204:
                length = None
        elif length is not None:
            self.body_mode = BODY_LENGTH
        elif self.chunked:
            self.body_mode = BODY_CHUNKED
            head.append(b"Transfer-Encoding: chunked\r\n")
        else:
            # Delimited by the server's close: chunk it for HTTP/1.1 clients,
            # relay raw and close for HTTP/1.0 ones.
            self.keep_alive = False
            self.until_close = True
            if exchange.client_http11:
                self.body_mode = BODY_CHUNKED
                head.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.body_mode = BODY_UNTIL_CLOSE
                client_close = True
                exchange.close_after = True
        if length is not None:
            head.append(b"Content-Length: ")
            head.append(length)
            head.append(CRLF)
        if client_close:
            head.append(b"Connection: close\r\n\r\n")
        elif not exchange.client_http11:
            head.append(b"Connection: keep-alive\r\n\r\n")
        else:
            head.append(CRLF)
        self.out.append(b"".join(head))
        exchange.response_begun = True
        exchange.replay = None
        server = exchange.server
        if server is not None:
            server.answers[status // 100] += 1
        if status >= 500:
            exchange.server_failed = True

    def _switching(self, exchange: Exchange) -> None:
        if exchange.upgrade is None or not self.upgrade_value:
            raise UnsolicitedAnswer  # 101 without an Upgrade asked for: malformed
        head = [status_line(101), *self.head_parts]
        head += (b"Connection: Upgrade\r\nUpgrade: ", self.upgrade_value, CRLF)
        if not self.has_request_id:
            append_field(head, b"X-Request-Id", exchange.request_id)
        head.append(CRLF)
        self.out.append(b"".join(head))
        self.status = 101
        self.tunnel = True
        exchange.response_begun = True
        exchange.replay = None
        server = exchange.server
        if server is not None:
            server.answers[1] += 1

    def _open_tunnel(self, exchange: Exchange, to_client: bytes) -> None:
        """The server switched protocols: from now on bytes pass through unchanged."""
        client = exchange.client
        out, self.out = self.out, []
        self.exchange = None
        self.deadline.cancel()
        if client.transport is None or self.transport is None:
            self.abort()
            return
        # From here the tunnel writes to both transports itself.
        self.servers.writes.flush()
        client.transport.writelines(out)
        to_server = exchange.tunnel_early
        exchange.tunnel_early = b""
        client.tunnel_pending = None
        if client.paused:
            client.paused = 0  # the tunnel does its own flow control
        open_tunnel(
            self.servers.loop,
            client.transport,
            self.transport,
            to_server=to_server,
            to_client=to_client,
            idle_timeout=client.slot.runtime.tunnel_timeout,
            on_client_closed=client.connection_lost,
        )

    def on_body(self, body: bytes) -> None:
        self.body_seen += len(body)
        if self.body_mode == BODY_CHUNKED:
            self.out += (b"%x\r\n" % len(body), body, CRLF)
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200 or self.complete:
            return  # an interim answer, or a HEAD answer already complete
        if self.body_mode == BODY_CHUNKED:
            self.out.append(CHUNK_END)
        self.complete = True

    def _on_timeout(self) -> None:
        exchange = self.exchange
        if exchange is None:
            # Idle too long in the pool.
            self.servers.forget(self)
            self.close()
            return
        self.exchange = None
        self.abort()
        exchange.upstream_timed_out(self)


class UnsolicitedAnswer(Exception):
    """The server sent an answer nobody asked for: the connection is not reused."""


_STATUS_LINES: Final[dict[int, bytes]] = {}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 200 OK\\r\\n``; the server's reason phrase is not kept (RFC 9112 4)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Unknown"
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    return line
