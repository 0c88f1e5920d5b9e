"""The control side of a maitred process: configuration, signals, admin, stop.

It owns the configuration and hands immutable copies to the data side (one
in-process worker today; several worker processes fed through a control
channel later). SIGHUP re-reads the file; SIGTERM/SIGINT drain and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, Metric

from maitred.config import Config, ConfigError
from maitred.config.file_checks import base_dir_of, load_checked_config
from maitred.control.admin import AdminServer
from maitred.control.cluster import ClusterLink
from maitred.control.health import HealthControl
from maitred.control.overlay import resolve_state_file
from maitred.control.processes import WorkerProcesses, worker_count
from maitred.control.runtime import RuntimeChanges
from maitred.control.tls_metrics import CertificateExpiry
from maitred.control.warmup import ConnectionWarmup
from maitred.control.worker import Worker
from maitred.policies.sticky_secret import sticky_secret_for
from maitred.tls.watch import FileWatcher

log = logging.getLogger("maitred")


class Supervisor:
    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        #: The effective configuration: the file's plus the runtime changes (admin API).
        self.config = config
        #: The configuration as the file (or the flags) says it.
        self.file_config = config
        self.config_path = config_path
        self.runtime = RuntimeChanges(resolve_state_file(config, config_path))
        self.worker: Worker | None = None
        #: With `workers` above 1: the worker processes (self.worker is then their mirror).
        self.processes: WorkerProcesses | None = None
        self.health: HealthControl | None = None
        self.warmup: ConnectionWarmup | None = None
        self.admin: AdminServer | None = None
        self.tls_watch: FileWatcher | None = None
        #: With `cluster`: runtime changes shared with the other instances (active-active).
        self.cluster: ClusterLink | None = None
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[bool] | None = None
        #: Called once listeners are bound (tests and `maitred demo` use it).
        self.on_ready: Callable[[Supervisor], None] | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        count = worker_count(self.file_config.workers)
        self.worker = Worker(loop, serving=count == 1)
        base_dir = base_dir_of(self.config_path) if self.config_path is not None else None
        if base_dir is not None:
            self.worker.tls.base_dir = base_dir
        self.health = HealthControl(loop, self.worker)
        if count == 1:
            # With several workers, each worker process warms its own connections.
            self.warmup = ConnectionWarmup(loop, self.worker)
            self.health.on_available.append(self.warmup.server_available)
        else:
            self.processes = WorkerProcesses(loop, count, self.worker, self.health, base_dir)
            self.health.on_availability_change.append(self.processes.broadcast_availability)
        self.config = self.runtime.effective(self.file_config)
        await self._apply(self.config)
        # Renewed certificates go into service without a reload (issue 7).
        self.tls_watch = FileWatcher(self.worker.tls.files, self.worker.reload_tls_files)
        self.tls_watch.start()
        if self.config.admin is not None:
            self.admin = AdminServer(self)
            expiry = CertificateExpiry(self.worker.tls, lambda: self.config)
            self.admin.collector.sources.append(expiry.collect)
            if self.processes is not None:
                self.admin.collector.sources.append(self._worker_metrics)
            await self.admin.start(self.config.admin.bind.host, self.config.admin.bind.port)
        if self.file_config.cluster is not None:
            # After the admin API: servers the cluster removed drain through it.
            self.cluster = ClusterLink(self.file_config.cluster, self)
            await self.cluster.start()
            if self.admin is not None:
                self.admin.collector.sources.append(self.cluster.collect)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        log.info("maitred ready")
        if self.on_ready is not None:
            self.on_ready(self)
        await self._stop.wait()
        return await self._shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """Re-read the configuration file; keep the running one when it is invalid."""
        return not await self.reload_file()

    async def reload_file(self) -> list[str]:
        """Re-read the file and replay the runtime changes on it; the problems if refused."""
        if self.config_path is None:
            log.info("reload requested, but no configuration file is in use")
            return ["no configuration file is in use"]
        try:
            config, warnings = await asyncio.to_thread(load_checked_config, self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            return [str(problem) for problem in exc.problems]
        for warning in warnings:
            log.warning("%s", warning)
        if self.cluster is not None and config.cluster != self.cluster.settings:
            log.warning("cluster settings changed: they take effect at the next restart")
        async with self.runtime.lock:
            effective = self.runtime.effective(config)
            try:
                await self._apply(effective)
            except OSError as exc:
                log.error("reload failed, keeping the running configuration: %s", exc)
                await self._apply(self.config)
                return [str(exc)]
            self.file_config = config
            self.config = effective
        log.info("configuration reloaded from %s", self.config_path)
        return []

    async def _apply(self, config: Config) -> None:
        assert self.worker is not None and self.health is not None
        self.health.admin_states = self.runtime.admin_states(config)
        self.health.prepare(config)
        if not self.worker.sticky_secret:
            # Sticky sessions (issue 6): loaded once, kept for the process lifetime.
            self.worker.sticky_secret = sticky_secret_for(config)
        await self.worker.apply(config)
        self.health.start(config)
        if self.warmup is not None:
            self.warmup.apply(config)
        if self.processes is not None:
            await self.processes.apply(config)

    async def _shutdown(self) -> int:
        assert self.worker is not None
        if self.cluster is not None:
            await self.cluster.close()
        log.info("stopping: draining in-flight requests (up to %ss)", self.config.drain_timeout)
        if self.processes is not None:
            drained = await self.processes.stop(self.config.drain_timeout)
        else:
            drained = await self.worker.drain(self.config.drain_timeout)
        if not drained:
            log.warning("drain timeout reached; remaining connections were closed")
        if self.tls_watch is not None:
            self.tls_watch.stop()
        if self.health is not None:
            await self.health.close()
        if self.admin is not None:
            await self.admin.close()
        log.info("stopped")
        return 0

    def _worker_metrics(self) -> Iterable[Metric]:
        assert self.processes is not None
        accepted = CounterMetricFamily(
            "maitred_worker_connections_accepted",
            "Client connections each worker process accepted.",
            labels=["worker"],
        )
        for index, count in sorted(self.processes.accepted_by_worker().items()):
            accepted.add_metric([str(index)], count)
        yield accepted

    def _readiness(self) -> tuple[bool, dict[str, object]]:
        worker = self.worker
        if worker is None:
            return False, {"reason": "starting"}
        if self._stop.is_set():
            # Draining: keepalived and orchestrators should move traffic away now.
            return False, {"problems": ["stopping: draining in-flight requests"]}
        not_ready = []
        bound = self.processes.sockets if self.processes is not None else worker.listeners
        for listener in self.config.listeners:
            if listener.name not in bound:
                not_ready.append(f"listener {listener.name} not bound")
                continue
            pool_name = listener.pool
            if pool_name is None:
                continue
            pool = worker.pools.get(pool_name)
            if pool is None or not any(s.available for s in pool.balancer.servers):
                not_ready.append(f"pool {pool_name} has no available server")
        return not not_ready, {"problems": not_ready}
