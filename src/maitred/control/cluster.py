"""Active-active: the runtime changes of every instance kept in step through Redis.

With ``cluster: {redis: URL}`` each change committed through this instance's
admin API (servers and pools added, removed, re-weighted, drained...) is
published (:mod:`maitred.control.cluster_store`), and every change published by
another instance is installed here (:mod:`maitred.control.cluster_apply`),
never published again. What a message, a snapshot or a heartbeat means is
decided by :class:`~maitred.control.cluster_sync.ClusterReplica`.

A session with Redis: subscribe to the channel, read the whole state (a new
instance catches up here), publish what is still pending, then follow the
channel while heartbeats run. When Redis fails the session ends: the instance keeps
serving with what it has (and keeps accepting admin changes, published later),
logs it once, and tries again with a growing delay; the next session resyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from maitred.config.model import ClusterSettings
from maitred.control.cluster_apply import install_overlay
from maitred.control.cluster_store import ClusterStore
from maitred.control.cluster_sync import ChangeMessage, ClusterReplica, Step, flatten, unflatten
from maitred.control.overlay import Overlay

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from maitred.control.supervisor import Supervisor

log = logging.getLogger("maitred.cluster")

#: Seconds between heartbeats (version check, peer list, liveness of Redis).
HEARTBEAT_INTERVAL = 1.0
#: A node not heard from for this long is no longer listed as a peer.
PEER_TTL = 5.0
#: Delays between attempts to reach Redis: doubling from the first to the last.
RETRY_FIRST = 0.25
RETRY_MAX = 5.0
#: How long a starting instance waits for its first sync before serving without it.
START_WAIT = 3.0
_UNREACHABLE = (RedisError, OSError, TimeoutError)


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ClusterLink:
    def __init__(self, settings: ClusterSettings, supervisor: Supervisor) -> None:
        self.settings = settings
        self.supervisor = supervisor
        self.node_id = settings.node_id or default_node_id()
        self.replica = ClusterReplica()
        self.store = ClusterStore(settings)
        self.redis_up = False
        self.peers: list[str] = []
        #: Set after the first attempt to reach Redis, whether it synced or failed.
        self._first_attempt = asyncio.Event()
        self._news = asyncio.Event()
        #: One resync or message application at a time.
        self._sync_lock = asyncio.Lock()
        #: One publication at a time, so none goes out twice.
        self._publish_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._reported_down = False

    # -- life -------------------------------------------------------------------------

    async def start(self, wait: float = START_WAIT) -> None:
        """Follow the cluster; wait up to ``wait`` seconds for the first attempt to sync."""
        self.supervisor.runtime.on_commit.append(self._committed)
        self._task = asyncio.get_running_loop().create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), wait)
        if not self.redis_up:
            log.warning(
                "cluster: not synced with %s yet; serving with this instance's runtime "
                "changes until it is",
                self.store.where,
            )

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.supervisor.runtime.on_commit.remove(self._committed)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.redis_up:
            with contextlib.suppress(*_UNREACHABLE):
                await asyncio.wait_for(self.store.leave(self.node_id), 1.0)
        await self.store.close()

    def status(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "redis": "up" if self.redis_up else "down",
            "node_id": self.node_id,
            "peers": [peer for peer in self.peers if peer != self.node_id],
            "version": self.replica.followed,
            "pending_changes": len(self.replica.pending),
        }

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "maitred_cluster_redis_up", "1 while the cluster's Redis answers, else 0."
        )
        up.add_metric([], 1.0 if self.redis_up else 0.0)
        version = GaugeMetricFamily(
            "maitred_cluster_version", "The last cluster version this instance followed."
        )
        version.add_metric([], float(self.replica.followed))
        pending = GaugeMetricFamily(
            "maitred_cluster_pending_changes",
            "Runtime changes made here and not yet published (Redis unreachable).",
        )
        pending.add_metric([], float(len(self.replica.pending)))
        yield from (up, version, pending)

    # -- sessions ---------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                await self._session()
            except _UNREACHABLE as exc:
                if self.redis_up or not self._reported_down:
                    log.error(
                        "cluster: Redis at %s unreachable (%s); serving with the runtime "
                        "changes known so far, retrying",
                        self.store.where,
                        str(exc) or type(exc).__name__,
                    )
            except Exception:
                log.exception("cluster: following %s failed; retrying", self.store.where)
            if self.redis_up:
                delay = RETRY_FIRST
            self._reported_down = True
            self.redis_up = False
            self._first_attempt.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _session(self) -> None:
        async with self.store.subscription() as pubsub:
            # Read first, publish after: a Redis that lost its data is seen empty (and
            # seeded with everything this instance has), and the resync keeps what is
            # still pending here on top of the cluster's state.
            async with self._sync_lock:
                await self._resync()
            await self._publish_pending()
            if self._reported_down:
                log.info("cluster: Redis at %s reachable again; resynced", self.store.where)
            self._reported_down = False
            self.redis_up = True
            self._first_attempt.set()
            await _first_failure(
                [self._follow(pubsub), self._publishing(), self._heartbeats()],
            )

    async def _follow(self, pubsub: PubSub) -> None:
        while True:
            message = await self.store.next_message(pubsub)
            if isinstance(message, bytes):
                log.error("cluster: unreadable change message ignored: %r", message[:200])
                continue
            async with self._sync_lock:
                await self._receive_locked(message)

    async def _publishing(self) -> None:
        while True:
            await self._news.wait()
            self._news.clear()
            await self._publish_pending()

    async def _heartbeats(self) -> None:
        while True:
            version, nodes = await self.store.heartbeat(self.node_id, time.time(), PEER_TTL)
            self.peers = nodes
            if self.replica.needs_resync(version):
                async with self._sync_lock:
                    log.info("cluster: behind version %s; reading the whole state", version)
                    await self._resync()
                await self._publish_pending()
            await asyncio.sleep(HEARTBEAT_INTERVAL)

    # -- the steps ----------------------------------------------------------------------

    def _committed(self, before: Overlay, after: Overlay) -> None:
        if self.replica.record_local(before, after):
            self._news.set()

    async def _publish_pending(self) -> None:
        async with self._publish_lock:
            while self.replica.pending:
                changes = self.replica.to_publish()
                version = await self.store.publish(self.node_id, changes)
                self.replica.published(changes, version)
                log.info("cluster: published version %s (%s changes)", version, len(changes))

    async def _resync(self) -> None:
        snapshot = await self.store.snapshot()
        runtime = self.supervisor.runtime
        async with runtime.lock:
            flat = flatten(runtime.overlay)
            target = self.replica.resync(snapshot, flat)
            if target != flat:
                log.info(
                    "cluster: installing the cluster's runtime changes (version %s)",
                    snapshot.version,
                )
                await self._install(target)
        if snapshot.version == 0 and self.replica.pending:
            log.info("cluster: empty; seeding it with this instance's runtime changes")

    async def _receive_locked(self, message: ChangeMessage) -> None:
        runtime = self.supervisor.runtime
        async with runtime.lock:
            step: Step = self.replica.receive(message, flatten(runtime.overlay))
            if step.action == "apply":
                log.info("cluster: applying version %s from %s", message.version, message.node)
                await self._install(step.flat)
        if step.action == "resync":
            log.warning(
                "cluster: missed changes before version %s; reading the whole state",
                message.version,
            )
            await self._resync()

    async def _install(self, flat: dict[str, Any]) -> None:
        # Half an applied configuration is worse than a late one: when the session is
        # cancelled (Redis went away) meanwhile, the install still finishes first.
        install = asyncio.ensure_future(install_overlay(self.supervisor, unflatten(flat)))
        try:
            await asyncio.shield(install)
        except asyncio.CancelledError:
            await asyncio.gather(install, return_exceptions=True)
            raise
        except Exception:  # keep following the cluster whatever one change did
            log.exception("cluster: installing a change failed")


async def _first_failure(coroutines: list[Coroutine[Any, Any, None]]) -> None:
    """Run ``coroutines`` until one of them raises; cancel the others and raise it."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if exc is not None:
            raise exc
