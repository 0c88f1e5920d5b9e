"""Propagation latency of admin changes between two maitred instances sharing one Redis.

Run from the project root: `python -m bench.cluster_propagation [ROUNDS]`. Measures
the time from instance A's admin API answering (201/200/204) until instance B's
`GET /api/v1/servers` shows the change, polled in a tight loop (one HTTP request,
about 1 ms, per poll). Reuses the test suite's process helpers (real backends, real
maitred processes, a throwaway redis-server).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.admin import admin_config, api, servers_by_id
from tests.support.backends import start_backends
from tests.support.balancer import BalancerProcess
from tests.support.redis_server import running_redis

PROPAGATION_LIMIT_SECONDS = 5.0


def until(condition: Callable[[], bool]) -> float:
    began = time.perf_counter()
    while not condition():
        if time.perf_counter() - began > PROPAGATION_LIMIT_SECONDS:
            raise SystemExit("not propagated within 5 s")
    return time.perf_counter() - began


def report(name: str, seconds: list[float]) -> None:
    ms = sorted(x * 1000 for x in seconds)
    p95 = ms[max(0, int(len(ms) * 0.95) - 1)]
    print(
        f"{name:22s} n={len(ms)} median={statistics.median(ms):.1f} ms "
        f"p95={p95:.1f} ms max={ms[-1]:.1f} ms"
    )


def main(rounds: int) -> None:
    work = Path(tempfile.mkdtemp())
    backends = start_backends(2)
    instances: list[BalancerProcess] = []
    with running_redis(work / "redis") as redis:
        try:
            for node in ("a", "b"):
                text = admin_config(
                    backends[:1],
                    work / f"state-{node}",
                    top_extra=f"cluster: {{redis: {redis.url}, node_id: {node}}}",
                )
                (work / node).mkdir()
                instances.append(BalancerProcess(text, work / node))
            a, b = instances
            extra = backends[1]
            sid = f"web-{extra.host}-{extra.port}"
            add, patch, delete = [], [], []
            for i in range(rounds):
                body = {"host": extra.host, "port": extra.port}
                assert api(a, "POST", "/api/v1/servers", body).status == 201
                add.append(until(lambda: sid in servers_by_id(b)))
                weight = 2 + i % 50
                assert api(a, "PATCH", f"/api/v1/servers/{sid}", {"weight": weight}).status == 200
                patch.append(until(lambda: servers_by_id(b)[sid]["weight"] == weight))  # noqa: B023
                assert api(a, "DELETE", f"/api/v1/servers/{sid}").status == 204
                delete.append(until(lambda: sid not in servers_by_id(b)))
                until(lambda: sid not in servers_by_id(a))
            report("add", add)
            report("patch weight", patch)
            report("delete (incl. drain)", delete)
        finally:
            for instance in instances:
                instance.kill()
            for backend in backends:
                backend.kill()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
