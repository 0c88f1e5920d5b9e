"""Server availability on the control side: active checks, passive ejection, admin state.

A server takes requests when its active checks keep it in rotation, passive
outlier detection has not ejected it, and no operator has drained it or put it
in maintenance. This module owns those three inputs and writes the outcome to
the data side's ``LiveServer.available`` (then asks the pool's balancer to
refresh), so the hot path only ever reads one flag.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Callable

from maitred.balancing.base import LiveServer
from maitred.config import Config, Pool
from maitred.control.worker import Worker, server_id
from maitred.health import (
    ActiveChecker,
    HealthMonitor,
    HealthState,
    OutlierDetector,
    OutlierSettings,
    targets_from_pools,
)
from maitred.proxy.routing import OutcomeSink

log = logging.getLogger("maitred.health")


def outlier_settings(pool: Pool) -> OutlierSettings:
    detection = pool.outlier_detection
    return OutlierSettings(
        consecutive_failures=detection.consecutive_failures if detection.enabled else 0,
        base_ejection_time=detection.base_ejection_time,
        max_ejection_time=max(detection.max_ejection_time, detection.base_ejection_time),
        max_ejected_percent=detection.max_ejected_percent,
    )


class HealthControl:
    def __init__(self, loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
        self.loop = loop
        self.worker = worker
        self.monitor = HealthMonitor()
        self.monitor.on_transition.append(self._on_transition)
        self.checker = ActiveChecker(
            self._on_result, wants_fast_checks=self.monitor.needs_fast_checks
        )
        self.detectors: dict[str, OutlierDetector] = {}
        self._pool_of: dict[str, str] = {}
        #: Told after any server's availability changed (worker processes follow it).
        self.on_availability_change: list[Callable[[], None]] = []
        #: Operator states set through the admin API: "ready", "drain" or "maint".
        self.admin_states: dict[str, str] = {}
        self.ejections: Counter[str] = Counter()
        self._return_timer: asyncio.TimerHandle | None = None
        #: Told each server that becomes available (pool warm-up opens connections).
        self.on_available: list[Callable[[LiveServer], None]] = []
        worker.policy = self

    # -- configuration -----------------------------------------------------------

    def prepare(self, config: Config) -> None:
        """Before the worker applies ``config``: know its servers' checks and detectors."""
        self.monitor.set_targets(targets_from_pools(config.pools, server_id))
        detectors = {}
        pool_of = {}
        for name, pool in config.pools.items():
            detector = self.detectors.get(name) or OutlierDetector()
            detector.reconfigure(outlier_settings(pool))
            ids = [server_id(name, s.address.host, s.address.port) for s in pool.servers]
            detector.set_servers(ids)
            detectors[name] = detector
            pool_of.update(dict.fromkeys(ids, name))
        self.detectors = detectors
        self._pool_of = pool_of

    def start(self, config: Config) -> None:
        """After the worker applied ``config``: run its checks, settle every server's flag."""
        self.checker.set_targets(targets_from_pools(config.pools, server_id, self._tls_for))
        now = self.loop.time()
        for _, server in self.worker.servers():
            self._settle(server, now)

    def _tls_for(self, pool: Pool) -> ssl.SSLContext | None:
        """Checks speak TLS to a pool's servers when its traffic does."""
        try:
            return self.worker.tls.client_context(pool.tls)
        except (OSError, ssl.SSLError) as exc:
            log.error("health checks over TLS: %s", exc)
            return None

    async def close(self) -> None:
        if self._return_timer is not None:
            self._return_timer.cancel()
        await self.checker.close()

    # -- what the worker asks ----------------------------------------------------

    def is_available(self, sid: str) -> bool:
        detector = self.detectors.get(self._pool_of.get(sid, ""))
        ejected = detector is not None and detector.is_ejected(sid)
        return (
            self.monitor.in_rotation(sid)
            and not ejected
            and self.admin_states.get(sid, "ready") == "ready"
        )

    def outcome_sink(self, pool_name: str) -> OutcomeSink:
        """Where the data plane reports failures on real traffic (and the success after)."""

        def record(server: LiveServer, ok: bool, now: float) -> None:
            server.consecutive_failures = 0 if ok else server.consecutive_failures + 1
            detector = self.detectors.get(pool_name)
            if detector is None:
                return
            ejection = detector.record(server.id, ok, now)
            if ejection is not None:
                log.warning("%s", ejection.describe())
                self.ejections[server.id] += 1
                self._settle(server, now)
                self._schedule_returns()

        return record

    # -- inputs ------------------------------------------------------------------

    def _on_result(self, sid: str, ok: bool, detail: str) -> None:
        self.monitor.record(sid, ok, detail)
        detector = self.detectors.get(self._pool_of.get(sid, ""))
        if (
            ok
            and detector is not None
            and detector.is_ejected(sid)
            and detector.active_check_passed(sid, self.loop.time())
        ):
            log.info("server %s returns from ejection: an active check passed", sid)
            self._settle_id(sid)

    def _on_transition(self, sid: str, old: HealthState, new: HealthState) -> None:
        self._settle_id(sid)

    def _schedule_returns(self) -> None:
        if self._return_timer is not None:
            self._return_timer.cancel()
            self._return_timer = None
        due = [t for t in (d.next_return() for d in self.detectors.values()) if t is not None]
        if due:
            self._return_timer = self.loop.call_at(min(due), self._returns_due)

    def _returns_due(self) -> None:
        self._return_timer = None
        now = self.loop.time()
        for detector in self.detectors.values():
            for sid in detector.due_returns(now):
                log.info("server %s returns from ejection", sid)
                self._settle_id(sid)
        self._schedule_returns()

    # -- output ------------------------------------------------------------------

    def _settle_id(self, sid: str) -> None:
        now = self.loop.time()
        for _, server in self.worker.servers():
            if server.id == sid:
                self._settle(server, now)

    def _settle(self, server: LiveServer, now: float) -> None:
        available = self.is_available(server.id)
        if available == server.available:
            return
        server.available = available
        if available:
            server.available_since = now
            server.consecutive_failures = 0
        for pool in self.worker.pools.values():
            if server in pool.connections:
                pool.balancer.refresh(now)
        if available:
            for callback in self.on_available:
                callback(server)
        for listener in self.on_availability_change:
            listener()
