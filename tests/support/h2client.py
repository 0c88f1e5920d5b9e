"""A blocking HTTP/2 test client on the ``h2`` library, with access to raw frames.

httpx covers the well-behaved client; this one lets tests hold windows shut,
reset streams, flood pings and write hand-made frames.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

DEFAULT_TIMEOUT = 10.0


def h2c_config(addresses: Iterable[str], max_streams: int | None = None) -> str:
    """A balancer with one h2c listener over pool ``web`` of ``addresses``."""
    servers = "".join(f"      - {{address: {address}}}\n" for address in addresses)
    limit = "" if max_streams is None else f", max_concurrent_streams: {max_streams}"
    return f"""
drain_timeout: 20s
listeners:
  - name: h2c
    bind: 127.0.0.1:0
    pool: web
    http2: {{h2c: true{limit}}}
pools:
  web:
    servers:
{servers}"""


@dataclass
class StreamResult:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset_code: int | None = None
    #: Header lists of interim answers (1xx), in order.
    informational: list[list[tuple[bytes, bytes]]] = field(default_factory=list)

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None


class _GracefulClientConnection(h2.connection.H2Connection):
    """h2 closes its side on any GOAWAY; a graceful one (NO_ERROR) still lets the
    streams it covers finish (RFC 9113 section 6.8), which the tests check."""

    def _receive_goaway_frame(self, frame: Any) -> Any:
        result = super()._receive_goaway_frame(frame)
        if frame.error_code == h2.errors.ErrorCodes.NO_ERROR:
            self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return result


class RawH2:
    """One HTTP/2 connection over TCP (h2c) or TLS (ALPN h2)."""

    def __init__(
        self,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str = "example.test",
        auto_ack: bool = True,
        window: int | None = None,
        validate: bool = True,
    ) -> None:
        """``validate=False`` lets the client send header lists h2 would refuse
        to send (malformed requests, for the server to refuse)."""
        raw = socket.create_connection(("127.0.0.1", port), timeout=DEFAULT_TIMEOUT)
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            self.sock: socket.socket = tls.wrap_socket(raw, server_hostname=server_hostname)
            assert self.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        else:
            self.sock = raw
        self.authority = server_hostname.encode()
        self.scheme = b"https" if tls is not None else b"http"
        self.conn = _GracefulClientConnection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=validate,
                normalize_outbound_headers=validate,
            )
        )
        #: Acknowledge DATA as it arrives (False: leave the windows shut).
        self.auto_ack = auto_ack
        self.conn.initiate_connection()
        if window is not None:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.streams: dict[int, StreamResult] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        #: Every GOAWAY received, in order (``terminated`` is the last one).
        self.goaways: list[h2.events.ConnectionTerminated] = []
        self.closed = False
        self.unacknowledged: dict[int, int] = {}
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        authority: bytes | None = None,
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", self.scheme),
            (b":authority", authority or self.authority),
            (b":path", path.encode()),
        ] + [(name.encode(), value.encode()) for name, value in headers]
        self.conn.send_headers(stream_id, fields, end_stream=body is None)
        self.streams[stream_id] = StreamResult()
        if body is not None:
            self.send_body(stream_id, body)
        self.flush()
        return stream_id

    def send_body(self, stream_id: int, body: bytes) -> None:
        """Send ``body`` and end the stream, waiting for window as needed."""
        view = memoryview(body)
        while view:
            room = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if room <= 0:
                self.pump()
                continue
            self.conn.send_data(stream_id, view[:room].tobytes())
            view = view[room:]
            self.flush()
        self.conn.end_stream(stream_id)
        self.flush()

    def pump(self, timeout: float = DEFAULT_TIMEOUT) -> list[h2.events.Event]:
        """Read once and handle what arrived; [] when the connection closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        for event in events:
            self._handle(event)
        try:
            self.flush()
        except OSError:
            self.closed = True
        return events

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.InformationalResponseReceived):
            stream_id = event.stream_id
            assert stream_id is not None
            self.streams[stream_id].informational.append(list(event.headers))
        elif isinstance(event, h2.events.ResponseReceived):
            self.streams[event.stream_id].headers = list(event.headers)  # type: ignore[arg-type,index]
        elif isinstance(event, h2.events.DataReceived):
            stream_id = event.stream_id
            assert stream_id is not None
            self.streams[stream_id].body += event.data or b""
            length = event.flow_controlled_length or 0
            if self.auto_ack:
                self.conn.acknowledge_received_data(length, stream_id)
            else:
                self.unacknowledged[stream_id] = self.unacknowledged.get(stream_id, 0) + length
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].ended = True  # type: ignore[index]
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.streams:
                self.streams[event.stream_id].reset_code = int(event.error_code or 0)  # type: ignore[index]
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
            self.goaways.append(event)

    def round_trip(self) -> None:
        """PING and wait for its ACK: the server has read everything sent before."""
        self.conn.ping(b"roundtrp")
        self.flush()
        acked: list[h2.events.Event] = []
        while not acked:
            if self.closed:
                raise AssertionError("the connection closed first")
            acked += [e for e in self.pump() if isinstance(e, h2.events.PingAckReceived)]

    def acknowledge(self, stream_id: int) -> None:
        length = self.unacknowledged.pop(stream_id, 0)
        if length:
            self.conn.acknowledge_received_data(length, stream_id)
            self.flush()

    def wait(self, condition: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.closed:
                raise AssertionError("the connection closed first")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out")
            try:
                self.pump(remaining)
            except TimeoutError:
                continue

    def response(self, stream_id: int, timeout: float = DEFAULT_TIMEOUT) -> StreamResult:
        self.wait(lambda: self.streams[stream_id].done, timeout)
        return self.streams[stream_id]

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Read (answering nothing) until the server closes the connection."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("the server kept the connection open")
            try:
                self.pump(remaining)
            except TimeoutError:
                continue
            except h2.exceptions.ProtocolError:
                continue  # frames after the server's GOAWAY

    def close(self) -> None:
        self.sock.close()
