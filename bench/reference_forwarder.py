"""A plain HTTP/1.1 forwarder on uvloop + httptools: the ceiling, not a product.

    python -m bench.reference_forwarder --port 8080 --origins 9001,9002
    python -m bench.reference_forwarder --port 8080 --origins 9001,9002 \\
        --cert cert.pem --key key.pem --tls-port 8443
    python -m bench.reference_forwarder --port 8080 --origins 9001 --work-us 7.5

This is a yardstick for `python -m bench.ceiling`: the least work a Python proxy on
the same stack as maitred (asyncio Protocol classes on uvloop, the httptools parser)
can do per request, so that maitred's throughput can be read against what plain
Python can reach at all. Do not deploy it. It has no health checks, no retries,
no timeouts, no routing, no limits, adds no header (not even X-Forwarded-For) and
logs nothing.

What it does:

- Each accepted client connection gets one upstream connection of its own, to the
  next origin in round-robin order, for its whole life (no pooling, no re-balancing
  per request).
- Request bytes go to the origin unchanged and answer bytes come back unchanged.
  httptools parses the requests only to refuse what is not HTTP/1.1: a malformed
  request closes the client connection, and none of it is forwarded. After an
  Upgrade or CONNECT the bytes are relayed without parsing.
- Request bytes that arrive before the upstream connection is up are buffered (the
  client is paused past HIGH_WATER bytes).
- Flow control: when one side's transport buffers more than its high-water mark
  (pause_writing), the other side stops reading until it drained (resume_writing),
  so a client that reads 50 KB answers slowly cannot grow memory without bound.
- When either side closes (or sends EOF), both are closed; buffered bytes are
  still flushed first.
- With --cert/--key it also serves HTTPS on --tls-port: uvloop's TLS transport
  (``ssl=`` on create_server), ALPN http/1.1, plain HTTP to the origins.
- With --work-us N it spins N µs of CPU (a busy loop on time.perf_counter_ns)
  after each client read is parsed, before forwarding it. The spin stands in for
  a proxy's own work per request (maitred's routing, headers, balancing,
  bookkeeping): with one request per read, as with keep-alive wrk, that is N µs
  of user CPU per request. `python -m bench.ceiling --work-us N` runs such a
  forwarder beside the plain one, to see how much of maitred's gap that accounts
  for. Reads after an Upgrade/CONNECT are relayed without the spin.

It prints ``listening on http HOST:PORT`` (and ``https``) once bound, then runs
until SIGTERM or SIGINT. Port 0 picks a free port (the printed line says which).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import signal
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import httptools
import uvloop

# Request bytes held while the upstream connection is being made, before the
# client stops being read; the same as the transports' default high-water mark.
HIGH_WATER = 64 * 1024
BACKLOG = 4096

Origin = tuple[str, int]


class _NoCallbacks:
    """The parser's protocol: no callback at all, it only validates."""


_NO_CALLBACKS = _NoCallbacks()


class ClientSide(asyncio.Protocol):
    """One client connection and, through `upstream`, its origin connection."""

    def __init__(self, origin: Origin, work_ns: int = 0) -> None:
        self.origin = origin
        self.work_ns = work_ns  # CPU to spin per parsed client read (--work-us)
        self.transport: asyncio.Transport | None = None
        self.upstream = UpstreamSide(self)
        self.pending: list[bytes] = []  # request bytes that came before the upstream
        self.pending_bytes = 0
        self.reading_paused = False
        self.closed = False
        self.relay_only = False  # after an Upgrade or CONNECT: bytes, not HTTP/1.1
        self.parser: Any = httptools.HttpRequestParser(_NO_CALLBACKS)
        self.connecting: asyncio.Task[tuple[asyncio.Transport, UpstreamSide]] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        host, port = self.origin
        upstream = self.upstream
        self.connecting = loop.create_task(loop.create_connection(lambda: upstream, host, port))
        self.connecting.add_done_callback(self._connect_done)

    def data_received(self, data: bytes) -> None:
        if not self.relay_only:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self.relay_only = True  # the rest is the upgraded protocol's
            except httptools.HttpParserError:
                self.close()  # malformed: nothing of it goes upstream
                return
            if self.work_ns:
                spin(self.work_ns)
        upstream = self.upstream.transport
        if upstream is not None:
            upstream.write(data)
            return
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes > HIGH_WATER:
            self.pause_reading()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost closes the upstream

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pending.clear()
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        upstream = self.upstream.transport
        if upstream is not None:
            upstream.close()

    def pause_writing(self) -> None:
        # The client reads slower than the origin answers: stop reading the origin.
        upstream = self.upstream.transport
        if upstream is not None and not upstream.is_closing():
            upstream.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.upstream.transport
        if upstream is not None and not upstream.is_closing():
            upstream.resume_reading()

    # -- used by UpstreamSide -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
            self.reading_paused = True

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self.reading_paused = False

    def take_pending(self) -> list[bytes]:
        pending, self.pending = self.pending, []
        self.pending_bytes = 0
        return pending

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _connect_done(self, task: asyncio.Task[tuple[asyncio.Transport, UpstreamSide]]) -> None:
        if task.cancelled():
            return
        if task.exception() is not None:  # the origin refused or is unreachable
            self.close()


