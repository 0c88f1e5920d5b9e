"""The client side of an HTTP/2 connection: h2 over TLS (ALPN) and h2c.

The ``h2`` library keeps the protocol's state (frames, HPACK, windows); this
Protocol feeds it the socket's bytes and acts on its events. Each stream becomes
an ``Exchange`` through ``H2Stream``, so routing, policies, balancing and retries
are the HTTP/1.1 ones, and the servers are reached over the same pooled
HTTP/1.1 connections.

Abuse is bounded per connection: streams beyond ``max_concurrent_streams`` are
refused, header lists beyond ``max_header_list_size`` (HPACK bombs) and runs of
CONTINUATION frames close the connection, and resets (rapid reset,
CVE-2023-44487), refused streams and control frames (PING, SETTINGS, PRIORITY,
empty DATA) are counted per ``flood_window``: past their budget the connection
gets GOAWAY ENHANCE_YOUR_CALM and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from maitred.proxy.client_identity import ClientIdentity
from maitred.proxy.deadline import Deadline
from maitred.proxy.h2_connection import ServerH2Connection
from maitred.proxy.h2_stream import H2Stream, StreamTransport
from maitred.proxy.http1 import ClientConnection, DataPlane

if TYPE_CHECKING:
    from maitred.config.http2_settings import Http2Settings
    from maitred.proxy.routing import ListenerSlot
    from maitred.proxy.upstream import UpstreamConnection

log = logging.getLogger("maitred.http2")

#: What an HTTP/2 client sends first (RFC 9113 section 3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The largest window HTTP/2 allows; also the largest stream id.
MAX_WINDOW: Final = 2**31 - 1
#: How long a graceful GOAWAY waits for the PING that follows it to come back
#: before naming the last stream (RFC 9113 section 6.8), when the client is slow.
GOAWAY_ROUND_TRIP_LIMIT: Final = 1.0
#: After a GOAWAY that ends a connection, how long bytes still arriving are read and
#: dropped before closing (closing with unread bytes resets the connection, and the
#: reset can destroy the GOAWAY before the client reads it).
LINGER_SECONDS: Final = 2.0
GOAWAY_PING: Final = b"maitredG"


class Http2Connection(ClientIdentity, asyncio.Protocol):
    """One client's HTTP/2 connection."""

    def __init__(self, plane: DataPlane, slot: ListenerSlot) -> None:
        self.plane = plane
        self.slot = slot
        self.loop = plane.loop
        self.settings: Http2Settings = slot.runtime.http2
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.client_ip_bytes = b""
        self.client_port = 0
        self.local_address: tuple[str, int] = ("", 0)
        self.streams: dict[int, H2Stream] = {}
        self.spare_transports: list[StreamTransport] = []
        self.write_paused = False
        #: GOAWAY sent: streams above ``last_stream_id`` are refused, and the
        #: connection closes once the others are answered.
        self.closing = False
        self.last_stream_id = MAX_WINDOW
        #: A graceful GOAWAY (last stream 2^31-1) is out and its PING is awaited.
        self.goaway_pending = False
        self.goaway_timer: asyncio.TimerHandle | None = None
        #: A GOAWAY ended the connection: read and drop until it closes.
        self.lingering = False
        self.private_upstreams: list[UpstreamConnection] | None = None
        self.idle = Deadline(self.loop, self, Http2Connection._idle_timed_out)
        #: Frames are written once per event-loop turn: True while data_received
        #: runs (it writes at its end) or once a write is scheduled.
        self.flush_pending = False
        # Flood accounting: counts within the current window, and its end.
        self.resets = 0
        self.control_frames = 0
        self.window_ends = 0.0
        self.h2 = self._new_state_machine(self.settings)

    @staticmethod
    def _new_state_machine(settings: Http2Settings) -> ServerH2Connection:
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # Request header blocks are checked by H2Stream.start in the same pass
            # that builds the HTTP/1.1 head (h2's checks walk each field several
            # times); answers are built here from checked parts.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        state = ServerH2Connection(config, settings.max_concurrent_streams)
        codes = h2.settings.SettingCodes
        state.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                codes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
                codes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
                codes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
                codes.ENABLE_PUSH: 0,
            },
        )
        state.decoder.max_header_list_size = settings.max_header_list_size
        return state

    # -- connection lifecycle ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.start(transport, b"")

    def start(
        self, transport: asyncio.BaseTransport, received: bytes, counted: bool = False
    ) -> None:
        """Take over ``transport`` (fresh, or from an HTTP/1.1 connection that saw
        the h2c preface and ``counted`` it open); ``received`` holds bytes already
        read from it."""
        self.transport = transport  # type: ignore[assignment]
        if not self.client_ip:
            self.identify_peer(transport)
        self.plane.connections.add(self)
        if not counted and not self._count_open():
            return
        state = self.h2
        state.initiate_connection()
        # The connection window starts at 64 KiB whatever the settings say: open it
        # to one stream window per allowed stream (each stream is bounded by its own).
        settings = self.settings
        wanted = min(MAX_WINDOW, settings.initial_window_size * settings.max_concurrent_streams)
        if wanted > 65535:
            state.increment_flow_control_window(wanted - 65535)
        self.flush()
        self._arm_idle()
        if self.plane.stopping:
            self.close_when_idle()
        if received:
            self.data_received(received)

    def _count_open(self) -> bool:
        """Count the connection on its listener; False (and closed) beyond the limits."""
        self.plane.accepted += 1
        if not self.slot.admit(self.client_ip):
            log.warning("refusing a connection from %s: connection limit reached", self.client_ip)
            self.closing = True
            if self.transport is not None:
                self.transport.abort()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.slot.release(self.client_ip)
        self.transport = None
        self.closing = True
        self.idle.cancel()
        if self.goaway_timer is not None:
            self.goaway_timer.cancel()
            self.goaway_timer = None
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.forget()
        self.spare_transports.clear()
        for upstream in self.private_upstreams or ():
            upstream.close()
        self.plane.forget(self)

    def close_when_idle(self) -> None:
        """Graceful stop or reload: GOAWAY now, close once the open streams are answered.

        In two steps (RFC 9113 section 6.8): a first GOAWAY names stream 2^31-1,
        so streams the client opens while it travels are still served; a PING
        follows, and once it comes back (one round trip: the client has seen the
        GOAWAY and opens no more) a second GOAWAY names the last stream read.
        """
        if self.transport is None:
            return
        if not self.closing:
            self.closing = True
            self._write_goaway(MAX_WINDOW)
            self.goaway_pending = True
            self.h2.ping(GOAWAY_PING)
            self.flush()
            self.goaway_timer = self.loop.call_later(GOAWAY_ROUND_TRIP_LIMIT, self._final_goaway)
        elif not self.streams and not self.goaway_pending:
            self.transport.close()

    def _final_goaway(self) -> None:
        if self.goaway_timer is not None:
            self.goaway_timer.cancel()
            self.goaway_timer = None
        if not self.goaway_pending or self.transport is None:
            return
        self.goaway_pending = False
        self._write_goaway(self.h2.highest_inbound_stream_id)
        if not self.streams:
            self.transport.close()

    def _write_goaway(self, last_stream_id: int) -> None:
        """Written by hand: h2 would refuse to send anything after its own GOAWAY,
        and the open streams still have answers to send."""
        assert self.transport is not None
        self.last_stream_id = last_stream_id
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = last_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        self.flush()  # what h2 holds goes first
        self.transport.write(goaway.serialize())

    def _close_abuser(self, why: str) -> None:
        log.warning("closing the HTTP/2 connection of %s: %s", self.client_ip, why)
        self._terminate(ErrorCodes.ENHANCE_YOUR_CALM)

    def _terminate(self, code: ErrorCodes) -> None:
        transport = self.transport
        if transport is None:
            return
        # Already closed on h2's side (a protocol error): its GOAWAY is queued.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(error_code=code)
        data = self.h2.data_to_send()
        if data:
            transport.write(data)
        self.closing = True
        self.lingering = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.forget()
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def _arm_idle(self) -> None:
        self.idle.arm(self.slot.runtime.idle_timeout)

    def _idle_timed_out(self) -> None:
        if self.streams or self.transport is None:
            return
        if not self.closing:
            # Idle for a whole timeout: no request is racing this GOAWAY.
            self.closing = True
            self._write_goaway(self.h2.highest_inbound_stream_id)
        self.transport.close()

    # -- reading ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.lingering:
            return
        self.slot.bytes_in += len(data)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.DenialOfServiceError as error:
            self._close_abuser(str(error))
            return
        except h2.exceptions.ProtocolError as error:
            log.info("HTTP/2 protocol error from %s: %s", self.client_ip, error)
            self._terminate(ErrorCodes.PROTOCOL_ERROR)
            return
        # What the events produce (answers the balancer gives itself, window
        # updates, SETTINGS and PING acks) leaves in one write at the end.
        already_scheduled = self.flush_pending
        self.flush_pending = True
        for event in events:
            self._dispatch(event)
            if self.transport is None:
                return
        if not already_scheduled:
            self.flush_pending = False
            self.flush()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            length = event.flow_controlled_length or 0
            if not event.data and not event.stream_ended:
                self._count_control("empty DATA frames")
            if stream is None:
                # Reset or answered meanwhile: its window still has to be given back.
                if length:
                    self.h2.acknowledge_received_data(length, event.stream_id)
                return
            stream.receive_body(event.data or b"", length)
        elif isinstance(event, h2.events.RequestReceived):
            self._new_stream(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.end_request()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.flush()
            else:
                self._flush_all()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream.forget()
            if event.remote_reset:
                self._count_reset()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._count_control("SETTINGS frames")
            self._flush_all()  # the initial window may have grown
        elif isinstance(event, (h2.events.PingReceived, h2.events.PriorityUpdated)):
            self._count_control("PING and PRIORITY frames")
        elif isinstance(event, h2.events.PingAckReceived):
            if self.goaway_pending and event.ping_data == GOAWAY_PING:
                self._final_goaway()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # The client leaves: answer what it asked, accept nothing new.
            self.closing = True
            self.last_stream_id = min(self.last_stream_id, event.last_stream_id or 0)
            if not self.streams and self.transport is not None:
                self.flush()
                self.transport.close()
        elif isinstance(event, h2.events.UnknownFrameReceived):
            self._count_control("unknown frames")

    def _new_stream(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        assert stream_id is not None
        if self.closing and stream_id > self.last_stream_id:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self.settings.max_concurrent_streams:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self._count_reset()
            return
        self.idle.disarm()
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        ended = event.stream_ended is not None
        if ended:
            stream.request_ended = True
        if not stream.start(event.headers or (), ended, self.loop.time()):
            # Malformed (RFC 9113 section 8.1.1): a stream error, and it counts
            # against the client's reset budget like any other refused stream.
            self.streams.pop(stream_id, None)
            stream.forget()
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            self._count_reset()
            self._after_stream()

    def _count_reset(self) -> None:
        self._roll_window()
        self.resets += 1
        if self.resets > self.settings.max_resets:
            self._close_abuser(f"more than {self.settings.max_resets} stream resets")

    def _count_control(self, what: str) -> None:
        self._roll_window()
        self.control_frames += 1
        if self.control_frames > self.settings.max_control_frames:
            self._close_abuser(f"too many {what}")

    def _roll_window(self) -> None:
        now = self.loop.time()
        if now >= self.window_ends:
            self.window_ends = now + self.settings.flood_window
            self.resets = 0
            self.control_frames = 0

    # -- writing ----------------------------------------------------------------------

    def write_out(self) -> None:
        """Frames are waiting in h2: write them at the end of this event-loop turn,
        together with whatever other streams produce meanwhile (one TLS record
        and one syscall instead of one per answer)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_pending = False
        self.flush()

    def flush(self) -> None:
        """Write what h2 holds now."""
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.lingering:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in self.streams.values():
            stream.adjust_upstream()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.adjust_upstream()

    def acknowledge(self, stream: H2Stream, length: int) -> None:
        if length and not stream.closed:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.acknowledge_received_data(length, stream.stream_id)

    def send_headers(self, stream: H2Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self.h2.send_answer_headers(stream.stream_id, headers, end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._drop(stream)
        else:
            self.write_out()

    def send_body(self, stream: H2Stream) -> None:
        """Send ``stream``'s queued answer as far as the windows allow."""
        if stream.end_sent or stream.closed:
            return
        state = self.h2
        stream_id = stream.stream_id
        outbound = stream.outbound
        try:
            while outbound:
                room = min(
                    state.local_flow_control_window(stream_id), state.max_outbound_frame_size
                )
                if room <= 0:
                    return
                piece = outbound[0]
                if len(piece) <= room:
                    outbound.popleft()
                else:
                    view = memoryview(piece)
                    outbound[0] = view[room:]
                    piece = view[:room]
                stream.outbound_size -= len(piece)
                last = not outbound and stream.response_ended
                state.send_answer_data(stream_id, piece, last)
                if last:
                    stream.end_sent = True
                    return
            if stream.response_ended and stream.head_sent:
                state.send_answer_data(stream_id, b"", True)
                stream.end_sent = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._drop(stream)

    def _flush_all(self) -> None:
        for stream in list(self.streams.values()):
            if stream.outbound or (stream.response_ended and not stream.end_sent):
                stream.flush()

    def stream_finished(self, stream: H2Stream) -> None:
        """The whole answer is sent: the stream is over for maitred."""
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if not stream.request_ended:
            # Answered before the request ended: the rest is not wanted (RFC 9113 8.1).
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
        stream.forget()
        self._after_stream()

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream.stream_id, code)
        stream.forget()
        self.write_out()
        self._after_stream()

    def _drop(self, stream: H2Stream) -> None:
        if self.streams.pop(stream.stream_id, None) is not None:
            stream.forget()
            self._after_stream()

    def _after_stream(self) -> None:
        if self.streams:
            return
        if self.closing:
            if self.transport is not None and not self.goaway_pending:
                self.flush()
                self.transport.close()
        else:
            self._arm_idle()


def switch_to_http2(
    transport: asyncio.BaseTransport, plane: DataPlane, slot: ListenerSlot, received: bytes
) -> Http2Connection:
    """Hand ``transport`` to a new HTTP/2 connection (after ALPN chose h2, or after
    the h2c preface); ``received`` are the bytes read from it so far."""
    connection = Http2Connection(plane, slot)
    transport.set_protocol(connection)
    connection.start(transport, received)
    return connection


class H2cCapableConnection(ClientConnection):
    """A plain listener's connection that becomes HTTP/2 when it starts with the
    h2c preface (prior knowledge, RFC 9113 section 3.3) and stays HTTP/1.1 otherwise."""

    __slots__ = ("sniffed",)

    def __init__(self, plane: DataPlane, slot: ListenerSlot) -> None:
        super().__init__(plane, slot)
        #: Bytes read while they could still be the start of the preface.
        self.sniffed: bytes | None = b""

    def data_received(self, data: bytes) -> None:
        sniffed = self.sniffed
        if sniffed is None or self.proxy_preface is not None:
            super().data_received(data)
            return
        sniffed += data
        if PREFACE.startswith(sniffed[: len(PREFACE)]) and self.slot.runtime.http2.h2c:
            if len(sniffed) < len(PREFACE):
                self.sniffed = sniffed
                return
            self.sniffed = None
            transport = self.transport
            if transport is None:
                return
            self._hand_over(transport, sniffed)
            return
        self.sniffed = None
        super().data_received(sniffed)

    def _hand_over(self, transport: asyncio.Transport, received: bytes) -> None:
        # This HTTP/1.1 side goes away without a trace; the counts move with the socket.
        self.deadline.cancel()
        self.plane.connections.discard(self)
        connection = Http2Connection(self.plane, self.slot)
        connection.client_ip = self.client_ip
        connection.client_ip_bytes = self.client_ip_bytes
        connection.client_port = self.client_port
        connection.local_address = self.local_address
        transport.set_protocol(connection)
        connection.start(transport, received, counted=True)


def close_http2_connections(plane: DataPlane, slot: ListenerSlot | None = None) -> int:
    """GOAWAY to every HTTP/2 connection (of ``slot``'s listener, when given): open
    streams are answered, new ones go to a new connection. How many were told."""
    told = 0
    for connection in list(plane.connections):
        if isinstance(connection, Http2Connection) and (slot is None or connection.slot is slot):
            connection.close_when_idle()
            told += 1
    return told
