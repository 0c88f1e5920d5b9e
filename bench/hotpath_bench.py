"""The data plane's Python cost per request, without sockets or kernel time.

A client connection and a pooled server connection get in-memory transports;
each round feeds one request into the client side and one answer into the
server side, exactly as the event loop would. What is left is the Python work
per request, measured repeatably (the kernel's share is measured by `python -m
bench` against HAProxy and NGINX).

    python -m bench.hotpath_bench [--requests 200000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

import uvloop

from maitred.config import parse_config_text
from maitred.control.worker import Worker
from maitred.proxy.http1 import ClientConnection
from maitred.proxy.upstream import UpstreamConnection

CONFIG = """
listeners:
  - {name: public, bind: "127.0.0.1:0", pool: web}
pools:
  web:
    servers: [{address: "127.0.0.1:9"}]
"""

# What wrk sends, and what an nginx origin answers.
SMALL_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
BROWSER_REQUEST = (
    b"GET /products/42?ref=home HTTP/1.1\r\nHost: shop.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\nCookie: session=abc123; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\nSec-Fetch-Site: none\r\n\r\n"
)
SMALL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 06:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n"
)


#: Requests run before the measured ones.
WARMUP_REQUESTS = 1000


class MemoryTransport:
    """Enough of asyncio.Transport for the protocols; counts what they write."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.written += len(chunk)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the benchmark's connections must stay open")

    def abort(self) -> None:
        raise AssertionError("the benchmark's connections must stay open")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


async def build() -> tuple[ClientConnection, UpstreamConnection, Worker]:
    worker = Worker(asyncio.get_running_loop())
    await worker.apply(parse_config_text(CONFIG))
    pool = worker.pools["web"]
    server = pool.balancer.servers[0]
    servers = pool.connections[server]
    upstream = UpstreamConnection(servers)
    upstream.connection_made(MemoryTransport())  # type: ignore[arg-type]
    servers.give_back(upstream, asyncio.get_running_loop().time())
    client = ClientConnection(worker.plane, worker.listeners["public"].slot)
    client.connection_made(MemoryTransport())  # type: ignore[arg-type]
    return client, upstream, worker


def run(requests: int, request: bytes, profile: bool) -> float:
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    client, upstream, worker = loop.run_until_complete(build())
    response = SMALL_RESPONSE
    # The loop does not run here: its end-of-pass flush is called by hand, once per
    # request (where the loop flushes once per pass, for every request of the pass).
    flush = worker.plane.writes.flush
    for _ in range(WARMUP_REQUESTS):
        client.data_received(request)
        upstream.data_received(response)
        flush()
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    started = time.perf_counter()
    for _ in range(requests):
        client.data_received(request)
        upstream.data_received(response)
        flush()
    elapsed = time.perf_counter() - started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    worker.stop_listening()
    loop.close()
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    for name, request in (("small request", SMALL_REQUEST), ("browser request", BROWSER_REQUEST)):
        best = min(run(args.requests, request, False) for _ in range(3))
        print(f"{name:16s} {best:6.2f} µs of Python per request (best of 3)")
    if args.profile:
        run(args.requests // 4, SMALL_REQUEST, True)


if __name__ == "__main__":
    main()