class UpstreamSide(asyncio.Protocol):
    """The origin connection of one client connection."""

    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        client = self.client
        if client.closed:  # the client left while we were connecting
            transport.close()
            return
        self.transport = cast(asyncio.Transport, transport)
        pending = client.take_pending()
        if pending:
            self.transport.writelines(pending)  # may call pause_writing at once
        if not self.writing_paused:
            client.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost closes the client

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()

    def pause_writing(self) -> None:
        # The origin reads slower than the client sends: stop reading the client.
        self.writing_paused = True
        self.client.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.client.resume_reading()


def spin(nanoseconds: int) -> None:
    """Burn `nanoseconds` of CPU in this thread: a stand-in for per-request work."""
    end = time.perf_counter_ns() + nanoseconds
    while time.perf_counter_ns() < end:
        pass


def work_nanoseconds(work_us: float) -> int:
    """--work-us as whole nanoseconds for `spin`."""
    return round(work_us * 1000)


def client_factory(origins: Sequence[Origin], work_us: float = 0.0) -> Callable[[], ClientSide]:
    """New client connections, each bound to the next origin in round-robin order."""
    if not origins:
        raise ValueError("no origin")
    rotation = itertools.cycle(origins)
    work_ns = work_nanoseconds(work_us)
    return lambda: ClientSide(next(rotation), work_ns)


def parse_origins(text: str, default_host: str = "127.0.0.1") -> list[Origin]:
    """`9001,9002` or `10.0.0.1:9001,10.0.0.2:9001` → [(host, port), ...]."""
    origins: list[Origin] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        host, _, port = item.rpartition(":")
        origins.append((host.strip("[]") or default_host, int(port)))
    if not origins:
        raise ValueError(f"no origin in {text!r}")
    return origins


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    factory = client_factory(parse_origins(args.origins), args.work_us)
    servers = [await loop.create_server(factory, args.host, args.port, backlog=BACKLOG)]
    listening = [("http", servers[0])]
    if args.cert:
        context = tls_context(args.cert, args.key)
        tls_server = await loop.create_server(
            factory, args.host, args.tls_port, backlog=BACKLOG, ssl=context
        )
        servers.append(tls_server)
        listening.append(("https", tls_server))
    for scheme, server in listening:
        host, port = server.sockets[0].getsockname()[:2]
        print(f"listening on {scheme} {host}:{port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reference_forwarder",
        description="A plain uvloop + httptools forwarder: a benchmark yardstick, not a product.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="plain HTTP port (0: any)")
    parser.add_argument(
        "--origins", required=True, help="PORT,PORT or HOST:PORT,HOST:PORT (round robin)"
    )
    parser.add_argument("--cert", help="PEM certificate (chain) for HTTPS")
    parser.add_argument("--key", help="PEM private key for HTTPS")
    parser.add_argument("--tls-port", type=int, default=0, help="HTTPS port (0: any)")
    parser.add_argument(
        "--work-us",
        type=float,
        default=0.0,
        metavar="N",
        help="spin N µs of CPU after each client read is parsed (default 0): a stand-in "
        "for a proxy's per-request work, e.g. maitred's; with one request per read, "
        "N µs per request",
    )
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    if not (math.isfinite(args.work_us) and args.work_us >= 0):
        parser.error("--work-us must be a number of microseconds, 0 or more")
    try:
        parse_origins(args.origins)
    except ValueError as error:
        parser.error(f"--origins: {error}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    uvloop.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
