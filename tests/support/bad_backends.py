"""Misbehaving HTTP servers for fault-injection tests, as raw sockets in threads.

``ScriptedServer`` reads each request (head and any Content-Length body) and
acts out the behaviour registered for its path: send raw bytes (garbage,
ambiguous framing, more than announced...), close mid-answer, or hold the
request without answering until the peer gives up. Unknown paths get a good
``200`` answer whose body names the path. ``NeverReadingServer`` accepts
connections and never reads a byte.

Holding waits on the socket itself (the balancer's close wakes it) or on the
server's stop, never on a timer.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

MAX_HEAD = 1 << 20


@dataclass
class Request:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    @property
    def path(self) -> bytes:
        return self.target.split(b"?", 1)[0]


@dataclass
class Peer:
    """The server's side of one connection."""

    sock: socket.socket
    stopped: threading.Event
    buffer: bytearray = field(default_factory=bytearray)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hold(self) -> None:
        """Wait, answering nothing, until the peer closes or the server stops."""
        while not self.stopped.is_set():
            readable, _, _ = select.select([self.sock], [], [])
            if readable:
                try:
                    if not self.sock.recv(65536):
                        return
                except OSError:
                    return

    def read_request(self) -> Request | None:
        """One request, or None when the peer closed first."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD or not self._fill():
                return None
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        line, *header_lines = head.split(b"\r\n")
        method, target, _version = (line.split(b" ", 2) + [b"", b""])[:3]
        headers = []
        for header_line in header_lines:
            name, _, value = header_line.partition(b":")
            headers.append((name, value.strip()))
        length = next(
            (int(value) for name, value in headers if name.lower() == b"content-length"), 0
        )
        while len(self.buffer) < length:
            if not self._fill():
                return None
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return Request(method, target, headers, body)

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except OSError:
            return False
        self.buffer += data
        return bool(data)


# What to do with one request; returns True to keep the connection for the next one.
Behaviour = Callable[[Peer, Request], bool]


def good_answer(peer: Peer, request: Request) -> bool:
    body = b"good " + request.path
    peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
    return True


def send_raw(data: bytes, *, then_close: bool = False) -> Behaviour:
    """Answer with exactly these bytes; keep the connection open unless ``then_close``."""

    def behaviour(peer: Peer, request: Request) -> bool:
        peer.send(data)
        return not then_close

    return behaviour


def send_then_hold(data: bytes) -> Behaviour:
    """Send these bytes, then go quiet with the connection open."""

    def behaviour(peer: Peer, request: Request) -> bool:
        peer.send(data)
        peer.hold()
        return False

    return behaviour


def send_in_two_parts(first: bytes, gate: threading.Event, second: bytes) -> Behaviour:
    """Send ``first``, wait for ``gate`` (the test saw it arrive), send ``second``, hold."""

    def behaviour(peer: Peer, request: Request) -> bool:
        peer.send(first)
        gate.wait(10)
        peer.send(second)
        peer.hold()
        return False

    return behaviour


def send_then_reset(data: bytes) -> Behaviour:
    """Send these bytes (maybe none), then reset the connection (RST, not FIN)."""

    def behaviour(peer: Peer, request: Request) -> bool:
        if data:
            peer.send(data)
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.sock.close()
        return False

    return behaviour


def hold(peer: Peer, request: Request) -> bool:
    """Read the request and never answer."""
    peer.hold()
    return False


class _ThreadedServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self._listener = socket.create_server((host, 0), backlog=128)
        self.host, self.port = self._listener.getsockname()[:2]
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self._accept_thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept_thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _peer = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self.stopped.is_set():
                    sock.close()
                    return
                self.accepted += 1
                self._open.add(sock)
            thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, sock: socket.socket) -> None:
        try:
            self.serve(sock)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(sock)
            sock.close()

    def serve(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes threads blocked on it
        self._accept_thread.join(5)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class ScriptedServer(_ThreadedServer):
    """Acts out ``behaviours[path]`` for each request; ``default`` for other paths."""

    def __init__(self, host: str = "127.0.0.1", default: Behaviour = good_answer) -> None:
        self.behaviours: dict[bytes, Behaviour] = {}
        self.default = default
        super().__init__(host)

    def on(self, path: str, behaviour: Behaviour) -> str:
        """Register ``behaviour`` for ``path``; returns the path."""
        self.behaviours[path.encode()] = behaviour
        return path

    def serve(self, sock: socket.socket) -> None:
        peer = Peer(sock, self.stopped)
        while True:
            request = peer.read_request()
            if request is None:
                return
            behaviour = self.behaviours.get(request.path, self.default)
            if not behaviour(peer, request):
                return


class NeverReadingServer(_ThreadedServer):
    """Accepts connections and never reads from them (until stopped)."""

    def serve(self, sock: socket.socket) -> None:
        self.stopped.wait()
