"""The admin listener (control side): health and readiness for now.

Not on the hot path, so it uses asyncio streams and h11-free hand parsing of
the tiny requests orchestrators and keepalived send.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

log = logging.getLogger("maitred.admin")

MAX_ADMIN_HEAD = 16384


class AdminServer:
    def __init__(self, is_ready: Callable[[], tuple[bool, dict[str, object]]]) -> None:
        self._is_ready = is_ready
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port)
        log.info("admin listening on %s", ", ".join(self.addresses()))

    def addresses(self) -> list[str]:
        if self._server is None:
            return []
        return ["{}:{}".format(*sock.getsockname()[:2]) for sock in self._server.sockets]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    return
                if len(head) > MAX_ADMIN_HEAD:
                    return
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    writer.write(_response(400, {"error": "malformed request line"}, close=True))
                    return
                method, target, _ = parts
                path = target.split("?", 1)[0]
                close = b"connection: close" in head.lower()
                status, body = self._route(method, path)
                writer.write(_response(status, body, close=close))
                await writer.drain()
                if close:
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _route(self, method: str, path: str) -> tuple[int, dict[str, object]]:
        if method not in ("GET", "HEAD"):
            return 405, {"error": f"method {method} not allowed"}
        if path == "/healthz":
            return 200, {"status": "ok"}
        if path == "/readyz":
            ready, detail = self._is_ready()
            return (200 if ready else 503), {"ready": ready, **detail}
        return 404, {"error": f"no such path: {path}"}


REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


def _response(status: int, body: dict[str, object], *, close: bool) -> bytes:
    payload = json.dumps(body).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode() + payload
