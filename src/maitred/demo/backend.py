"""A fast HTTP/1.1 demo and test backend that names itself in every answer.

Tests, `maitred demo` and the benchmark all start this server, so it is built for
speed: one asyncio Protocol per connection, the httptools parser, uvloop when run as
a program, and no coroutine per request (delays use ``loop.call_later``, large
bodies are written from a generator that honours ``pause_writing``).

Endpoints (any method; ``HEAD`` answers like ``GET`` without the body):

- ``/`` and any unknown path: ``200 text/plain`` body ``"<name>\\n"``.
- ``/health``: ``200 ok`` while healthy, ``503`` while marked failing.
- ``/admin/health?state=ok|fail``: flips the health answer.
- ``/admin/slow?ms=N``: delays every identity answer (``GET /``) by N ms.
- ``/echo``: JSON description of the request as received.
- ``/bytes?n=N``: N bytes of the repeating ``bytes(range(256))`` pattern.
- ``/chunked?n=N&size=S``: the same pattern, ``Transfer-Encoding: chunked``.
- ``/delay?ms=M``: answers after M milliseconds.
- ``/status?code=C``: answers with status C.
- ``/close``: closes without answering; ``/reset``: aborts with a TCP RST.
- ``/upload``: JSON with the length and SHA-256 of the body (hashed as it arrives).
- ``/stats``: JSON connection and request counters.
- Any request carrying ``Upgrade`` (or ``CONNECT``): ``101`` (``200`` for CONNECT),
  then every byte is echoed back raw, which lets tests check tunnelling.

A connection may start with a PROXY protocol v1 or v2 header; it is detected, parsed
and reported by ``/echo`` under ``"proxy"``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import http
import json
import signal
import socket
import ssl
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast
from urllib.parse import parse_qs

import httptools

from maitred.proxy import proxy_protocol
from maitred.proxy.proxy_protocol import V1_PREFIX, V2_SIGNATURE, ProxyProtocolError

PATTERN_PERIOD = 256
# A whole number of periods, so every block after the first starts at pattern offset 0.
_PATTERN_BLOCK = bytes(range(PATTERN_PERIOD)) * 1024
_PATTERN_VIEW = memoryview(_PATTERN_BLOCK)
# Small pieces (tiny chunks, chunk headers) are gathered up to this size per write.
_COALESCE_BYTES = 64 * 1024
# Stop reading pipelined requests once this many wait for an answer.
_MAX_QUEUED_REQUESTS = 64
_MAX_GENERATED_BYTES = 1 << 40
_MAX_DELAY_MS = 3_600_000
_EMPTY_SHA256 = hashlib.sha256().hexdigest()
_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NO_BODY_STATUSES = frozenset({204, 304})


def pattern_bytes(length: int, offset: int = 0) -> bytes:
    """The bytes `/bytes` and `/chunked` send, from ``offset`` for ``length`` bytes."""
    return b"".join(bytes(piece) for piece in _iter_pattern(offset, length))


def _iter_pattern(offset: int, length: int) -> Iterator[memoryview]:
    while length > 0:
        start = offset % PATTERN_PERIOD
        take = min(length, len(_PATTERN_BLOCK) - start)
        yield _PATTERN_VIEW[start : start + take]
        offset += take
        length -= take


def _iter_chunked_pattern(length: int, chunk_size: int) -> Iterator[bytes | memoryview]:
    offset = 0
    while offset < length:
        take = min(chunk_size, length - offset)
        yield b"%x\r\n" % take
        yield from _iter_pattern(offset, take)
        yield b"\r\n"
        offset += take
    yield b"0\r\n\r\n"


def format_address(host: str, port: int) -> str:
    """``HOST:PORT``, with brackets around IPv6 hosts as the configuration expects."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


class BackendState:
    """What one backend knows about itself, shared by all of its connections."""

    def __init__(self, name: str) -> None:
        if any(ch in name for ch in "\r\n\0"):
            raise ValueError("backend name must not contain line breaks")
        self.name = name
        self.healthy = True
        # Added to every identity answer (GET /), to play a slow server.
        self.slow_ms = 0
        self.connections_accepted = 0
        self.requests = 0
        self.open_transports: set[asyncio.Transport] = set()
        self.name_body = f"{name}\n".encode()
        # The hottest answer (GET / on a keep-alive HTTP/1.1 connection), built once.
        self.identity_response = (
            f"HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(self.name_body)}\r\n\r\n"
        ).encode("latin-1") + self.name_body

    @property
    def connections_open(self) -> int:
        return len(self.open_transports)

    def stats(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "connections_accepted": self.connections_accepted,
            "connections_open": self.connections_open,
            "requests": self.requests,
            "healthy": self.healthy,
        }

    def close_connections(self) -> None:
        """Close every open connection (a listening server's close() leaves them open)."""
        for transport in list(self.open_transports):
            transport.close()


