"""Hold many idle keep-alive connections open against one proxy.

Run as `python -m bench.idle_client PORT COUNT`: opens COUNT connections to
127.0.0.1:PORT, sends one request on each and reads its answer, prints
`READY <open> <failed>`, then holds them all until stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
CONNECTS_IN_FLIGHT = 256  # keeps the listen backlog from overflowing
ANSWER_TIMEOUT_SECONDS = 30.0


async def open_one(
    port: int, gate: asyncio.Semaphore
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    async with gate:
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_SECONDS):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(content_length(head))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        return reader, writer


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def hold(port: int, count: int) -> None:
    gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)
    results = await asyncio.gather(*(open_one(port, gate) for _ in range(count)))
    opened = [r for r in results if r is not None]
    print(f"READY {len(opened)} {count - len(opened)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for _, writer in opened:
        writer.close()


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    uvloop.run(hold(port, count))


if __name__ == "__main__":
    main()
