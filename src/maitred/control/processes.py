"""Several worker processes under one supervisor (``workers: N | auto``).

The supervisor binds every listening socket itself and hands the same sockets
to each worker: all workers accept from one queue per listener. A crashed
worker is replaced at once, and the connections still queued on its listeners
are not lost, because the sockets stay open in the supervisor. (SO_REUSEPORT
would give each worker its own queue, and a dead worker's queued connections
would be reset; a BPF steering program could avoid that, at the cost of
kernel-specific code.)

Configuration and server availability flow down the control channel; the
workers' counters flow up and are summed into the supervisor's mirror of the
pools (a ``Worker`` that serves nothing), so the admin API, /metrics and the
health checks see all workers as one (per-listener counters included:
``listener_counters``).

Two decisions are shared through memory rather than the channel, because they
are taken per request (``control.shared_state``): the active requests per
server (least connections and the other load-aware strategies count every
worker's requests) and, without a ``rate_limit_store``, the rate limit table.

A reload that keeps the listeners is
applied by the running workers; one that changes them starts a new generation
of workers on the new sockets and drains the old one (bounded by
``drain_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maitred.config import Config, Listener
from maitred.control.channel import MAX_MESSAGE, Message, encode, receive
from maitred.control.health import HealthControl
from maitred.control.shared_state import SupervisorShared
from maitred.control.worker import Worker
from maitred.log import current as current_logging

log = logging.getLogger("maitred.workers")


def worker_count(setting: int | str) -> int:
    return (os.cpu_count() or 1) if setting == "auto" else int(setting)


def bind_listener(listener: Listener) -> socket.socket:
    host, port = listener.bind.host, listener.bind.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(eq=False)
class WorkerProcess:
    index: int
    generation: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    stopping: bool = False
    last: Message = field(default_factory=dict)
    #: Its row of the shared active counts (-1: none was free).
    row: int = -1


@dataclass(slots=True)
class ListenerCounters:
    """A listener's counters summed over worker processes (as ``ListenerSlot`` names them)."""

    own_answers: list[int] = field(default_factory=lambda: [0] * 6)
    bytes_in: int = 0
    bytes_out: int = 0
    tls_handshakes: int = 0
    rate_limited: int = 0