class _Request:
    """One request as parsed so far; the body is hashed, never kept."""

    __slots__ = (
        "method",
        "target",
        "headers",
        "http_version",
        "keep_alive",
        "upgrade",
        "body_length",
        "body_hash",
        "malformed",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.http_version = "1.1"
        self.keep_alive = True
        self.upgrade = False
        self.body_length = 0
        self.body_hash: Any = None
        self.malformed = False

    @property
    def is_head(self) -> bool:
        return self.method == b"HEAD"

    def header(self, name: bytes) -> bytes | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def body_sha256(self) -> str:
        return _EMPTY_SHA256 if self.body_hash is None else str(self.body_hash.hexdigest())


class _BadParameter(Exception):
    pass


def _int_param(
    query: dict[str, list[str]], key: str, default: int | None, low: int, high: int
) -> int:
    values = query.get(key)
    if not values:
        if default is None:
            raise _BadParameter(f"missing parameter {key}")
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise _BadParameter(f"parameter {key} must be an integer") from None
    if not low <= value <= high:
        raise _BadParameter(f"parameter {key} must be between {low} and {high}")
    return value


class BackendProtocol(asyncio.Protocol):
    """One client connection: parses requests, answers them strictly in order."""

    def __init__(self, state: BackendState) -> None:
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._client = "unknown"
        self._parsing: _Request | None = None
        self._queue: deque[_Request] = deque()
        # True while an answer is waiting for a timer or for the socket to drain.
        self._busy = False
        self._closed = False
        self._peer_eof = False
        self._writing_paused = False
        self._reading_paused = False
        self._stream: Iterator[bytes | memoryview] | None = None
        self._stream_request: _Request | None = None
        self._delay_handle: asyncio.TimerHandle | None = None
        self._continue_owed: _Request | None = None
        self._parse_failed = False
        # PROXY protocol detection happens on the first bytes only.
        self._preface: bytes | None = b""
        self._proxy: dict[str, Any] | None = None
        # Bytes that followed an upgrade request which is not answered yet; once it is,
        # _tunnel turns the connection into a raw echo.
        self._upgrade_buffer: bytearray | None = None
        self._tunnel = False

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._state.connections_accepted += 1
        self._state.open_transports.add(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = format_address(str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._transport is not None:
            self._state.open_transports.discard(self._transport)
        if self._delay_handle is not None:
            self._delay_handle.cancel()
            self._delay_handle = None
        self._stream = None
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        if self._closed or self._parse_failed:
            return
        if self._tunnel:
            self._write(data)
            return
        if self._upgrade_buffer is not None:
            self._upgrade_buffer += data
            return
        if self._preface is not None:
            remaining = self._consume_proxy_header(data)
            if remaining is None:
                return
            data = remaining
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._upgrade_buffer = bytearray(data[offset:])
        except httptools.HttpParserError:
            self._parse_failed = True
            self._parsing = None
            bad = _Request()
            bad.malformed = True
            bad.keep_alive = False
            self._queue.append(bad)
        self._drive()

    def eof_received(self) -> bool:
        # Keep the write side open: pipelined or delayed answers are still owed.
        self._peer_eof = True
        self._drive()
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._stream is not None:
            self._pump()
        self._drive()

    # -- httptools callbacks ------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = _Request()

    def on_url(self, url: bytes) -> None:
        if self._parsing is not None:
            self._parsing.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._parsing is not None:
            self._parsing.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self._parsing
        if request is None:
            return
        parser = self._parser
        request.method = parser.get_method()
        request.http_version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        expect = request.header(b"expect")
        if expect is not None and expect.lower() == b"100-continue":
            self._continue_owed = request
            self._send_owed_continue()

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is None:
            return
        if request.body_hash is None:
            request.body_hash = hashlib.sha256()
        request.body_hash.update(body)
        request.body_length += len(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        self._parsing = None
        if request is None:
            return
        if self._continue_owed is request:
            self._continue_owed = None
        self._queue.append(request)
        self._update_reading()

    # -- ordering and flow control -----------------------------------------------

    def _drive(self) -> None:
        """Answer queued requests in order until one has to wait."""
        while self._queue and not self._busy and not self._closed and not self._writing_paused:
            request = self._queue.popleft()
            self._dispatch(request)
        if self._closed:
            return
        self._update_reading()
        if not self._busy and not self._queue:
            self._send_owed_continue()
            if self._peer_eof and self._transport is not None:
                self._close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        should_pause = self._writing_paused or len(self._queue) >= _MAX_QUEUED_REQUESTS
        if should_pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not should_pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _send_owed_continue(self) -> None:
        # A 100 may only go out when it cannot land inside an earlier answer.
        if self._continue_owed is None or self._busy or self._queue or self._closed:
            return
        self._continue_owed = None
        self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(data)

    def _close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def _finish(self, request: _Request) -> None:
        if not request.keep_alive:
            self._close()

    # -- answers ----------------------------------------------------------------

    def _head(self, request: _Request, status: int, headers: Sequence[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"X-Backend: {self._state.name}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if not request.keep_alive:
            lines.append("Connection: close")
        elif request.http_version == "1.0":
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _respond(
        self,
        request: _Request,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        headers = list(extra_headers)
        if status in _NO_BODY_STATUSES:
            body = b""
        else:
            headers.append(("Content-Type", content_type))
            headers.append(("Content-Length", str(len(body))))
        head = self._head(request, status, headers)
        self._write(head if request.is_head else head + body)
        self._finish(request)

    def _respond_json(self, request: _Request, status: int, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode() + b"\n"
        self._respond(request, status, body, "application/json")

    def _dispatch(self, request: _Request) -> None:
        if request.malformed:
            self._respond(request, 400, b"malformed request\n")
            return
        self._state.requests += 1
        if request.upgrade:
            self._start_tunnel(request)
            return
        target = request.target
        if (
            target == b"/"
            and request.method == b"GET"
            and request.keep_alive
            and request.http_version == "1.1"
            and not self._state.slow_ms
        ):
            self._write(self._state.identity_response)
            return
        path, _, query_bytes = target.partition(b"?")
        if not target.startswith(b"/"):
            try:
                url = httptools.parse_url(target)
                path, query_bytes = url.path or b"/", url.query or b""
            except httptools.HttpParserInvalidURLError:
                pass
        handler = _ROUTES.get(path.decode("latin-1"), BackendProtocol._serve_identity)
        query = parse_qs(query_bytes.decode("latin-1")) if query_bytes else {}
        try:
            handler(self, request, query)
        except _BadParameter as problem:
            self._respond(request, 400, f"{problem}\n".encode())

    def _serve_identity(self, request: _Request, query: dict[str, list[str]]) -> None:
        if self._state.slow_ms:
            self._busy = True
            self._delay_handle = self._loop.call_later(
                self._state.slow_ms / 1000, self._slow_identity_elapsed, request
            )
            return
        self._respond(request, 200, self._state.name_body)

    def _slow_identity_elapsed(self, request: _Request) -> None:
        self._delay_handle = None
        self._busy = False
        self._respond(request, 200, self._state.name_body)
        self._drive()

    def _serve_admin_slow(self, request: _Request, query: dict[str, list[str]]) -> None:
        self._state.slow_ms = _int_param(query, "ms", 0, 0, _MAX_DELAY_MS)
        self._respond_json(
            request, 200, {"backend": self._state.name, "slow_ms": self._state.slow_ms}
        )

    def _serve_health(self, request: _Request, query: dict[str, list[str]]) -> None:
        if self._state.healthy:
            self._respond(request, 200, b"ok\n")
        else:
            self._respond(request, 503, b"failing\n")

    def _serve_admin_health(self, request: _Request, query: dict[str, list[str]]) -> None:
        wanted = (query.get("state") or [""])[-1]
        if wanted not in ("ok", "fail"):
            raise _BadParameter("parameter state must be ok or fail")
        self._state.healthy = wanted == "ok"
        self._respond_json(
            request, 200, {"backend": self._state.name, "healthy": self._state.healthy}
        )

    def _serve_echo(self, request: _Request, query: dict[str, list[str]]) -> None:
        self._respond_json(
            request,
            200,
            {
                "backend": self._state.name,
                "method": request.method.decode("latin-1"),
                "path": request.target.decode("latin-1"),
                "http_version": request.http_version,
                "headers": [
                    [name.decode("latin-1"), value.decode("latin-1")]
                    for name, value in request.headers
                ],
                "body_length": request.body_length,
                "body_sha256": request.body_sha256(),
                "client": self._client,
                "proxy": self._proxy,
            },
        )

    def _serve_upload(self, request: _Request, query: dict[str, list[str]]) -> None:
        self._respond_json(
            request,
            200,
            {
                "backend": self._state.name,
                "body_length": request.body_length,
                "body_sha256": request.body_sha256(),
            },
        )

    def _serve_stats(self, request: _Request, query: dict[str, list[str]]) -> None:
        self._respond_json(request, 200, self._state.stats())

    def _serve_status(self, request: _Request, query: dict[str, list[str]]) -> None:
        code = _int_param(query, "code", None, 200, 599)
        self._respond(request, code, f"status {code}\n".encode())

    def _serve_close(self, request: _Request, query: dict[str, list[str]]) -> None:
        self._close()

    def _serve_reset(self, request: _Request, query: dict[str, list[str]]) -> None:
        transport = self._transport
        self._closed = True
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 turns the close into an RST instead of a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _serve_delay(self, request: _Request, query: dict[str, list[str]]) -> None:
        delay_ms = _int_param(query, "ms", 0, 0, _MAX_DELAY_MS)
        self._busy = True
        self._delay_handle = self._loop.call_later(
            delay_ms / 1000, self._delay_elapsed, request, delay_ms
        )

    def _delay_elapsed(self, request: _Request, delay_ms: int) -> None:
        self._delay_handle = None
        self._busy = False
        self._respond(request, 200, f"delayed {delay_ms}ms\n".encode())
        self._drive()

    def _serve_bytes(self, request: _Request, query: dict[str, list[str]]) -> None:
        length = _int_param(query, "n", 0, 0, _MAX_GENERATED_BYTES)
        head = self._head(
            request,
            200,
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(length))],
        )
        self._start_stream(request, head, _iter_pattern(0, length))

    def _serve_chunked(self, request: _Request, query: dict[str, list[str]]) -> None:
        if request.http_version == "1.0":  # chunked framing does not exist in HTTP/1.0
            self._serve_bytes(request, query)
            return
        length = _int_param(query, "n", 0, 0, _MAX_GENERATED_BYTES)
        chunk_size = _int_param(query, "size", 4096, 1, _MAX_GENERATED_BYTES)
        head = self._head(
            request,
            200,
            [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")],
        )
        self._start_stream(request, head, _iter_chunked_pattern(length, chunk_size))

    def _start_stream(
        self, request: _Request, head: bytes, pieces: Iterator[bytes | memoryview]
    ) -> None:
        self._write(head)
        if request.is_head:
            self._finish(request)
            return
        self._busy = True
        self._stream = pieces
        self._stream_request = request
        self._pump()

    def _pump(self) -> None:
        """Write the current stream until it ends or the socket asks us to wait."""
        stream = self._stream
        if stream is None:
            return
        batch = bytearray()
        for piece in stream:
            if self._closed:
                return
            if len(piece) >= _COALESCE_BYTES:
                if batch:
                    self._write(batch)
                    batch = bytearray()
                self._write(piece)
            else:
                batch += piece
                if len(batch) >= _COALESCE_BYTES:
                    self._write(batch)
                    batch = bytearray()
            if self._writing_paused:
                if batch:
                    self._write(batch)
                return
        if batch:
            self._write(batch)
        request = self._stream_request
        self._stream = None
        self._stream_request = None
        self._busy = False
        if request is not None:
            self._finish(request)

    def _start_tunnel(self, request: _Request) -> None:
        if request.method == b"CONNECT":
            self._write(self._head(request, 200, []))
        else:
            protocol = request.header(b"upgrade") or b"echo"
            headers = [("Upgrade", protocol.decode("latin-1")), ("Connection", "Upgrade")]
            key = request.header(b"sec-websocket-key")
            if key is not None:
                accept = base64.b64encode(hashlib.sha1(key.strip() + _WEBSOCKET_GUID).digest())
                headers.append(("Sec-WebSocket-Accept", accept.decode("ascii")))
            request.keep_alive = True  # the connection stays open for the tunnel
            self._write(self._head(request, 101, headers))
        self._tunnel = True
        pending = self._upgrade_buffer or bytearray()
        self._upgrade_buffer = None
        self._queue.clear()
        if pending:
            self._write(pending)

    # -- PROXY protocol -----------------------------------------------------------

    def _consume_proxy_header(self, data: bytes) -> bytes | None:
        """Strip a leading PROXY header; returns the HTTP bytes, or None to wait."""
        assert self._preface is not None
        buffered = self._preface + data
        if not buffered.startswith((V1_PREFIX, V2_SIGNATURE)):
            if V1_PREFIX.startswith(buffered) or V2_SIGNATURE.startswith(buffered):
                self._preface = buffered  # too short to tell yet
                return None
            self._preface = None
            return buffered
        try:
            header = proxy_protocol.parse(buffered)
        except ProxyProtocolError:
            self._parse_failed = True
            self._write(self._head(_closing_request(), 400, [("Content-Length", "0")]))
            self._close()
            return None
        if header is None:
            self._preface = buffered
            return None
        self._preface = None
        self._proxy = {
            "version": 1 if buffered.startswith(V1_PREFIX) else 2,
            "source": header.source and format_address(*header.source),
            "destination": header.destination and format_address(*header.destination),
        }
        return buffered[header.length :]


def _closing_request() -> _Request:
    request = _Request()
    request.keep_alive = False
    return request


_Handler = Callable[[BackendProtocol, _Request, dict[str, list[str]]], None]
_ROUTES: dict[str, _Handler] = {
    "/": BackendProtocol._serve_identity,
    "/health": BackendProtocol._serve_health,
    "/admin/health": BackendProtocol._serve_admin_health,
    "/admin/slow": BackendProtocol._serve_admin_slow,
    "/echo": BackendProtocol._serve_echo,
    "/bytes": BackendProtocol._serve_bytes,
    "/chunked": BackendProtocol._serve_chunked,
    "/delay": BackendProtocol._serve_delay,
    "/status": BackendProtocol._serve_status,
    "/close": BackendProtocol._serve_close,
    "/reset": BackendProtocol._serve_reset,
    "/upload": BackendProtocol._serve_upload,
    "/stats": BackendProtocol._serve_stats,
}


async def start_backend(
    host: str,
    port: int,
    name: str,
    *,
    state: BackendState | None = None,
    tls: ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Listen on host:port in the running loop; pass ``state`` to inspect or close it later,
    ``tls`` to serve HTTPS."""
    backend_state = state if state is not None else BackendState(name)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: BackendProtocol(backend_state),
        host,
        port,
        reuse_address=True,
        backlog=1024,
        ssl=tls,
    )


def tls_server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """HTTPS for a backend; with ``client_ca`` it demands a client certificate signed by it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_address(server: asyncio.Server) -> str:
    """``HOST:PORT`` of the first socket a started backend listens on."""
    host, port = server.sockets[0].getsockname()[:2]
    return format_address(str(host), int(port))


class _StdinWatcher(asyncio.Protocol):
    """Sets the stop event when the parent closes our stdin (or dies)."""

    def __init__(self, stop: asyncio.Event) -> None:
        self._stop = stop

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop.set()


async def _serve(
    host: str, port: int, name: str, exit_on_stdin_close: bool, tls: ssl.SSLContext | None = None
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    state = BackendState(name)
    server = await start_backend(host, port, name, state=state, tls=tls)
    if exit_on_stdin_close:
        await loop.connect_read_pipe(lambda: _StdinWatcher(stop), sys.stdin)
    with contextlib.suppress(BrokenPipeError):
        print(f"listening on {server_address(server)}", flush=True)
    await stop.wait()
    server.close()
    state.close_connections()
    await server.wait_closed()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="maitred demo-backend",
        description="Run a demo HTTP backend that names itself in every answer.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--name", default="backend", help="name sent in X-Backend and bodies")
    parser.add_argument(
        "--exit-on-stdin-close",
        action="store_true",
        help="exit when stdin reaches end of file (so the backend dies with its parent)",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca", metavar="PEM", help="require client certificates signed by this CA"
    )
    args = parser.parse_args(argv)
    if any(ch in args.name for ch in "\r\n\0"):
        parser.error("--name must not contain line breaks")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    tls = None
    if args.tls_cert is not None:
        tls = tls_server_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    serve = _serve(args.host, args.port, args.name, args.exit_on_stdin_close, tls)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        return asyncio.run(serve)
    result: int = uvloop.run(serve)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
