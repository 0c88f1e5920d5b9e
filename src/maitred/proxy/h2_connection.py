"""h2's connection state, adapted to a server that frames its own answers.

Kept apart from ``http2`` because it subclasses h2's pure-Python
``H2Connection``: this module stays interpreted while the data plane around it
is compiled with mypyc (see setup.py).
"""

from __future__ import annotations

import struct
from typing import Final

import h2.config
import h2.connection
import h2.exceptions
from h2.stream import StreamInputs

from maitred.proxy.h2_hpack import StatelessEncoder

# Frame types and flags (RFC 9113 section 6) for the frames framed by hand.
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
#: A frame's 9-byte head: 24-bit length (as 8 + 16 bits), type, flags, stream id.
_FRAME_HEAD: Final = struct.Struct(">BHBBL")


def frame_head(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return _FRAME_HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


class ServerH2Connection(h2.connection.H2Connection):
    """h2's connection, with the concurrent-stream limit left to maitred and a
    cheaper answer-header encoder.

    h2 treats one stream too many as an error of the whole connection; RFC 9113
    (5.1.2) lets a server refuse just that stream, which ``Http2Connection`` does
    with REFUSED_STREAM once h2 has decoded its header block (HPACK state is per
    connection, so a refused block must still be decoded).

    h2 counts open streams by walking every stream it knows, forgetting the
    closed ones on the way: once per new stream, so 100 concurrent streams cost
    100 steps per request. The walk runs here only once closed streams are as
    many as the allowed open ones, which keeps it at about two steps per stream.
    """

    def __init__(self, config: h2.config.H2Configuration, max_streams: int) -> None:
        super().__init__(config=config)
        self.encoder = StatelessEncoder()  # type: ignore[assignment]
        self.forget_closed_above = 2 * max_streams + 16
        #: Frames to write, in order: h2's own (acks, resets, window updates)
        #: and the answers framed below, body bytes not copied until the write.
        self.outbox: list[bytes | bytearray | memoryview] = []

    @property
    def open_inbound_streams(self) -> int:
        if len(self.streams) > self.forget_closed_above:
            h2.connection.H2Connection.open_inbound_streams.fget(self)  # type: ignore[attr-defined]
        return 0

    # Answers are framed here rather than by h2's send_headers/send_data, which
    # build, flag and serialise a frame object per frame and re-check what
    # maitred built itself. The stream's state machine and both flow-control
    # windows are kept exactly as h2 keeps them, so everything h2 decides from
    # them (closing streams, WINDOW_UPDATE overflow, what a client may still
    # send) is unchanged.

    def _take_h2_frames(self) -> None:
        pending = self._data_to_send
        if pending:
            self.outbox.append(pending)
            self._data_to_send = bytearray()

    def send_answer_headers(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool
    ) -> None:
        """HEADERS (and CONTINUATION) for an answer, or an interim answer."""
        if self.state_machine.state is h2.connection.ConnectionState.CLOSED:
            raise h2.exceptions.ProtocolError("the connection is closed")
        stream = self._get_stream_by_id(stream_id)
        machine = stream.state_machine
        interim = headers[0][1][:1] == b"1"
        machine.process_input(
            StreamInputs.SEND_INFORMATIONAL_HEADERS if interim else StreamInputs.SEND_HEADERS
        )
        flags = 0
        if end:
            machine.process_input(StreamInputs.SEND_END_STREAM)
            flags = END_STREAM
        block = self.encoder.encode(headers)
        self._take_h2_frames()
        outbox = self.outbox
        room = self.max_outbound_frame_size
        if len(block) <= room:
            outbox.append(frame_head(len(block), HEADERS, flags | END_HEADERS, stream_id))
            outbox.append(block)
            return
        kind = HEADERS
        for start in range(0, len(block), room):
            piece = block[start : start + room]
            if start + room >= len(block):
                flags |= END_HEADERS
            outbox.append(frame_head(len(piece), kind, flags, stream_id))
            outbox.append(piece)
            kind, flags = CONTINUATION, 0

    def send_answer_data(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        """One DATA frame; the caller has made sure that the windows allow it."""
        if self.state_machine.state is h2.connection.ConnectionState.CLOSED:
            raise h2.exceptions.ProtocolError("the connection is closed")
        stream = self._get_stream_by_id(stream_id)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_DATA)
        flags = 0
        if end:
            machine.process_input(StreamInputs.SEND_END_STREAM)
            flags = END_STREAM
        size = len(data)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        self._take_h2_frames()
        self.outbox.append(frame_head(size, DATA, flags, stream_id))
        if size:
            self.outbox.append(data)

    def data_to_send(self, amount: int | None = None) -> bytes:
        self._take_h2_frames()
        outbox = self.outbox
        if not outbox:
            return b""
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        if amount is not None and len(data) > amount:
            self.outbox.append(data[amount:])
            data = data[:amount]
        return bytes(data)
