"""maitred's HTTP/1.1 data plane in memory, for fuzzing: no sockets, no timers firing.

Built as bench/hotpath_bench.py builds it: a real ``Worker`` applies a real
configuration, then a ``ClientConnection`` and its ``UpstreamConnection``\\ s get
in-memory transports. ``InMemoryProxy.run`` feeds client bytes exactly as an
event loop would (in the given pieces, never while reading is paused, never
after a close) and returns what the client was answered and what each server
connection received.

Server connections are opened on demand by ``MemoryServerConnections`` (only
the socket part is replaced: completing on a later loop turn, as a real connect)
or handed out idle before the request arrives (as a pooled one), so both paths
of the forwarding code run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import h11

from maitred.config import parse_config_text
from maitred.control.worker import Worker
from maitred.proxy.http1 import ClientConnection
from maitred.proxy.routing import ListenerSlot
from maitred.proxy.upstream import ServerConnections, UpstreamConnection

MAX_BODY_SIZE = 1 << 16

CONFIG = f"""
listeners:
  - name: public
    bind: "127.0.0.1:0"
    pool: web
    limits: {{max_body_size: {MAX_BODY_SIZE}}}
pools:
  web:
    servers: [{{address: "127.0.0.1:9"}}]
    outlier_detection: {{enabled: false}}
    retries: {{attempts: 0}}
"""

CANNED_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RecordingTransport:
    """Enough of asyncio.Transport for the protocols; keeps what they write."""

    def __init__(self, peer: str = "127.0.0.1") -> None:
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.paused = False
        self.peer = peer

    def write(self, data: bytes) -> None:
        if not (self.closed or self.aborted):
            self.data += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default


class MemoryServerConnections(ServerConnections):
    """Server connections opened in memory; each one's transport is recorded.

    Only the opening itself is replaced: ``connect`` and the pool are maitred's.
    An opening completes on the next loop turn, as a real connect would.
    """

    def __init__(self, base: ServerConnections) -> None:
        super().__init__(
            base.loop, base.writes, base.host, base.port, base.max_idle, base.idle_timeout
        )
        self.made: list[tuple[UpstreamConnection, RecordingTransport]] = []

    def open(self) -> UpstreamConnection:
        conn = UpstreamConnection(self)
        transport = RecordingTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        self.made.append((conn, transport))
        return conn

    async def _connect(self, timeout: float) -> UpstreamConnection:
        await asyncio.sleep(0)
        return self.open()


@dataclass
class Outcome:
    answered: bytes  # everything written to the client
    client_closed: bool
    forwarded: list[bytes] = field(default_factory=list)  # per server connection, in order
    #: The client connection still held a request parser when the conversation ended.
    parser_held: bool = False

    @property
    def all_forwarded(self) -> bytes:
        return b"".join(self.forwarded)


class InMemoryProxy:
    """One Worker (one event loop) reused for many short in-memory conversations."""

    def __init__(self, config_text: str = CONFIG) -> None:
        self.loop = asyncio.new_event_loop()
        self.worker = Worker(self.loop)
        self.loop.run_until_complete(self.worker.apply(parse_config_text(config_text)))
        slot = self.worker.listeners["public"].slot
        assert isinstance(slot, ListenerSlot)
        self.slot = slot
        self.pool = self.worker.pools["web"]
        self.server = self.pool.balancer.servers[0]
        self.original = self.pool.connections[self.server]

    def close(self) -> None:
        self.worker.stop_listening()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    def run(
        self,
        pieces: list[bytes],
        *,
        pooled: bool = True,
        answer_requests: bool = False,
        server_pieces: list[bytes] | None = None,
        server_closes: bool = False,
    ) -> Outcome:
        """Feed ``pieces`` to a new client connection.

        ``pooled``: an idle server connection waits in the pool (else one is opened,
        completing on a later loop turn). ``answer_requests``: every complete request a
        server connection receives is answered ``200`` (so pipelined ones proceed).
        ``server_pieces``: fed, piece by piece, as the first server connection's
        answer once the client's bytes are in; ``server_closes``: then the server
        closes that connection.
        """
        servers = MemoryServerConnections(self.original)
        self.pool.connections[self.server] = servers
        if pooled:
            servers.give_back(servers.open(), self.loop.time())
        client = ClientConnection(self.worker.plane, self.slot)
        transport = RecordingTransport()
        client.connection_made(transport)  # type: ignore[arg-type]
        answered: dict[int, int] = {}
        pending = list(pieces)
        try:
            for _ in range(len(pieces) * 4 + 16):  # bounded: each turn delivers or answers
                progressed = False
                while pending and not transport.paused and not transport.is_closing():
                    client.data_received(pending.pop(0))
                    self._turn()
                    progressed = True
                if answer_requests:
                    progressed |= self._answer_complete_requests(servers, answered)
                if not progressed:
                    break
            if server_pieces is not None and servers.made:
                conn, server_transport = servers.made[0]
                for piece in server_pieces:
                    if conn.transport is None or server_transport.is_closing():
                        break
                    conn.data_received(piece)
                    self._turn()
                if server_closes and conn.transport is not None:
                    server_transport.close()
                    conn.connection_lost(None)
                    self._turn()
            return Outcome(
                answered=bytes(transport.data),
                client_closed=transport.is_closing(),
                forwarded=[bytes(t.data) for _conn, t in servers.made],
                parser_held=client.reader is not None,
            )
        finally:
            client.connection_lost(None)
            for conn, _t in servers.made:
                if conn.transport is not None:
                    conn.connection_lost(None)
            self._turn()
            self.pool.connections[self.server] = self.original

    def _answer_complete_requests(
        self, servers: MemoryServerConnections, answered: dict[int, int]
    ) -> bool:
        progressed = False
        for index, (conn, transport) in enumerate(servers.made):
            if conn.transport is None or transport.is_closing():
                continue
            complete = count_complete_requests(bytes(transport.data))
            for _ in range(complete - answered.get(index, 0)):
                conn.data_received(CANNED_ANSWER)
                self._turn()
                progressed = True
            answered[index] = complete
        return progressed

    def _turn(self) -> None:
        """Run what is ready on the loop (completed connects), a few rounds deep."""
        for _ in range(3):
            self.loop.run_until_complete(asyncio.sleep(0))


def count_complete_requests(received: bytes) -> int:
    """How many complete requests h11 finds in what a server connection received."""
    if not received:
        return 0  # (h11 reads empty data as the peer's close)
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(received)
    complete = 0
    try:
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return complete
            if isinstance(event, h11.EndOfMessage):
                complete += 1
                parser.send(h11.Response(status_code=200, headers=[]))
                parser.send(h11.EndOfMessage())
                parser.start_next_cycle()
    except h11.ProtocolError:
        return complete
