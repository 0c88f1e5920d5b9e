"""An idle keep-alive client connection keeps only what it needs to wait.

In process (a real Worker on uvloop, real sockets, a real backend) because what is
checked is the connection object itself: between requests it holds no parser and
no timer handle, and it serves the next request as if nothing happened. The parser
it gave back is lent to the next connection that reads, which must see nothing of
the request before.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import uvloop

from maitred.config import parse_config_text
from maitred.control.worker import Worker
from maitred.proxy.deadline import sweeper_for
from maitred.proxy.http1 import ClientConnection
from tests.support.backends import BackendProcess

REQUEST = b"GET / HTTP/1.1\r\nHost: idle.test\r\n\r\n"
WAIT_SECONDS = 10.0


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head.split(b" ", 2)[1], await reader.readexactly(length)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_SECONDS):
        while not condition():
            await asyncio.sleep(0.01)


def serve(backend: BackendProcess, scenario: Callable[..., object]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        worker = Worker(loop)
        await worker.apply(
            parse_config_text(
                f"""
listeners:
  - {{name: public, bind: 127.0.0.1:0, pool: web, timeouts: {{idle: 60s}}}}
pools:
  web:
    servers: [{{address: {backend.host}:{backend.port}}}]
"""
            )
        )
        host, port = worker.bound_addresses("public")[0].rsplit(":", 1)
        try:
            await scenario(worker, host, int(port))  # type: ignore[misc]
        finally:
            worker.stop_listening()
            await worker.drain(2.0)

    uvloop.run(main())


def only_connection(worker: Worker) -> ClientConnection:
    (conn,) = worker.plane.connections
    assert isinstance(conn, ClientConnection)
    return conn


async def half_a_head(
    worker: Worker, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, ClientConnection]:
    """A connection that has sent the first 20 bytes of a request head."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(REQUEST[:20])
    await until(lambda: len(worker.plane.connections) == 1)
    return reader, writer, only_connection(worker)


def test_an_idle_keep_alive_connection_sheds_its_parser_and_timer_then_serves_again(
    backends: list[BackendProcess],
) -> None:
    async def scenario(worker: Worker, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(REQUEST)
        assert (await read_answer(reader))[0] == b"200"
        conn = only_connection(worker)
        await until(lambda: not conn.deadline.holds_timer)
        assert conn.reader is None
        writer.write(REQUEST)
        status, body = await read_answer(reader)
        assert status == b"200" and body.strip() == backends[0].name.encode()
        writer.close()

    serve(backends[0], scenario)


def test_a_connection_in_the_middle_of_a_head_keeps_its_parser(
    backends: list[BackendProcess],
) -> None:
    async def scenario(worker: Worker, host: str, port: int) -> None:
        reader, writer, conn = await half_a_head(worker, host, port)
        sweeper = sweeper_for(asyncio.get_running_loop())
        swept = sweeper.sweeps
        await until(lambda: sweeper.sweeps >= swept + 2)
        assert conn.reader is not None
        writer.write(REQUEST[20:])
        assert (await read_answer(reader))[0] == b"200"
        writer.close()

    serve(backends[0], scenario)


CHUNKED_UPLOAD = (
    b"POST /upload HTTP/1.1\r\nHost: first.test\r\nX-First: 1\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
)
# Two spaces after a colon: not the plain form (plain_head), so llhttp reads it, through
# a lent parser.
ECHO = b"GET /echo?second HTTP/1.1\r\nHost: second.test\r\nX-Second:  2\r\n\r\n"


def test_the_parser_an_answered_connection_gives_back_parses_the_next_connection_afresh(
    backends: list[BackendProcess],
) -> None:
    async def scenario(worker: Worker, host: str, port: int) -> None:
        spare = worker.plane.spare_readers
        first_reader, first_writer = await asyncio.open_connection(host, port)
        first_writer.write(CHUNKED_UPLOAD)
        assert (await read_answer(first_reader))[0] == b"200"
        first = only_connection(worker)
        # Given back as the answer went out, not a sweep later.
        assert first.reader is None
        (lent,) = spare
        second_reader, second_writer = await asyncio.open_connection(host, port)
        second_writer.write(ECHO)
        status, body = await read_answer(second_reader)
        assert status == b"200"
        echoed = json.loads(body)
        assert (echoed["method"], echoed["path"], echoed["body_length"]) == (
            "GET",
            "/echo?second",
            0,
        )
        names = {name.lower() for name, _ in echoed["headers"]}
        assert "x-second" in names
        assert not names & {"x-first", "transfer-encoding", "content-length"}
        assert spare == [lent]  # borrowed and given back: no second parser was made
        first_writer.write(ECHO)
        status, body = await read_answer(first_reader)
        assert status == b"200" and json.loads(body)["path"] == "/echo?second"
        first_writer.close()
        second_writer.close()

    serve(backends[0], scenario)


def test_a_parser_left_in_the_middle_of_a_head_is_not_lent_again(
    backends: list[BackendProcess],
) -> None:
    async def scenario(worker: Worker, host: str, port: int) -> None:
        _, writer, conn = await half_a_head(worker, host, port)
        await until(lambda: conn.reader is not None)
        half_read = conn.reader
        writer.close()
        await until(lambda: not worker.plane.connections)
        assert half_read not in worker.plane.spare_readers
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(REQUEST)
        assert (await read_answer(reader))[0] == b"200"
        assert half_read not in worker.plane.spare_readers
        writer.close()

    serve(backends[0], scenario)
