"""A small HTTP/1.1 server for the admin listener: h11 parsing, routing, JSON answers.

The admin side is not the hot path, so clarity wins over speed: asyncio
streams, h11 for the protocol (keep-alive, framing, HEAD), bodies up to
``MAX_BODY`` read whole, and a router that tells an unknown path (404) from a
wrong method (405).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

log = logging.getLogger("maitred.admin")

MAX_HEAD = 16 * 1024
MAX_BODY = 1024 * 1024
READ_SIZE = 64 * 1024
IDLE_TIMEOUT = 60.0
SERVER_NAME = b"maitred-admin"
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    #: Header names lowercased; the last value wins.
    headers: dict[str, str]
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
    return Response(status, body, "application/json", headers or [])


def no_content() -> Response:
    return Response(204, b"", "")


Handler = Callable[[Request], Awaitable[Response]]


class Router:
    """Routes ``METHOD /path/{param}`` to handlers; 404 and 405 answers in JSON."""

    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        pattern = _compile(template)
        for existing, methods in self._routes:
            if existing.pattern == pattern.pattern:
                methods[method] = handler
                return
        self._routes.append((pattern, {method: handler}))

    async def dispatch(self, request: Request) -> Response:
        for pattern, methods in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            method = "GET" if request.method == "HEAD" and "HEAD" not in methods else request.method
            handler = methods.get(method)
            if handler is None:
                allowed = sorted(methods)
                if "GET" in methods:
                    allowed.append("HEAD")
                return json_response(
                    405,
                    {"error": f"method {request.method} is not allowed on {request.path}"},
                    [("Allow", ", ".join(sorted(allowed)))],
                )
            request.params = {name: unquote(value) for name, value in match.groupdict().items()}
            return await handler(request)
        return json_response(404, {"error": f"no such path: {request.path}"})


def _compile(template: str) -> re.Pattern[str]:
    """``/api/v1/servers/{id}`` -> a regex capturing ``id`` (one path segment)."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if index % 2 == 0 else f"(?P<{part}>[^/]+)"
        for index, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


class HttpServer:
    """Serves ``dispatch`` on one or more sockets, HTTP/1.1 with keep-alive."""

    def __init__(self, dispatch: Handler) -> None:
        self._dispatch = dispatch
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port, limit=READ_SIZE)

    def addresses(self) -> list[str]:
        if self._server is None:
            return []
        addresses = []
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            addresses.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return addresses

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while await self._one_exchange(conn, reader, writer):
                conn.start_next_cycle()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except h11.ProtocolError as exc:
            log.debug("admin connection dropped: %s", exc)
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _one_exchange(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            event = await _next_event(conn, reader)
            if isinstance(event, h11.ConnectionClosed):
                return False
            assert isinstance(event, h11.Request)
            request = _request_from(event)
            length = request.headers.get("content-length", "0")
            if length.isdigit() and int(length) > MAX_BODY:
                response = json_response(413, {"error": f"body larger than {MAX_BODY} bytes"})
                await _send(conn, writer, response, request.method, close=True)
                return False
            request.body = await _read_body(conn, reader)
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                status = exc.error_status_hint
                response = json_response(status, {"error": f"malformed request: {exc}"})
                await _send(conn, writer, response, "GET", close=True)
            return False
        except _BodyTooLarge:
            response = json_response(413, {"error": f"body larger than {MAX_BODY} bytes"})
            await _send(conn, writer, response, request.method, close=True)
            return False
        try:
            response = await self._dispatch(request)
        except Exception:
            log.exception("admin request %s %s failed", request.method, request.path)
            response = json_response(500, {"error": "internal error; see the balancer's log"})
        await _send(conn, writer, response, request.method, close=False)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


class _BodyTooLarge(Exception):
    pass


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await asyncio.wait_for(reader.read(READ_SIZE), IDLE_TIMEOUT)
        conn.receive_data(data)


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.EndOfMessage):
            return b"".join(parts)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY:
                raise _BodyTooLarge
            parts.append(bytes(event.data))


def _request_from(event: h11.Request) -> Request:
    target = event.target.decode("latin-1")
    split = urlsplit(target)
    headers = {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in event.headers
    }
    return Request(
        method=event.method.decode("ascii", "replace").upper(),
        path=split.path or "/",
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=headers,
    )


async def _send(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    response: Response,
    method: str,
    *,
    close: bool,
) -> None:
    headers = [("Server", SERVER_NAME.decode()), ("Cache-Control", "no-store")]
    if response.content_type:
        headers.append(("Content-Type", response.content_type))
    if response.status != 204:
        headers.append(("Content-Length", str(len(response.body))))
    if close:
        headers.append(("Connection", "close"))
    headers.extend(response.headers)
    reason = _REASONS.get(response.status, b"")
    writer.write(
        conn.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
    )
    if response.body and method != "HEAD":
        writer.write(conn.send(h11.Data(data=response.body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
