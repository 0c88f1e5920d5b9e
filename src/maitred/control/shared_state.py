"""What worker processes decide together: the shared-memory regions and who uses which.

The supervisor side (``SupervisorShared``) creates the regions, assigns server
slots and worker rows, and describes it all in each worker's ``config``
message under ``"shared"``. The worker side (``WorkerShared``) maps what the
message names and plugs it in: its ``WorkerActiveCounts`` into the worker's
balancers, the rate limit table into the rate limit policy (used when no
``rate_limit_store`` is configured).
"""

from __future__ import annotations

import logging
from typing import Any

from maitred.config import Config
from maitred.control.active_counts import (
    SERVER_SLOTS,
    RowAssigner,
    SlotAssigner,
    WorkerActiveCounts,
    region_bytes,
    rows_for,
    zero_row,
)
from maitred.control.shared_memory import RegionAddress, SharedRegion
from maitred.control.worker import server_id
from maitred.policies.rate_limit import use_shared_table
from maitred.policies.rate_limit_shared import SharedRateTable, table_bytes

log = logging.getLogger("maitred.workers")

#: The fewest keys a shared rate limit table is sized for.
MIN_TABLE_KEYS = 1024


def rate_limit_capacity(config: Config) -> int:
    """Keys the shared table must hold: every limit's ``max_keys``, summed (0: no limit)."""
    total = 0
    for listener in config.listeners:
        if listener.rate_limit is not None:
            total += listener.rate_limit.max_keys
        for route in listener.routes:
            if route.rate_limit is not None:
                total += route.rate_limit.max_keys
    return total


class SupervisorShared:
    def __init__(self, workers: int) -> None:
        self.rows = rows_for(workers)
        self.counts = SharedRegion.create("active", region_bytes(self.rows))
        self._counts_view = memoryview(self.counts.memory).cast("q")
        self.slots = SlotAssigner(SERVER_SLOTS)
        self.row_assigner = RowAssigner(self.rows)
        self.table: SharedRegion | None = None
        self.table_capacity = 0

    def apply(self, config: Config) -> None:
        """Assign slots to ``config``'s servers; size the rate limit table for its limits."""
        self.slots.assign(
            server_id(name, server.address.host, server.address.port)
            for name, pool in config.pools.items()
            for server in pool.servers
        )
        wanted = rate_limit_capacity(config)
        if wanted and wanted > self.table_capacity:
            capacity = max(wanted, MIN_TABLE_KEYS)
            region = SharedRegion.create("rate-limits", table_bytes(capacity))
            SharedRateTable.initialize(region.memory, capacity)
            if self.table is not None:
                # Workers opened their own descriptors; those switch at this message.
                log.info("rate limit table grown to %d keys: counts start afresh", capacity)
                self.table.close()
            self.table, self.table_capacity = region, capacity

    def message(self, row: int) -> dict[str, Any]:
        """The ``shared`` part of the config message of the worker owning ``row``."""
        return {
            "active_counts": self.counts.address.to_message(),
            "rows": self.rows,
            "row": row,
            "slots": self.slots.by_id,
            "rate_limit_table": self.table.address.to_message() if self.table else None,
        }

    def worker_exited(self, row: int) -> None:
        """A worker is gone: what it had in flight is not in flight any more."""
        if row >= 0:
            zero_row(self._counts_view, self.rows, row, self.slots.high_water)
            self.row_assigner.release(row)

    def close(self) -> None:
        self._counts_view.release()
        self.counts.close()
        if self.table is not None:
            self.table.close()


class WorkerShared:
    """A worker's attachments, following its config messages."""

    def __init__(self) -> None:
        self.counts: WorkerActiveCounts | None = None
        self._counts_region: SharedRegion | None = None
        self._table: SharedRateTable | None = None
        self._table_region: SharedRegion | None = None

    def apply(self, message: dict[str, Any]) -> WorkerActiveCounts | None:
        """Attach what ``message`` (the config message's ``shared``) names."""
        address = RegionAddress.from_message(message["active_counts"])
        if self._counts_region is None or self._counts_region.address != address:
            region = SharedRegion.attach(address)
            view = memoryview(region.memory).cast("q")
            self.counts = WorkerActiveCounts(view, int(message["rows"]), int(message["row"]))
            self._counts_region = region
        assert self.counts is not None
        self.counts.slots = {str(sid): int(slot) for sid, slot in message["slots"].items()}
        table = message.get("rate_limit_table")
        if table is None:
            self._use_table(None, None)
        else:
            address = RegionAddress.from_message(table)
            if self._table_region is None or self._table_region.address != address:
                try:
                    region = SharedRegion.attach(address)
                except OSError as exc:
                    # Replaced before we got to it: the next message names the new one.
                    log.warning("rate limit table %s unavailable: %s", address.path, exc)
                else:
                    self._use_table(region, SharedRateTable(region.memory, region.fd))
        return self.counts

    def _use_table(self, region: SharedRegion | None, table: SharedRateTable | None) -> None:
        old_region, old_table = self._table_region, self._table
        self._table_region, self._table = region, table
        use_shared_table(table)
        if old_table is not None:
            old_table.close()
        if old_region is not None:
            old_region.close()