class WorkerProcesses:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        count: int,
        mirror: Worker,
        health: HealthControl,
        base_dir: Path | None,
    ) -> None:
        self.loop = loop
        self.count = count
        self.mirror = mirror
        self.health = health
        self.base_dir = base_dir
        self.sockets: dict[str, socket.socket] = {}
        self.binds: dict[str, str] = {}
        self.workers: list[WorkerProcess] = []
        self.generation = 0
        self.config: Config | None = None
        self.stopping = False
        #: Counters of workers that are gone, so the sums never go backwards.
        self._retired: list[Message] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.shared = SupervisorShared(count)
        #: Per listener name, summed over workers (running and gone).
        self.listener_counters: dict[str, ListenerCounters] = {}

    # -- configuration -----------------------------------------------------------

    async def apply(self, config: Config) -> None:
        """Start workers, or give the running ones ``config`` (a new generation
        when the listeners change)."""
        self.config = config
        self.shared.apply(config)
        wanted = {listener.name: str(listener.bind) for listener in config.listeners}
        if self.workers and wanted == self.binds:
            for worker in self.workers:
                self._send(worker, self._config_message(worker))
            return
        old_sockets = self.sockets
        sockets: dict[str, socket.socket] = {}
        for listener in config.listeners:
            kept = old_sockets.get(listener.name)
            if kept is not None and self.binds.get(listener.name) == str(listener.bind):
                sockets[listener.name] = kept
            else:
                sockets[listener.name] = bind_listener(listener)
            log.info("listener %s serving on %s", listener.name, address_of(sockets[listener.name]))
        old_workers = self.workers
        self.sockets, self.binds = sockets, wanted
        self.generation += 1
        self.workers = []
        for index in range(self.count):
            self.workers.append(await self._spawn(index))
        for worker in old_workers:
            self._stop(worker)
        for name, sock in old_sockets.items():
            if sockets.get(name) is not sock:
                sock.close()

    def _config_message(self, worker: WorkerProcess) -> Message:
        assert self.config is not None
        return {
            "shared": self.shared.message(worker.row),
            "type": "config",
            "config": self.config.to_dict(),
            "available": self._availability(),
            "base_dir": str(self.base_dir) if self.base_dir else "",
            "sticky_secret": self.mirror.sticky_secret.hex(),
        }

    def _availability(self) -> dict[str, bool]:
        return {server.id: server.available for _, server in self.mirror.servers()}

    def broadcast_availability(self) -> None:
        message = {"type": "available", "servers": self._availability()}
        for worker in self.workers:
            self._send(worker, message)

    # -- processes ---------------------------------------------------------------

    async def _spawn(self, index: int) -> WorkerProcess:
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno(), *(sock.fileno() for sock in self.sockets.values())]
        log_format, log_level = current_logging
        argv = [
            sys.executable,
            "-m",
            "maitred.control.worker_process",
            "--control",
            str(theirs.fileno()),
            "--log-format",
            log_format,
            "--log-level",
            log_level,
        ]
        for name, sock in self.sockets.items():
            argv += ["--listener", f"{name}={sock.fileno()}"]
        process = await asyncio.create_subprocess_exec(*argv, pass_fds=fds)
        theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=MAX_MESSAGE)
        worker = WorkerProcess(index, self.generation, process, writer, reader)
        worker.row = self.shared.row_assigner.acquire()
        self._send(worker, self._config_message(worker))
        log.info("worker %d started (pid %d)", index, process.pid)
        self._track(self.loop.create_task(self._listen(worker)))
        return worker

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self, worker: WorkerProcess) -> None:
        while True:
            message = await receive(worker.reader)
            if message is None:
                break
            kind = message.get("type")
            if kind == "counters":
                worker.last = message
                self._sum_counters()
            elif kind == "outcome":
                self._outcome(message)
        code = await worker.process.wait()
        self.shared.worker_exited(worker.row)
        worker.row = -1
        if worker.last:
            self._retired.append(worker.last)
            worker.last = {}
        if worker in self.workers:
            self.workers.remove(worker)
        self._sum_counters()
        if worker.stopping or self.stopping:
            log.info("worker %d (pid %d) exited", worker.index, worker.process.pid)
            return
        log.error(
            "worker %d (pid %d) died with %s; starting a new one",
            worker.index,
            worker.process.pid,
            code,
        )
        if worker.generation == self.generation:
            self.workers.append(await self._spawn(worker.index))

    def _send(self, worker: WorkerProcess, message: Message) -> None:
        if not worker.writer.is_closing():
            worker.writer.write(encode(message))

    def _stop(self, worker: WorkerProcess) -> None:
        worker.stopping = True
        self._send(worker, {"type": "stop"})

    async def stop(self, timeout: float) -> bool:
        """Every worker drains (bounded by ``timeout``) and exits."""
        self.stopping = True
        workers = list(self.workers)
        for worker in workers:
            self._stop(worker)
        # Nothing new may queue on listeners no worker will accept from again.
        for sock in self.sockets.values():
            sock.close()
        waits = [asyncio.ensure_future(w.process.wait()) for w in workers]
        if not waits:
            return True
        done, pending = await asyncio.wait(waits, timeout=timeout + 5)
        for worker in workers:
            if worker.process.returncode is None:
                worker.process.kill()
        if not pending:
            self.shared.close()
        return not pending

    # -- what the workers report ---------------------------------------------------

    def _outcome(self, message: Message) -> None:
        pool = self.mirror.pools.get(message["pool"])
        if pool is None:
            return
        for server in pool.balancer.servers:
            if server.id == message["server"]:
                self.health.outcome_sink(message["pool"])(
                    server, bool(message["ok"]), self.loop.time()
                )
                return

    def _sum_counters(self) -> None:
        reports = [w.last for w in self.workers if w.last] + self._retired
        for name, pool in self.mirror.pools.items():
            totals = [r["pools"][name] for r in reports if name in r.get("pools", {})]
            pool.requests = sum(t[0] for t in totals)
            pool.retries = sum(t[1] for t in totals)
            pool.latency_counts = _sum_lists([t[2] for t in totals], len(pool.latency_counts))
            pool.latency_sum = sum(t[3] for t in totals)
            pool.own_answers = _sum_lists([t[4] for t in totals], 6)
            for server in pool.balancer.servers:
                rows = [r["servers"][server.id] for r in reports if server.id in r["servers"]]
                server.requests = sum(row[0] for row in rows)
                live = [
                    w.last["servers"][server.id]
                    for w in self.workers
                    if w.last and server.id in w.last["servers"]
                ]
                server.active = sum(row[1] for row in live)
                server.answers = _sum_lists([row[2] for row in rows], 6)
                server.latency_sum = sum(row[3] for row in rows)
        listeners: dict[str, ListenerCounters] = {}
        for report in reports:
            for name, row in report.get("listeners", {}).items():
                total = listeners.setdefault(name, ListenerCounters())
                total.own_answers = _sum_lists([total.own_answers, row[0]], 6)
                total.bytes_in += row[1]
                total.bytes_out += row[2]
                total.tls_handshakes += row[3]
                total.rate_limited += row[4]
        self.listener_counters = listeners

    def accepted_by_worker(self) -> dict[int, int]:
        """Client connections each running worker accepted (by worker index)."""
        return {w.index: int(w.last.get("accepted", 0)) for w in self.workers if w.last}


def _sum_lists(lists: list[list[int]], length: int) -> list[int]:
    total = [0] * length
    for values in lists:
        for index, value in enumerate(values[:length]):
            total[index] += value
    return total
