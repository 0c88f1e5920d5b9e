"""Connections to the servers: a keep-alive pool per server and the response relay.

An ``UpstreamConnection`` carries one exchange at a time. It parses the server's
answer with httptools and relays it to the client connection, re-framed: the
head is rebuilt without hop-by-hop headers and the body keeps or gains one
unambiguous framing. Everything written to the client for one read event goes
out in one ``writelines`` call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools

from maitred.proxy.deadline import Deadline
from maitred.proxy.framing import (
    CONNECTION,
    CONTENT_LENGTH,
    REQUEST_ID,
    RESPONSE_HEADER_KINDS,
    TRANSFER_ENCODING,
    connection_named_headers,
    drop_named_headers,
)

if TYPE_CHECKING:
    from maitred.proxy.http1 import Exchange

log = logging.getLogger("maitred.upstream")

# How the answer's body is framed towards the client.
BODY_NONE = 0
BODY_LENGTH = 1
BODY_CHUNKED = 2
BODY_UNTIL_CLOSE = 3  # client is HTTP/1.0: relay raw, close after

CHUNK_END = b"0\r\n\r\n"
CRLF = b"\r\n"


class ServerConnections:
    """The idle keep-alive connections to one server, shared by every pool that names it."""

    __slots__ = ("host", "port", "idle", "max_idle", "idle_timeout", "opened", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        max_idle: int,
        idle_timeout: float,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.opened = 0

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def give_back(self, conn: UpstreamConnection) -> None:
        if len(self.idle) >= self.max_idle or conn.transport is None:
            conn.close()
            return
        conn.exchange = None
        conn.deadline.arm(self.idle_timeout)
        # Read while idle, so a close from the server is noticed at once.
        conn.transport.resume_reading()
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
        task.add_done_callback(exchange.on_connect_done)

    async def _connect(self, timeout: float) -> UpstreamConnection:
        transport, conn = await asyncio.wait_for(
            self.loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port),
            timeout,
        )
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
        "reason",
        "body_mode",
        "response_length",
        "keep_alive",
        "out",
        "upstream_paused",
        "named_hop",
        "has_request_id",
        "complete",
        "chunked",
        "until_close",
        "response_timeout",
    )

    def __init__(self, servers: ServerConnections) -> None:
        self.servers = servers
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.deadline = Deadline(servers.loop, self._on_timeout)
        self.reused = False
        self.got_bytes = False
        self.head_parts: list[bytes] = []
        self.status = 0
        self.reason = b""
        self.body_mode = BODY_NONE
        self.response_length: bytes | None = None
        self.keep_alive = True
        self.out: list[bytes] = []
        self.upstream_paused = False
        self.named_hop: list[bytes] | None = None
        self.has_request_id = False
        self.complete = False
        self.chunked = False
        self.until_close = False
        self.response_timeout = 30.0

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
            self._finish(exchange)
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

    def begin(self, exchange: Exchange, response_timeout: float) -> None:
        self.exchange = exchange
        self.response_timeout = response_timeout
        self.got_bytes = False
        self.complete = False
        self.status = 0
        self.head_parts = []
        self.named_hop = None
        self.has_request_id = False
        self.response_length = None
        self.deadline.arm(response_timeout)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading_for_upstream()

    # -- receiving the answer --------------------------------------------------

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # A server talking on an idle connection has broken the protocol.
            self.abort()
            return
        self.got_bytes = True
        self.deadline.arm(self.response_timeout)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._malformed(exchange, str(exc))
            return
        if self.out:
            self._flush()

    def _flush(self) -> None:
        out = self.out
        self.out = []
        exchange = self.exchange
        if exchange is not None:
            exchange.client.write_response(out)

    def _malformed(self, exchange: Exchange, why: str) -> None:
        log.warning("malformed answer from %s:%d: %s", self.servers.host, self.servers.port, why)
        self.out = []
        self.abort()
        exchange.upstream_malformed(self, why)

    def on_message_begin(self) -> None:
        self.head_parts = []
        self.named_hop = None
        self.has_request_id = False
        self.response_length = None
        self.chunked = False
        self.until_close = False
        self.body_mode = BODY_NONE

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = RESPONSE_HEADER_KINDS.get(name.lower())
        if kind is None:
            self.head_parts += (name, b": ", value, CRLF)
        elif kind == CONTENT_LENGTH:
            self.response_length = value
        elif kind == REQUEST_ID:
            self.has_request_id = True
            self.head_parts += (name, b": ", value, CRLF)
        elif kind == CONNECTION:
            named = connection_named_headers(value)
            if named:
                self.named_hop = (self.named_hop or []) + named
        elif kind == TRANSFER_ENCODING:
            # llhttp frames by chunked exactly when it is the final coding.
            self.chunked = value.rstrip().lower().endswith(b"chunked")

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        assert exchange is not None
        status = self.parser.get_status_code()
        self.status = status
        reason = self.reason or b"-"
        self.reason = b""
        if 100 <= status < 200:
            # Interim answers: relay and keep waiting for the final one. 101 is
            # never seen here because Upgrade is stripped from requests.
            self.out.append(b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason))
            return
        self.keep_alive = self.parser.should_keep_alive()
        parts = self.head_parts
        if self.named_hop:
            parts = drop_named_headers(parts, self.named_hop)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        head += parts
        if not self.has_request_id:
            head += (b"X-Request-Id: ", exchange.request_id, CRLF)
        if exchange.response_headers:
            head.append(exchange.response_headers)
        client_close = exchange.client_wants_close()
        if exchange.is_head or status == 204 or status == 304:
            self.body_mode = BODY_NONE
            if self.response_length is not None:
                head += (b"Content-Length: ", self.response_length, CRLF)
        elif self.response_length is not None:
            self.body_mode = BODY_LENGTH
            head += (b"Content-Length: ", self.response_length, CRLF)
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
                exchange.force_close()
        if client_close:
            head.append(b"Connection: close\r\n\r\n")
        elif not exchange.client_http11:
            head.append(b"Connection: keep-alive\r\n\r\n")
        else:
            head.append(CRLF)
        self.out.append(b"".join(head))
        exchange.response_started(status)
        if self.body_mode == BODY_NONE and exchange.is_head:
            # httptools cannot be told that a HEAD answer has no body: finish the
            # exchange here and start the next answer on a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            self._finish(exchange)

    def on_body(self, body: bytes) -> None:
        mode = self.body_mode
        if mode == BODY_CHUNKED:
            self.out += (b"%x\r\n" % len(body), body, CRLF)
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or self.status < 200:
            return
        if exchange.is_head:
            return
        if self.body_mode == BODY_CHUNKED:
            self.out.append(CHUNK_END)
        self._finish(exchange)

    def _finish(self, exchange: Exchange) -> None:
        self.complete = True
        self.deadline.disarm()
        self._flush()
        self.exchange = None
        reusable = self.keep_alive and exchange.request_fully_sent()
        exchange.response_complete(self, reusable=reusable)

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
