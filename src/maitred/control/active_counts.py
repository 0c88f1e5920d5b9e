"""Requests in flight per server and per worker process, in shared memory.

Least connections (and the other strategies that weigh servers by their
active requests) must count every worker's requests, not only their own. The
supervisor creates one region of 64-bit cells, a column per server slot and a
row per worker process; the cell (slot, row) is written by that worker alone
(``LiveServer.active_mirror``: every change of its ``active`` is stored at
once), so no lock is needed: an aligned 8-byte store is atomic on the
platforms maitred runs on, and a reader sees either the old or the new figure.

Each worker reads the other rows of a pool's servers from ``Balancer.pick``,
at most every ``REFRESH_INTERVAL`` seconds of its event loop's clock: a pick
sees the other workers' counts as they were at most that long ago (plus the
event loop's clock granularity, 1 ms with uvloop). Reading costs a slice and a
sum per server (about 0.3 µs; bench/shared_state_bench.py).

Slots are the supervisor's: a server id keeps its slot while it is in the
configuration; a removed server's slot goes to the back of a free list (FIFO),
so it is reused as late as possible, once every worker has long forgotten the
server. Rows are handed to worker processes as they start and taken back (and
zeroed) when they exit, so a draining generation and its successor never
share one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence

from maitred.balancing.base import LiveServer

log = logging.getLogger("maitred.workers")

#: Servers whose load can be shared; more are balanced on their worker's own counts.
SERVER_SLOTS = 65536
REFRESH_INTERVAL = 0.001
CELL_BYTES = 8


def region_bytes(rows: int, slots: int = SERVER_SLOTS) -> int:
    return rows * slots * CELL_BYTES


def rows_for(workers: int) -> int:
    """Rows for ``workers`` processes and the generations draining beside them."""
    return max(4 * workers, 8)


class SlotAssigner:
    """Server id → column, stable while the server is configured (supervisor side)."""

    def __init__(self, slots: int = SERVER_SLOTS) -> None:
        self.slots = slots
        self.by_id: dict[str, int] = {}
        self._free: deque[int] = deque()
        #: Columns ever handed out: a worker's row is zeroed up to here.
        self.high_water = 0

    def assign(self, server_ids: Iterable[str]) -> dict[str, int]:
        wanted = list(dict.fromkeys(server_ids))
        kept = set(wanted)
        for sid in [sid for sid in self.by_id if sid not in kept]:
            self._free.append(self.by_id.pop(sid))
        for sid in wanted:
            if sid in self.by_id:
                continue
            if self.high_water < self.slots:
                self.by_id[sid] = self.high_water
                self.high_water += 1
            elif self._free:
                self.by_id[sid] = self._free.popleft()
            else:
                log.warning("more than %d servers: %s is balanced per worker", self.slots, sid)
        return dict(self.by_id)


class RowAssigner:
    """Rows for running worker processes (supervisor side)."""

    def __init__(self, rows: int) -> None:
        self._free = deque(range(rows))

    def acquire(self) -> int:
        """A free row, or -1 when every row is taken (the worker then publishes nothing)."""
        return self._free.popleft() if self._free else -1

    def release(self, row: int) -> None:
        if row >= 0:
            self._free.append(row)


def zero_row(view: memoryview, rows: int, row: int, columns: int) -> None:
    """Forget what a worker that exited had in flight."""
    for slot in range(columns):
        view[slot * rows + row] = 0


class WorkerActiveCounts:
    """One worker's view: publishes its servers' ``active``, reads the others' (a
    ``RemoteLoad`` for its balancers)."""

    refresh_interval = REFRESH_INTERVAL

    def __init__(self, view: memoryview, rows: int, row: int) -> None:
        self.view = view
        self.rows = rows
        self.row = row
        #: Server id → column, as the supervisor assigned them.
        self.slots: dict[str, int] = {}
        self._bases: dict[LiveServer, int] = {}

    def bind(self, server: LiveServer) -> None:
        """Publish ``server``'s active count from now on (and read the others')."""
        slot = self.slots.get(server.id)
        if slot is None:
            self.unbind(server)
            return
        base = slot * self.rows
        if self._bases.get(server) == base and server.active_mirror is self.view:
            return
        self.unbind(server)
        self._bases[server] = base
        if self.row >= 0:
            index = base + self.row
            self.view[index] = server.active
            server.active_mirror_index = index
            server.active_mirror = self.view

    def unbind(self, server: LiveServer) -> None:
        """``server`` left the configuration (or its slot): stop publishing it."""
        base = self._bases.pop(server, None)
        if base is None:
            return
        if server.active_mirror is self.view:
            server.active_mirror = None
            self.view[server.active_mirror_index] = 0
        server.set_others_active(0)

    def refresh(self, servers: Sequence[LiveServer]) -> None:
        view, rows, bases = self.view, self.rows, self._bases
        publishing = self.row >= 0
        for server in servers:
            base = bases.get(server)
            if base is None:
                continue
            total = sum(view[base : base + rows])
            # Our own cell holds exactly ``active`` (written on every change).
            server.set_others_active(total - server.active if publishing else total)

    def close(self) -> None:
        for server in list(self._bases):
            self.unbind(server)
