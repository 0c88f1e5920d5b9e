"""What the admin API shows: servers, pools and totals as JSON-able dicts.

Everything here reads; nothing changes the balancer. Rates and averages are
taken over the last ``RATE_WINDOW`` seconds from the sampler's ring.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from maitred.balancing.base import LiveServer
from maitred.config import Config, ServerConfig
from maitred.control.health import HealthControl
from maitred.control.stats import (
    PoolCounters,
    Sample,
    Sampler,
    ServerCounters,
    bucket_deltas,
    error_share,
    percentiles_ms,
    rate,
    sum_buckets,
)
from maitred.control.worker import Worker, server_id
from maitred.health import HealthState

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_UNHEALTHY_STATES = (HealthState.UNHEALTHY, HealthState.RECOVERING)


@dataclass(frozen=True, slots=True)
class ServerRef:
    """One server of the effective configuration, found by its id."""

    id: str
    pool: str
    config: ServerConfig

    @property
    def address(self) -> str:
        return str(self.config.address)


def iter_servers(config: Config) -> Iterator[ServerRef]:
    for pool_name, pool in config.pools.items():
        for server in pool.servers:
            sid = server_id(pool_name, server.address.host, server.address.port)
            yield ServerRef(sid, pool_name, server)


def find_server(config: Config, sid: str) -> ServerRef | None:
    return next((ref for ref in iter_servers(config) if ref.id == sid), None)


def pool_users(config: Config, pool_name: str) -> list[str]:
    """Where ``pool_name`` is used: ``listeners[0]`` or ``listeners[0].routes[1]``."""
    users = []
    for index, listener in enumerate(config.listeners):
        if listener.pool == pool_name:
            users.append(f"listeners[{index}] ({listener.name})")
        for route_index, route in enumerate(listener.routes):
            if route.pool == pool_name:
                users.append(f"listeners[{index}].routes[{route_index}] ({listener.name})")
    return users


class Views:
    def __init__(
        self,
        worker: Worker,
        health: HealthControl,
        sampler: Sampler,
        leaving: dict[tuple[str, str], Any],
    ) -> None:
        self.worker = worker
        self.health = health
        self.sampler = sampler
        self._leaving = leaving

    # -- servers ------------------------------------------------------------------

    def server_status(self, ref: ServerRef) -> dict[str, Any]:
        """status (the contract's four words) and the inputs it comes from."""
        state = self.health.admin_states.get(ref.id, "ready")
        leaving = (ref.pool, ref.address) in self._leaving
        health = self.health.monitor.state(ref.id)
        detector = self.health.detectors.get(ref.pool)
        ejected = detector is not None and detector.is_ejected(ref.id)
        if leaving or state == "drain":
            status = "draining"
        elif state == "maint":
            status = "maint"
        elif ejected or health in _UNHEALTHY_STATES:
            status = "unhealthy"
        else:
            status = "healthy"
        return {
            "status": status,
            "state": "drain" if leaving else state,
            "health": str(health) if health is not None else "unchecked",
            "ejected": ejected,
            "removing": leaving,
        }

    def server(
        self, ref: ServerRef, current: Sample | None = None, base: Sample | None = None
    ) -> dict[str, Any]:
        if current is None:
            current = self.sampler.now()
            base = self.sampler.baseline(current)
        live = self._live().get(ref.id)
        counters = current.servers.get(ref.id)
        old = base.servers.get(ref.id) if base is not None else None
        seconds = current.at - base.at if base is not None else 0.0
        answers = list(counters.answers) if counters is not None else [0] * 6
        return {
            "id": ref.id,
            "pool": ref.pool,
            "host": ref.config.address.host,
            "port": ref.config.address.port,
            "address": ref.address,
            "weight": ref.config.weight,
            "backup": ref.config.backup,
            "health_check_path": ref.config.health_check_path,
            **self.server_status(ref),
            "available": bool(live is not None and live.available),
            "active_connections": live.active if live is not None else 0,
            "requests_per_second": _rounded(
                rate(counters.requests, old.requests if old else 0, seconds) if counters else 0.0
            ),
            "avg_response_time_ms": self._server_latency_ms(
                ref, live, counters, old, current, base
            ),
            "error_rate": _rounded(error_share(answers, old.answers if old else None)),
            "total_requests": counters.requests if counters is not None else 0,
            "responses": dict(zip(STATUS_CLASSES, answers[1:6], strict=True)),
        }

    def servers(self, config: Config, pool: str | None = None) -> list[dict[str, Any]]:
        current = self.sampler.now()
        base = self.sampler.baseline(current)
        return [
            self.server(ref, current, base)
            for ref in iter_servers(config)
            if pool is None or ref.pool == pool
        ]

    def _server_latency_ms(
        self,
        ref: ServerRef,
        live: LiveServer | None,
        counters: ServerCounters | None,
        old: ServerCounters | None,
        current: Sample,
        base: Sample | None,
    ) -> float:
        if counters is not None and counters.latency_sum is not None:
            done = (counters.requests - counters.active) - (
                (old.requests - old.active) if old is not None else 0
            )
            spent = counters.latency_sum - (old.latency_sum or 0.0 if old is not None else 0.0)
            return _rounded(spent / done * 1000) if done > 0 else 0.0
        if live is not None and live.ewma > 0:
            return _rounded(live.ewma * 1000)
        # Without a per-server figure, the pool's average over the window.
        return self._pool_average_ms(ref.pool, current, base)

    # -- pools --------------------------------------------------------------------

    def pool(
        self,
        config: Config,
        name: str,
        current: Sample | None = None,
        base: Sample | None = None,
        *,
        runtime_pools: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        if current is None:
            current = self.sampler.now()
            base = self.sampler.baseline(current)
        pool_config = config.pools[name]
        runtime = self.worker.pools.get(name)
        counters = current.pools.get(name)
        old = base.pools.get(name) if base is not None else None
        seconds = current.at - base.at if base is not None else 0.0
        refs = [ref for ref in iter_servers(config) if ref.pool == name]
        latency = bucket_deltas(
            counters.latency_counts if counters else [], old.latency_counts if old else None
        )
        answers = sum_buckets(
            current.servers[ref.id].answers for ref in refs if ref.id in current.servers
        )
        old_answers = (
            sum_buckets(base.servers[ref.id].answers for ref in refs if ref.id in base.servers)
            if base is not None
            else None
        )
        live = self._live()
        return {
            "name": name,
            "algorithm": pool_config.algorithm,
            "servers": [ref.id for ref in refs],
            "available_servers": sum(
                1 for ref in refs if ref.id in live and live[ref.id].available
            ),
            "active_connections": sum(live[ref.id].active for ref in refs if ref.id in live),
            "requests_per_second": _rounded(
                rate(counters.requests, old.requests if old else 0, seconds) if counters else 0.0
            ),
            "total_requests": counters.requests if counters else 0,
            "retries": counters.retries if counters else 0,
            "queued": len(runtime.waiting) if runtime is not None else 0,
            "avg_response_time_ms": self._pool_average_ms(name, current, base),
            "latency_ms": percentiles_ms(latency),
            "error_rate": _rounded(
                error_share(answers[:6], old_answers[:6] if old_answers else None)
            ),
            "used_by": pool_users(config, name),
            "source": "runtime" if name in runtime_pools else "file",
        }

    def _pool_average_ms(self, name: str, current: Sample, base: Sample | None) -> float:
        counters = current.pools.get(name)
        old = base.pools.get(name) if base is not None else None
        return _average_ms([counters] if counters else [], [old] if old else [])

    # -- totals -------------------------------------------------------------------

    def totals(self, config: Config) -> dict[str, Any]:
        current = self.sampler.now()
        base = self.sampler.baseline(current)
        seconds = current.at - base.at if base is not None else 0.0
        requests = sum(c.requests for c in current.pools.values())
        old_requests = (
            sum(base.pools[name].requests for name in current.pools if name in base.pools)
            if base is not None
            else 0
        )
        answers = sum_buckets(c.answers for c in current.servers.values())
        old_answers = (
            sum_buckets(base.servers[sid].answers for sid in current.servers if sid in base.servers)
            if base is not None
            else None
        )
        latency = sum_buckets(
            bucket_deltas(
                counters.latency_counts,
                base.pools[name].latency_counts
                if base is not None and name in base.pools
                else None,
            )
            for name, counters in current.pools.items()
        )
        statuses = [self.server_status(ref)["status"] for ref in iter_servers(config)]
        olds = [base.pools[name] for name in current.pools if base and name in base.pools]
        return {
            "total_requests": requests,
            "requests_per_second": _rounded(rate(requests, old_requests, seconds)),
            "active_connections": current.client_connections,
            "active_requests": sum(c.active for c in current.servers.values()),
            "avg_response_time_ms": _average_ms(list(current.pools.values()), olds),
            "latency_ms": percentiles_ms(latency),
            "error_rate": _rounded(
                error_share(answers[:6], old_answers[:6] if old_answers else None)
            ),
            "backends_healthy": statuses.count("healthy"),
            "backends_unhealthy": statuses.count("unhealthy"),
            "backends_draining": statuses.count("draining"),
            "backends_maint": statuses.count("maint"),
            "retries": sum(c.retries for c in current.pools.values()),
            "window_seconds": round(seconds, 3),
        }

    def history(self, seconds: int) -> dict[str, Any]:
        """One point per sampled second: rates, error rate, latency percentiles."""
        samples = list(self.sampler.samples)[-(seconds + 1) :]
        points = []
        for old, new in zip(samples, samples[1:], strict=False):
            span = new.at - old.at
            answers_new = sum_buckets(c.answers for c in new.servers.values())
            answers_old = sum_buckets(
                old.servers[sid].answers for sid in new.servers if sid in old.servers
            )
            latency = sum_buckets(
                bucket_deltas(
                    c.latency_counts,
                    old.pools[name].latency_counts if name in old.pools else None,
                )
                for name, c in new.pools.items()
            )
            pools = {
                name: _rounded(
                    rate(c.requests, old.pools[name].requests if name in old.pools else 0, span)
                )
                for name, c in new.pools.items()
            }
            points.append(
                {
                    "time": round(new.wall, 3),
                    "requests_per_second": _rounded(sum(pools.values())),
                    "error_rate": _rounded(error_share(answers_new, answers_old)),
                    "latency_ms": percentiles_ms(latency),
                    "active_connections": new.client_connections,
                    "pools": pools,
                }
            )
        return {"interval_seconds": 1, "points": points}

    def _live(self) -> dict[str, LiveServer]:
        return {server.id: server for _, server in self.worker.servers()}


def _average_ms(current: list[PoolCounters], old: list[PoolCounters]) -> float:
    done = sum(c.completed for c in current) - sum(o.completed for o in old)
    spent = sum(c.latency_sum for c in current) - sum(o.latency_sum for o in old)
    return _rounded(spent / done * 1000) if done > 0 else 0.0


def _rounded(value: float) -> float:
    return round(value, 3)
