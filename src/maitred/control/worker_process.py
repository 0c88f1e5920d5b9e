"""A worker process: the data plane, fed by a supervisor through a control channel.

Started by the supervisor (never by hand) with its end of the control channel
and the listening sockets, which the supervisor keeps open: a worker that dies
loses no connection still waiting in a listen queue. The worker applies every
configuration it is sent, takes server availability as the supervisor decides
it, reports its counters once a second and failures on real traffic at once,
and on ``stop`` drains like a single process would.

    python -m maitred.control.worker_process --control FD --listener NAME=FD ...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import uvloop

from maitred.balancing.base import LiveServer
from maitred.config import Config
from maitred.control.channel import MAX_MESSAGE, Message, encode, receive
from maitred.control.shared_state import WorkerShared
from maitred.control.warmup import ConnectionWarmup
from maitred.control.worker import Worker
from maitred.log import setup_logging
from maitred.proxy.routing import OutcomeSink

log = logging.getLogger("maitred.worker")

REPORT_INTERVAL = 1.0


class RemotePolicy:
    """Server decisions as the supervisor makes them (the worker's ServerPolicy)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.available: dict[str, bool] = {}

    def is_available(self, sid: str) -> bool:
        return self.available.get(sid, True)

    def outcome_sink(self, pool_name: str) -> OutcomeSink:
        writer = self.writer

        def report(server: LiveServer, ok: bool, now: float) -> None:
            server.consecutive_failures = 0 if ok else server.consecutive_failures + 1
            if not writer.is_closing():
                writer.write(
                    encode({"type": "outcome", "pool": pool_name, "server": server.id, "ok": ok})
                )

        return report


def counters(worker: Worker) -> Message:
    """Everything the supervisor sums over workers for the admin API and /metrics."""
    servers: dict[str, list[Any]] = {}
    pools: dict[str, list[Any]] = {}
    for name, pool in worker.pools.items():
        pools[name] = [
            pool.requests,
            pool.retries,
            pool.latency_counts,
            pool.latency_sum,
            pool.own_answers,
        ]
        for server in pool.balancer.servers:
            servers[server.id] = [
                server.requests,
                server.active,
                server.answers,
                server.latency_sum,
            ]
    listeners = {
        name: [
            bound.slot.own_answers,
            bound.slot.bytes_in,
            bound.slot.bytes_out,
            bound.slot.tls_handshakes,
            bound.slot.rate_limited,
        ]
        for name, bound in worker.listeners.items()
    }
    return {
        "type": "counters",
        "pid": os.getpid(),
        "servers": servers,
        "pools": pools,
        "listeners": listeners,
        "connections": len(worker.plane.connections),
        "accepted": worker.plane.accepted,
    }


async def serve(control: socket.socket, listeners: dict[str, socket.socket]) -> int:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(sock=control, limit=MAX_MESSAGE)
    worker = Worker(loop)
    worker.inherited = listeners
    policy = RemotePolicy(writer)
    worker.policy = policy
    shared = WorkerShared()
    warmup = ConnectionWarmup(loop, worker)
    stop = asyncio.Event()
    # The supervisor decides when to stop; a terminal's Ctrl-C reaches it too.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def report() -> None:
        while not writer.is_closing():
            writer.write(encode(counters(worker)))
            await asyncio.sleep(REPORT_INTERVAL)

    async def listen() -> None:
        while True:
            message = await receive(reader)
            if message is None:
                log.warning("worker %d: the supervisor is gone; stopping", os.getpid())
                break
            kind = message.get("type")
            if kind == "config":
                await apply(worker, policy, message, warmup, shared)
            elif kind == "available":
                set_available(worker, policy, message["servers"], warmup)
            elif kind == "stop":
                break
        stop.set()

    first = await receive(reader)
    if first is None or first.get("type") != "config":
        return 1
    await apply(worker, policy, first, warmup, shared)
    log.info("worker %d serving", os.getpid())
    listening = loop.create_task(listen())
    reporting = loop.create_task(report())
    await stop.wait()
    drain_timeout = float(first["config"].get("drain_timeout", 30.0))
    await worker.drain(drain_timeout)
    writer.write(encode(counters(worker)))  # the final figures
    for task in (listening, reporting):
        task.cancel()
    writer.close()
    return 0


async def apply(
    worker: Worker,
    policy: RemotePolicy,
    message: Message,
    warmup: ConnectionWarmup,
    shared: WorkerShared,
) -> None:
    # Slots and tables first: the pools built next bind their servers to them.
    worker.shared_load = shared.apply(message["shared"])
    policy.available = dict(message.get("available", {}))
    if message.get("base_dir"):
        worker.tls.base_dir = Path(message["base_dir"])
    worker.sticky_secret = bytes.fromhex(message.get("sticky_secret", ""))
    config = Config.model_validate(message["config"])
    await worker.apply(config)
    set_available(worker, policy, policy.available, warmup)
    warmup.apply(config)


def set_available(
    worker: Worker, policy: RemotePolicy, available: dict[str, bool], warmup: ConnectionWarmup
) -> None:
    policy.available.update(available)
    now = worker.loop.time()
    back: list[LiveServer] = []
    for pool in worker.pools.values():
        changed = False
        for server in pool.balancer.servers:
            wanted = policy.available.get(server.id, True)
            if wanted != server.available:
                server.available = wanted
                if wanted:
                    server.available_since = now
                    server.consecutive_failures = 0
                    back.append(server)
                changed = True
        if changed:
            pool.balancer.refresh(now)
    for server in back:
        warmup.server_available(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="maitred-worker")
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--listener", action="append", default=[], metavar="NAME=FD")
    parser.add_argument("--log-format", default="text")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    control = socket.socket(fileno=args.control)
    listeners = {}
    for item in args.listener:
        name, _, fd = item.rpartition("=")
        listeners[name] = socket.socket(fileno=int(fd))
    return uvloop.run(serve(control, listeners))


if __name__ == "__main__":
    raise SystemExit(main())
