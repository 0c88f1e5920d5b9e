"""The write batch: writes of one loop pass go out together after it, in order.

The batch itself over real loopback sockets on uvloop; then the data plane's
order around it, in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from maitred.proxy.http1 import ClientConnection
from maitred.proxy.write_batch import UNBATCHED_WRITE, WriteBatch
from tests.fuzz.harness import (
    CANNED_ANSWER,
    InMemoryProxy,
    MemoryServerConnections,
    RecordingTransport,
)


class Receiver(asyncio.Protocol):
    """The far end of a connection: keeps what arrives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.arrived = asyncio.Event()
        self.expected = 0

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expected:
            self.arrived.set()

    async def wait_for(self, size: int) -> bytes:
        self.expected = size
        if len(self.data) < size:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)
        return bytes(self.data)


class Connections:
    """Loopback connections: the writing transport and its far end's Receiver."""

    def __init__(self) -> None:
        self.receivers: list[Receiver] = []
        self.accepted = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def open(self) -> tuple[asyncio.Transport, Receiver]:
        loop = asyncio.get_running_loop()
        if self.server is None:
            self.server = await loop.create_server(self._accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.accepted.clear()
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        await asyncio.wait_for(self.accepted.wait(), 5)  # accepted on a later pass
        return transport, self.receivers[-1]

    def _accept(self) -> Receiver:
        receiver = Receiver()
        self.receivers.append(receiver)
        self.accepted.set()
        return receiver


def run(test: Callable[[WriteBatch, Connections], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        connections = Connections()
        try:
            await test(WriteBatch(asyncio.get_running_loop()), connections)
        finally:
            if connections.server is not None:
                connections.server.close()

    uvloop.run(main())


class CountingTransport:
    """Wraps a transport to count the writes that reach it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def writelines(self, pieces: list[bytes]) -> None:
        self.writes += 1
        self.transport.writelines(pieces)

    def is_closing(self) -> bool:
        return self.transport.is_closing()


def test_writes_reach_the_transport_when_the_loop_pass_ends() -> None:
    async def scenario(batch: WriteBatch, connections: Connections) -> None:
        transport, receiver = await connections.open()
        counting = CountingTransport(transport)
        batch.write(counting, b"GET / HTTP/1.1\r\n")  # type: ignore[arg-type]
        batch.writelines(counting, [b"Host: a\r\n", b"\r\n"], 11)  # type: ignore[arg-type]
        assert counting.writes == 0  # held while this pass goes on
        await asyncio.sleep(0)  # the pass ends: the loop runs the batch's callback
        assert counting.writes == 2
        assert await receiver.wait_for(27) == b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        transport.close()

    run(scenario)


def test_each_transport_gets_its_writes_in_order_across_an_early_flush() -> None:
    async def scenario(batch: WriteBatch, connections: Connections) -> None:
        (first, first_end), (second, second_end) = (
            await connections.open(),
            await connections.open(),
        )
        batch.write(first, b"1")
        batch.write(second, b"a")
        batch.writelines(first, [b"2", memoryview(b"x3x")[1:2]], 2)
        batch.flush()  # as before a close, or a write that bypasses the batch
        first.write(b"4")
        batch.write(first, b"5")
        batch.writelines(second, [b"b", b"c"], 2)
        await asyncio.sleep(0)
        assert await first_end.wait_for(5) == b"12345"
        assert await second_end.wait_for(3) == b"abc"
        first.close()
        second.close()

    run(scenario)


def test_a_large_write_goes_out_at_once_after_what_waits_for_its_transport() -> None:
    async def scenario(batch: WriteBatch, connections: Connections) -> None:
        transport, receiver = await connections.open()
        counting = CountingTransport(transport)
        large = b"x" * UNBATCHED_WRITE
        batch.write(counting, b"small")  # type: ignore[arg-type]
        batch.write(counting, large)  # type: ignore[arg-type]
        assert counting.writes == 2  # the small one first, then the large one
        batch.writelines(counting, [b"a", large], 1 + len(large))  # type: ignore[arg-type]
        assert counting.writes == 3
        expected = b"small" + large + b"a" + large
        assert await receiver.wait_for(len(expected)) == expected
        transport.close()

    run(scenario)


def test_the_loop_flushes_once_per_pass_and_again_in_the_next_one() -> None:
    async def scenario(batch: WriteBatch, connections: Connections) -> None:
        transport, receiver = await connections.open()
        counting = CountingTransport(transport)
        for piece in (b"a", b"b", b"c"):
            batch.write(counting, piece)  # type: ignore[arg-type]
        assert batch.scheduled
        await asyncio.sleep(0)
        assert counting.writes == 3 and not batch.scheduled
        batch.write(counting, b"d")  # a later pass schedules its own flush
        await asyncio.sleep(0)
        assert counting.writes == 4
        assert await receiver.wait_for(4) == b"abcd"
        transport.close()

    run(scenario)


def test_a_transport_closed_meanwhile_does_not_keep_the_others_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(batch: WriteBatch, connections: Connections) -> None:
        (gone, _), (alive, alive_end) = await connections.open(), await connections.open()
        batch.write(gone, b"lost")
        batch.write(alive, b"kept")
        gone.abort()  # the peer reset it before the pass ended
        await asyncio.sleep(0)
        assert await alive_end.wait_for(4) == b"kept"
        alive.close()

    with caplog.at_level(logging.ERROR, logger="maitred.proxy"):
        run(scenario)
    assert not caplog.records  # nothing to report: the bytes had nowhere to go


class BrokenTransport:
    def write(self, data: bytes) -> None:
        raise ValueError("broken")

    def is_closing(self) -> bool:
        return False


def test_a_failing_write_on_an_open_transport_is_logged_and_the_rest_go_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(batch: WriteBatch, connections: Connections) -> None:
        alive, alive_end = await connections.open()
        batch.write(BrokenTransport(), b"x")  # type: ignore[arg-type]
        batch.write(alive, b"kept")
        await asyncio.sleep(0)
        assert await alive_end.wait_for(4) == b"kept"
        alive.close()

    with caplog.at_level(logging.ERROR, logger="maitred.proxy"):
        run(scenario)
    assert [record.exc_info[0] for record in caplog.records if record.exc_info] == [ValueError]


# -- the data plane keeps a connection's bytes in order around the batch ---------
#
# In memory (tests/fuzz/harness.py), where the loop turns only when the test says
# so: each case holds bytes in the batch, then does, in the same pass, what writes
# to or closes that transport directly.


class OneClient:
    """A client connection and a pooled server connection, driven step by step."""

    def __init__(self, proxy: InMemoryProxy) -> None:
        self.proxy = proxy
        self.servers = MemoryServerConnections(proxy.original)
        proxy.pool.connections[proxy.server] = self.servers
        self.servers.give_back(self.servers.open(), proxy.loop.time())
        self.client = ClientConnection(proxy.worker.plane, proxy.slot)
        self.transport = RecordingTransport()
        self.client.connection_made(self.transport)  # type: ignore[arg-type]

    def answer_waiting_in_the_batch(self, answer: bytes = CANNED_ANSWER) -> None:
        self.client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.proxy._turn()  # the request reaches the server
        server, _ = self.servers.made[0]
        server.data_received(answer)
        assert not self.transport.data  # held until the pass ends

    def close(self) -> None:
        self.client.connection_lost(None)
        for server, _ in self.servers.made:
            if server.transport is not None:
                server.connection_lost(None)
        self.proxy._turn()
        self.proxy.pool.connections[self.proxy.server] = self.proxy.original


@pytest.fixture
def one_client() -> Iterator[OneClient]:
    proxy = InMemoryProxy()
    started = OneClient(proxy)
    yield started
    started.close()
    proxy.close()


def test_a_malformed_request_is_refused_after_the_answer_before_it(one_client: OneClient) -> None:
    one_client.answer_waiting_in_the_batch()
    one_client.client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
    one_client.proxy._turn()
    answered = bytes(one_client.transport.data)
    assert answered.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answered.index(b"\r\n\r\nokHTTP/1.1 400 ") > 0
    assert one_client.transport.closed


def test_a_graceful_stop_sends_the_answer_before_closing(one_client: OneClient) -> None:
    one_client.answer_waiting_in_the_batch()
    one_client.proxy.worker.plane.stop_accepting_requests()  # closes idle connections
    assert one_client.transport.closed
    assert bytes(one_client.transport.data).endswith(b"\r\n\r\nok")


def test_an_idle_timeout_in_the_same_pass_sends_the_answer_before_closing(
    one_client: OneClient,
) -> None:
    one_client.answer_waiting_in_the_batch()
    one_client.client._on_timeout()  # its deadline's callback, due before the pass ends
    assert one_client.transport.closed
    assert bytes(one_client.transport.data).endswith(b"\r\n\r\nok")


def test_a_cut_answer_reaches_the_client_as_far_as_it_went(one_client: OneClient) -> None:
    one_client.answer_waiting_in_the_batch(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfive!")
    server, _ = one_client.servers.made[0]
    server.connection_lost(ConnectionResetError())  # in the same pass
    assert one_client.transport.aborted
    assert bytes(one_client.transport.data).endswith(b"\r\n\r\nfive!")


def test_a_large_piece_of_an_answer_goes_out_at_once_after_the_bytes_before_it(
    one_client: OneClient,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 20000\r\n\r\n"
    one_client.answer_waiting_in_the_batch(head + b"a" * 100)
    server, _ = one_client.servers.made[0]
    server.data_received(b"b" * 19900)  # in the same pass
    answered = bytes(one_client.transport.data)  # no loop turn: written at once
    assert answered.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answered.endswith(b"\r\n\r\n" + b"a" * 100 + b"b" * 19900)


def test_a_large_piece_of_a_request_body_goes_out_at_once_after_the_head(
    one_client: OneClient,
) -> None:
    one_client.client.data_received(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n" + b"a" * 100
    )
    _, server_transport = one_client.servers.made[0]
    assert not server_transport.data  # the head and the first bytes wait in the batch
    one_client.client.data_received(b"b" * 19900)  # in the same pass
    forwarded = bytes(server_transport.data)  # no loop turn: written at once
    assert forwarded.startswith(b"POST /upload HTTP/1.1\r\n")
    assert forwarded.endswith(b"\r\n\r\n" + b"a" * 100 + b"b" * 19900)
