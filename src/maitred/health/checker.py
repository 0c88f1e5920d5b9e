"""The active checker: one asyncio task per checked server, on the control side.

The checker only runs checks and reports results through ``on_result(server_id,
ok, detail)``; turning results into states is the ``HealthMonitor``'s job. The
set of servers comes from ``set_targets``, called at start and after every
reload or server change: it starts tasks for new targets, stops the tasks of
removed ones, restarts those whose settings changed and leaves the rest
running undisturbed, so calling it again with the same targets does nothing.

Each server is checked every ``interval`` (jittered), or every
``fast_interval`` while ``wants_fast_checks(server_id)`` says so (the monitor
says so while a server is failing, unhealthy or recovering), which shortens
both the time to take a dying server out and the time to bring it back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from maitred.health.probe import probe
from maitred.health.schedule import first_check_delay, next_check_delay
from maitred.health.spec import CheckSpec

__all__ = ["ActiveChecker", "CheckTarget", "ResultCallback", "targets_from_pools"]

log = logging.getLogger("maitred.health")

#: ``(server_id, ok, detail)``, called after every check.
ResultCallback = Callable[[str, bool, str], None]


@dataclass(frozen=True, slots=True)
class CheckTarget:
    server_id: str
    host: str
    port: int
    check: CheckSpec
    #: TLS to the server, as the pool's traffic uses (None: plain).
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    server_hostname: str | None = None


def targets_from_pools(
    pools: Mapping[str, object],
    server_id: Callable[[str, str, int], str],
    tls_for: Callable[[Any], ssl.SSLContext | None] = lambda pool: None,
) -> list[CheckTarget]:
    """One target per server of every pool with a ``health_check`` (config ``Pool`` objects).

    ``server_id(pool_name, host, port)`` names servers the way the data plane does.
    """
    targets = []
    for pool_name, pool in pools.items():
        health_check = getattr(pool, "health_check", None)
        pool_spec = CheckSpec.from_config(health_check) if health_check is not None else None
        for server in getattr(pool, "servers", ()):
            # A server's own health_check_path (admin API) overrides the pool's path, and
            # checks it with the default settings when the pool has no health_check.
            path = getattr(server, "health_check_path", None)
            if pool_spec is None and path is None:
                continue
            spec = pool_spec or CheckSpec()
            if path is not None:
                spec = replace(spec, path=path)
            host, port = server.address.host, server.address.port
            tls = tls_for(pool)
            pool_tls = getattr(pool, "tls", None)
            name = (pool_tls.sni or host) if tls is not None and pool_tls is not None else None
            targets.append(
                CheckTarget(server_id(pool_name, host, port), host, port, spec, tls, name)
            )
    return targets


class ActiveChecker:
    def __init__(
        self,
        on_result: ResultCallback,
        *,
        wants_fast_checks: Callable[[str], bool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._on_result = on_result
        self._wants_fast_checks = wants_fast_checks or (lambda _server_id: False)
        self._rng = rng if rng is not None else random.Random()
        self._targets: dict[str, CheckTarget] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Cancelled but maybe not finished yet; close() waits for them too.
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def targets(self) -> dict[str, CheckTarget]:
        return dict(self._targets)

    def running(self) -> set[str]:
        """The ids of the servers whose check task is alive."""
        return {server_id for server_id, task in self._tasks.items() if not task.done()}

    def set_targets(self, targets: Iterable[CheckTarget]) -> None:
        """Make ``targets`` the checked servers (needs a running event loop)."""
        if self._closed:
            raise RuntimeError("the checker is closed")
        wanted: dict[str, CheckTarget] = {}
        for target in targets:
            if target.server_id in wanted:
                raise ValueError(f"server id {target.server_id!r} given twice")
            wanted[target.server_id] = target
        for server_id in list(self._targets):
            if wanted.get(server_id) != self._targets[server_id]:
                self._stop(server_id)
        loop = asyncio.get_running_loop()
        for server_id, target in wanted.items():
            if server_id not in self._targets:
                self._targets[server_id] = target
                self._tasks[server_id] = loop.create_task(
                    self._check_forever(target), name=f"health-check {server_id}"
                )

    def _stop(self, server_id: str) -> None:
        del self._targets[server_id]
        task = self._tasks.pop(server_id)
        task.cancel()
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stop every check and wait until none is running."""
        self._closed = True
        for server_id in list(self._targets):
            self._stop(server_id)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    def _interval(self, target: CheckTarget) -> float:
        check = target.check
        return check.fast_interval if self._wants_fast_checks(target.server_id) else check.interval

    async def _check_forever(self, target: CheckTarget) -> None:
        await asyncio.sleep(first_check_delay(self._interval(target), self._rng))
        while True:
            result = await probe(
                target.host, target.port, target.check, target.tls, target.server_hostname
            )
            try:
                self._on_result(target.server_id, result.ok, result.detail)
            except Exception:
                log.exception("health result handler failed for server %s", target.server_id)
            await asyncio.sleep(next_check_delay(self._interval(target), self._rng))
