"""Passive health checking: eject servers that keep failing real traffic (Envoy's model).

One ``OutlierDetector`` per pool, sans I/O: the data plane reports the outcome
of each request to a server (``ok=False`` for a connect failure, a reset or
close without an answer, or a 5xx answer; the caller classifies) together with
the time, and gets back an ``Ejection`` when the server should leave rotation.

Rules, with their reasons:

- ``consecutive_failures`` failures in a row eject a server; any success resets
  the count. 0 turns passive ejection off.
- The first ejection lasts ``base_ejection_time``; each repeat doubles it, up
  to ``max_ejection_time``, so a flapping server spends ever longer out.
  Good behaviour is forgiven gradually (as Envoy does): every full
  ``base_ejection_time`` a server spends back in rotation without being
  ejected takes one step off its repeat count.
- An ejected server returns when its time is up (``due_returns``) or as soon as
  an active check passes (``active_check_passed``).
- At most ``max_ejected_percent`` of the pool's servers are out at once, so a
  pool-wide problem (a bad deploy, a sick database) cannot empty the pool.
  Like Envoy, one server may always be ejected when none is (unless the
  percent is 0): a pool of one or two servers can still shed its broken one,
  which lets backups take over or the balancer answer 503 at once instead of
  waiting on a dead server. A failure refused by this cap is counted in
  ``ejections_refused``; the server's failure streak keeps growing, so it is
  ejected at its next failure once room is made.
- Results for an ejected server (requests still in flight when it was
  ejected) are ignored, as are results for servers the pool no longer has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Ejection", "OutlierDetector", "OutlierSettings"]


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejected_percent: int = 50

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0:
            raise ValueError("consecutive_failures must be >= 0 (0 disables ejection)")
        if self.base_ejection_time <= 0:
            raise ValueError("base_ejection_time must be > 0")
        if self.max_ejection_time < self.base_ejection_time:
            raise ValueError("max_ejection_time must be >= base_ejection_time")
        if not 0 <= self.max_ejected_percent <= 100:
            raise ValueError("max_ejected_percent must be between 0 and 100")

    def ejection_time(self, ejections_in_a_row: int) -> float:
        """How long the ``n``-th ejection in a row lasts (n >= 1)."""
        doublings = min(ejections_in_a_row - 1, 64)  # past 64 the cap has long applied
        return min(self.base_ejection_time * 2.0**doublings, self.max_ejection_time)


@dataclass(frozen=True, slots=True)
class Ejection:
    server_id: str
    ejected_at: float
    #: Seconds out of rotation (exact, unlike ``until - ejected_at``).
    duration: float
    until: float
    #: 1 for a first ejection, 2 for a repeat, ...: the exponent of the doubling.
    ejections_in_a_row: int

    def describe(self) -> str:
        return (
            f"server {self.server_id} ejected for {self.duration:g}s "
            f"(ejection {self.ejections_in_a_row} in a row)"
        )


class _ServerRecord:
    __slots__ = ("failures", "ejections_in_a_row", "ejected_until", "returned_at")

    def __init__(self) -> None:
        self.failures = 0
        self.ejections_in_a_row = 0
        self.ejected_until: float | None = None
        self.returned_at: float | None = None


class OutlierDetector:
    """Decides, from real traffic results, which servers of one pool to eject."""

    def __init__(
        self, settings: OutlierSettings | None = None, servers: Iterable[str] = ()
    ) -> None:
        self.settings = settings if settings is not None else OutlierSettings()
        self._servers: dict[str, _ServerRecord] = {}
        self._ejected_count = 0
        #: Ejections made since the detector was created.
        self.ejections_total = 0
        #: Ejections the ``max_ejected_percent`` cap prevented.
        self.ejections_refused = 0
        self.set_servers(servers)

    # -- membership ----------------------------------------------------------------

    def set_servers(self, server_ids: Iterable[str]) -> None:
        """Make ``server_ids`` the pool; survivors keep their history, the removed are forgotten."""
        wanted = set(server_ids)
        self._servers = {
            server_id: self._servers.get(server_id) or _ServerRecord() for server_id in wanted
        }
        self._ejected_count = sum(
            1 for record in self._servers.values() if record.ejected_until is not None
        )

    def reconfigure(self, settings: OutlierSettings) -> None:
        """Apply new settings; current ejections keep their end time."""
        self.settings = settings

    # -- traffic results -------------------------------------------------------------

    def record(self, server_id: str, ok: bool, now: float) -> Ejection | None:
        """Take the outcome of one request; return the ejection when this one caused it."""
        record = self._servers.get(server_id)
        if record is None or record.ejected_until is not None:
            return None
        if ok:
            record.failures = 0
            return None
        record.failures += 1
        threshold = self.settings.consecutive_failures
        if threshold == 0 or record.failures < threshold:
            return None
        if not self._room_for_one_more():
            self.ejections_refused += 1
            return None
        return self._eject(server_id, record, now)

    def _room_for_one_more(self) -> bool:
        percent = self.settings.max_ejected_percent
        if percent == 0:
            return False
        if self._ejected_count == 0:
            return True
        return (self._ejected_count + 1) * 100 <= percent * len(self._servers)

    def _eject(self, server_id: str, record: _ServerRecord, now: float) -> Ejection:
        settings = self.settings
        if record.returned_at is not None:
            forgiven = int((now - record.returned_at) // settings.base_ejection_time)
            record.ejections_in_a_row = max(0, record.ejections_in_a_row - forgiven)
        record.ejections_in_a_row += 1
        duration = settings.ejection_time(record.ejections_in_a_row)
        until = now + duration
        record.ejected_until = until
        record.failures = 0
        self._ejected_count += 1
        self.ejections_total += 1
        return Ejection(server_id, now, duration, until, record.ejections_in_a_row)

    # -- returns -----------------------------------------------------------------------

    def due_returns(self, now: float) -> list[str]:
        """Bring back every server whose ejection has ended by ``now``; return their ids."""
        returned = []
        for server_id, record in self._servers.items():
            if record.ejected_until is not None and record.ejected_until <= now:
                self._return(record, now)
                returned.append(server_id)
        return returned

    def next_return(self) -> float | None:
        """When the earliest current ejection ends (to schedule one timer), or None."""
        ends = [r.ejected_until for r in self._servers.values() if r.ejected_until is not None]
        return min(ends) if ends else None

    def active_check_passed(self, server_id: str, now: float) -> bool:
        """An active check of ``server_id`` passed: end its ejection. True when it was ejected."""
        record = self._servers.get(server_id)
        if record is None or record.ejected_until is None:
            return False
        self._return(record, now)
        return True

    def _return(self, record: _ServerRecord, now: float) -> None:
        record.ejected_until = None
        record.returned_at = now
        record.failures = 0
        self._ejected_count -= 1

    # -- inspection --------------------------------------------------------------------

    def is_ejected(self, server_id: str) -> bool:
        record = self._servers.get(server_id)
        return record is not None and record.ejected_until is not None

    def ejected(self) -> dict[str, float]:
        """``server_id -> time the ejection ends`` for every ejected server."""
        return {
            server_id: record.ejected_until
            for server_id, record in self._servers.items()
            if record.ejected_until is not None
        }

    def consecutive_failures(self, server_id: str) -> int:
        record = self._servers.get(server_id)
        return record.failures if record is not None else 0

    def ejections_in_a_row(self, server_id: str) -> int:
        record = self._servers.get(server_id)
        return record.ejections_in_a_row if record is not None else 0
