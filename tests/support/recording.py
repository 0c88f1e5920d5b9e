"""A backend that records every byte it receives, for checking what a proxy forwards.

``RecordingServer`` is a raw-socket HTTP/1.1 server in one thread. Each
connection's bytes are kept verbatim (``RecordedConnection.raw``) and parsed
with h11, the reference parser: every complete request is answered with a
fixed ``200 ok`` and recorded (``RecordedRequest``). Anything h11 refuses is
recorded as the connection's ``error`` and the connection is closed, so a
malformed forward shows up in the records instead of passing silently.

Tests synchronize on its records (``wait_for``), never on sleeps. ``drain``
makes the server thread read every byte already delivered to its sockets
before returning, so "nothing was forwarded" can be asserted after a barrier.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

import h11

ANSWER_BODY = b"ok"
DEFAULT_TIMEOUT = 10.0


@dataclass
class RecordedRequest:
    connection: int  # index into RecordingServer.connections
    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]  # names as received, in order
    body: bytes = b""
    complete: bool = False  # the request's end (Content-Length / last chunk) arrived

    def header_values(self, name: bytes) -> list[bytes]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


@dataclass
class RecordedConnection:
    index: int
    raw: bytearray = field(default_factory=bytearray)
    closed: bool = False
    error: str | None = None  # why h11 refused what arrived, if it did


class _Live:
    """Server-side state of one accepted connection (owned by the server thread)."""

    def __init__(self, sock: socket.socket, record: RecordedConnection) -> None:
        self.sock = sock
        self.record = record
        self.parser = h11.Connection(h11.SERVER)
        self.current: RecordedRequest | None = None
        self.waiting: list[RecordedRequest] = []  # complete, answer held


class RecordingServer:
    """Records what arrives; answers each complete request with ``200 ok``.

    ``send_continue``: answer ``Expect: 100-continue`` with an interim 100 before
    reading the body, as an origin server would.
    """

    def __init__(self, host: str = "127.0.0.1", *, send_continue: bool = True) -> None:
        self.send_continue = send_continue
        self._listener = socket.create_server((host, 0), backlog=128)
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self.connections: list[RecordedConnection] = []
        self.requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._hold = False
        self._live: dict[int, _Live] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._commands: list[Callable[[], None]] = []
        self._stopping = False
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_reader, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="recording-server", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- what tests use ----------------------------------------------------------

    def wait_for(
        self, predicate: Callable[[RecordingServer], bool], timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """Block until ``predicate(self)`` holds (checked after every event)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"recording server: timed out; records: {self.summary()}")
                self._cond.wait(remaining)

    def wait_for_requests(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.wait_for(lambda server: len(server.complete_requests()) >= count, timeout)

    def complete_requests(self) -> list[RecordedRequest]:
        with self._cond:
            return [request for request in self.requests if request.complete]

    def raw_bytes(self) -> bytes:
        """Every byte received, connection after connection, in accept order."""
        with self._cond:
            return b"".join(bytes(conn.raw) for conn in self.connections)

    def errors(self) -> list[str]:
        with self._cond:
            return [conn.error for conn in self.connections if conn.error is not None]

    def partial_requests_closed(self) -> bool:
        """True when every connection holding an unfinished request has been closed."""
        with self._cond:
            return all(
                self.connections[request.connection].closed
                for request in self.requests
                if not request.complete
            )

    def drain(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Read whatever has already arrived on every socket, then return."""
        done = threading.Event()

        def read_then_signal() -> None:
            self._read_everything_ready()
            done.set()

        self._call_in_thread(read_then_signal)
        if not done.wait(timeout):
            raise AssertionError("recording server did not drain in time")

    def reset(self) -> None:
        """Forget the records (open connections stay open and keep being recorded)."""
        with self._cond:
            for conn in self.connections:
                conn.raw.clear()
                conn.error = None
            self.requests = [
                request
                for request in self.requests
                if not request.complete and not self.connections[request.connection].closed
            ]

    def hold_answers(self) -> None:
        """Complete requests are recorded but not answered until ``release_answers``."""
        with self._cond:
            self._hold = True

    def release_answers(self) -> None:
        def release() -> None:
            self._hold = False
            for live in list(self._live.values()):
                waiting, live.waiting = live.waiting, []
                for _request in waiting:
                    self._answer(live)

        self._call_in_thread(release)

    def summary(self) -> str:
        lines = []
        for conn in self.connections:
            state = "closed" if conn.closed else "open"
            lines.append(f"conn {conn.index} ({state}, error={conn.error}): {bytes(conn.raw)!r}")
        return "\n".join(lines) or "(no connection)"

    def close(self) -> None:
        self._call_in_thread(self._stop)
        self._thread.join(5)
        self._wake_writer.close()

    def __enter__(self) -> RecordingServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- the server thread -------------------------------------------------------

    def _call_in_thread(self, command: Callable[[], None]) -> None:
        with self._cond:
            self._commands.append(command)
        with contextlib.suppress(OSError):  # already stopped
            self._wake_writer.send(b"x")

    def _serve(self) -> None:
        while not self._stopping:
            for key, _events in self._selector.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._run_commands()
                else:
                    self._receive(key.data)
        for live in list(self._live.values()):
            live.sock.close()
        self._listener.close()
        self._wake_reader.close()
        self._selector.close()

    def _run_commands(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._cond:
            commands, self._commands = self._commands, []
        for command in commands:
            command()

    def _stop(self) -> None:
        self._stopping = True

    def _accept(self) -> None:
        while True:
            try:
                sock, _peer = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            with self._cond:
                record = RecordedConnection(len(self.connections))
                self.connections.append(record)
                self._cond.notify_all()
            live = _Live(sock, record)
            self._live[record.index] = live
            self._selector.register(sock, selectors.EVENT_READ, live)

    def _read_everything_ready(self) -> None:
        self._accept()
        for live in list(self._live.values()):
            self._receive(live)

    def _receive(self, live: _Live) -> None:
        while live.record.index in self._live:
            try:
                data = live.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                # Not fed to h11: a request cut short by the peer is recorded as
                # incomplete, not as a protocol error.
                self._forget(live)
                return
            with self._cond:
                live.record.raw += data
                self._cond.notify_all()
            self._feed(live, data)

    def _feed(self, live: _Live, data: bytes) -> None:
        if live.record.error is None:
            live.parser.receive_data(data)
            self._next_events(live)

    def _on_event(self, live: _Live, event: object) -> None:
        if isinstance(event, h11.Request):
            request = RecordedRequest(
                connection=live.record.index,
                method=event.method,
                target=event.target,
                http_version=event.http_version,
                headers=list(event.headers.raw_items()),
            )
            live.current = request
            with self._cond:
                self.requests.append(request)
                self._cond.notify_all()
            if self.send_continue and live.parser.they_are_waiting_for_100_continue:
                live.sock.sendall(
                    live.parser.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                )
        elif isinstance(event, h11.Data) and live.current is not None:
            with self._cond:
                live.current.body += bytes(event.data)
                self._cond.notify_all()
        elif isinstance(event, h11.EndOfMessage) and live.current is not None:
            request = live.current
            live.current = None
            with self._cond:
                request.complete = True
                held = self._hold
                self._cond.notify_all()
            if held:
                live.waiting.append(request)
            else:
                self._answer(live)

    def _answer(self, live: _Live) -> None:
        if live.record.index not in self._live:
            return
        parser = live.parser
        out = parser.send(
            h11.Response(status_code=200, headers=[("Content-Length", str(len(ANSWER_BODY)))])
        )
        out = (out or b"") + (parser.send(h11.Data(data=ANSWER_BODY)) or b"")
        out += parser.send(h11.EndOfMessage()) or b""
        try:
            live.sock.sendall(out)
        except OSError:
            self._forget(live)
            return
        if parser.our_state is h11.MUST_CLOSE or parser.their_state is h11.MUST_CLOSE:
            self._forget(live)
            return
        if parser.our_state is h11.DONE and parser.their_state is h11.DONE:
            parser.start_next_cycle()
            # Requests pipelined behind this one are already buffered in the parser.
            self._next_events(live)

    def _next_events(self, live: _Live) -> None:
        parser = live.parser
        try:
            while True:
                event = parser.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
                self._on_event(live, event)
                if isinstance(event, h11.ConnectionClosed):
                    return
        except h11.ProtocolError as exc:
            with self._cond:
                live.record.error = f"{type(exc).__name__}: {exc}"
                self._cond.notify_all()
            self._forget(live)

    def _forget(self, live: _Live) -> None:
        if self._live.pop(live.record.index, None) is None:
            return
        self._selector.unregister(live.sock)
        live.sock.close()
        with self._cond:
            live.record.closed = True
            self._cond.notify_all()
