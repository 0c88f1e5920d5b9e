"""`python -m bench.rate_limit_bench`: what a rate limit costs maitred.

Four measurements, printed as Markdown (and written to bench/out/rate-limit.md):

- memory: 1,000,000 keys in one in-process limit table (IPv4 client addresses,
  then 32-byte header values), in a fresh interpreter: bytes per key by
  tracemalloc and by RSS, and the time of one check (a hot key; a new key).
- hotpath: the data plane's Python cost per request, in process without sockets
  (the method of bench.hotpath_bench), with and without a memory limit; and
  the CPU one Redis check costs maitred, for pipelines of 1, 10 and 50 checks.
- throughput: wrk -t1 -c50 keep-alive GET / through a real maitred with no
  limit, a memory limit on the client address, a memory limit on a header
  with a new value per request, and a Redis limit on the client address.
  Limits are set high (nothing is refused): this is the price of deciding.
- latency: h2load at a fixed rate (half of the unlimited throughput), p50/p99,
  for the same targets but the header one: the latency Redis adds.

Targets run in rotation (A B C D, A B C D...) and the medians are reported, as
`python -m bench` does. Needs nginx (origins), wrk, h2load, redis-server;
installs the missing ones with apt-get when root.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from bench import load, origins, procfs, tools
from bench.processes import (
    Child,
    Supervisor,
    cpu_plan,
    free_port,
    fresh_directory,
    pinned,
    wait_until_serving,
)
from bench.targets import maitred_argv

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
KEY_COUNT = 1_000_000

# A new X-Key per request: every request is a new key for the limit table.
DISTINCT_KEYS_LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", {["X-Key"] = string.format("%032d", counter)})
end
"""

HIGH_LIMIT = "{rate: 1000000000, per: 1s}"
TARGETS = {
    "none": None,
    "memory": HIGH_LIMIT,
    "memory, new key per request": "{key: header:X-Key, rate: 1000000000, per: 1s}",
    "redis": HIGH_LIMIT,
}


# -- memory --------------------------------------------------------------------------


def memory_figures(count: int, kind: str) -> dict[str, float]:
    """Measured in this interpreter, which must be fresh (RSS): see measure_memory."""
    from maitred.policies.gcra import GcraRate
    from maitred.policies.rate_limit_table import LocalLimiter

    rate = GcraRate.of(1, 3600.0, 10)  # keys stay busy for the whole run
    now = 1000.0
    figures: dict[str, float] = {}
    # Pass 1, plain: RSS of keys plus table, and the time of a check.
    gc.collect()
    rss_before = procfs.rss_kib(os.getpid())
    keys: list[str | bytes]
    if kind == "ipv4":
        keys = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(count)]
    else:
        keys = [b"%032d" % i for i in range(count)]
    limiter = LocalLimiter(rate, max_keys=count)
    started = time.perf_counter()
    for key in keys:
        limiter.check(key, now)
    figures[f"{kind} new key µs"] = (time.perf_counter() - started) / count * 1e6
    figures[f"{kind} RSS bytes/key"] = (procfs.rss_kib(os.getpid()) - rss_before) * 1024 / count
    hot = keys[count // 2]
    rounds = 200_000
    started = time.perf_counter()
    for step in range(rounds):
        limiter.check(hot, now + step * 1e-6)
    figures[f"{kind} hot key µs"] = (time.perf_counter() - started) / rounds * 1e6
    assert len(limiter) == count
    del limiter
    # Pass 2, traced: the bytes the table itself allocates (keys excluded).
    gc.collect()
    tracemalloc.start()
    limiter = LocalLimiter(rate, max_keys=count)
    for key in keys:
        limiter.check(key, now)
    figures[f"{kind} table bytes/key"] = tracemalloc.get_traced_memory()[0] / count
    tracemalloc.stop()
    figures[f"{kind} key bytes/key"] = sum(sys.getsizeof(key) for key in keys) / count
    return figures


def measure_memory(count: int) -> dict[str, float]:
    """Each kind of key in a fresh interpreter, so RSS starts from the same place."""
    _, env = maitred_argv(Path("."))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCH_DIR.parent), env.get("PYTHONPATH", "")) if p
    )
    figures: dict[str, float] = {}
    for kind in ("ipv4", "header"):
        say(f"memory: {count:,} {kind} keys")
        argv = [sys.executable, "-m", "bench.rate_limit_bench", "memory", "--keys", str(count)]
        result = subprocess.run(
            [*argv, "--json", kind], capture_output=True, text=True, env=env, check=True
        )
        figures.update(json.loads(result.stdout))
    return figures


# -- Python cost per request, in process ---------------------------------------------

HOTPATH_LIMITS = {
    "none": None,
    "memory": "{rate: 1000000000, per: 1s}",
    "memory, headers: false": "{rate: 1000000000, per: 1s, headers: false}",
    "memory, header key": "{key: header:X-Key, rate: 1000000000, per: 1s}",
}


def hotpath_figures(requests: int) -> dict[str, float]:
    """µs of Python per request through the data plane, no sockets (best of 3 each).

    The method of bench.hotpath_bench, with a rate limit on the listener.
    """
    import asyncio

    import uvloop

    from bench.hotpath_bench import SMALL_RESPONSE, MemoryTransport
    from maitred.config import parse_config_text
    from maitred.control.worker import Worker
    from maitred.proxy.http1 import ClientConnection
    from maitred.proxy.upstream import UpstreamConnection

    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Key: 0123456789abcdef\r\n\r\n"
    figures = {}
    for name, limit in HOTPATH_LIMITS.items():
        rate_limit = f"\n    rate_limit: {limit}" if limit else ""
        config = f"""
listeners:
  - name: public
    bind: "127.0.0.1:0"
    pool: web{rate_limit}
pools:
  web:
    servers: [{{address: "127.0.0.1:9"}}]
"""

        async def build(
            config: str = config,
        ) -> tuple[ClientConnection, UpstreamConnection, Worker]:
            worker = Worker(asyncio.get_running_loop())
            await worker.apply(parse_config_text(config))
            pool = worker.pools["web"]
            servers = pool.connections[pool.balancer.servers[0]]
            upstream = UpstreamConnection(servers)
            upstream.connection_made(MemoryTransport())  # type: ignore[arg-type]
            servers.give_back(upstream, asyncio.get_running_loop().time())
            client = ClientConnection(worker.plane, worker.listeners["public"].slot)
            client.connection_made(MemoryTransport())  # type: ignore[arg-type]
            return client, upstream, worker

        best = math.inf
        for _ in range(3):
            loop = uvloop.new_event_loop()
            asyncio.set_event_loop(loop)
            client, upstream, worker = loop.run_until_complete(build())
            for _ in range(1000):
                client.data_received(request)
                upstream.data_received(SMALL_RESPONSE)
            started = time.perf_counter()
            for _ in range(requests):
                client.data_received(request)
                upstream.data_received(SMALL_RESPONSE)
            best = min(best, (time.perf_counter() - started) / requests * 1e6)
            worker.stop_listening()
            loop.close()
        figures[name] = best
    return figures


def redis_store_figures(url: str, batches: int) -> dict[str, float]:
    """CPU µs per check of RedisStore, for pipelines of 1, 10 and 50 checks."""
    import asyncio

    import uvloop

    from maitred.config import RateLimitStore
    from maitred.policies.rate_limit_redis import RedisStore

    async def measure(size: int) -> float:
        store = RedisStore(RateLimitStore(redis=url), asyncio.get_running_loop())
        keys = [[b"maitred:rl:bench:i:10.0.0.%d" % i] for i in range(size)]
        args = [1, 1_000_000_000]

        async def one_batch() -> None:
            done = asyncio.get_running_loop().create_future()
            left = [size]

            def answered(reply: object) -> None:
                left[0] -= 1
                if not left[0]:
                    done.set_result(None)

            for key in keys:
                store.submit(key, args, answered)
            await done

        await one_batch()
        started = time.process_time()
        for _ in range(batches):
            await one_batch()
        used = time.process_time() - started
        await store.close()
        return used / (batches * size) * 1e6

    return {f"batch {size}": uvloop.run(measure(size)) for size in (1, 10, 50)}


# -- through maitred -------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    child: Child
    runs: dict[str, list[float]] = field(default_factory=dict)

    def record(self, metric: str, value: float) -> None:
        self.runs.setdefault(metric, []).append(value)

    def median(self, metric: str) -> float:
        values = [v for v in self.runs.get(metric, []) if not math.isnan(v)]
        return median(values) if values else math.nan


def maitred_config(port: int, origin_ports: list[int], rate_limit: str | None, redis: str) -> str:
    servers = "\n".join(f"      - {{address: 127.0.0.1:{p}}}" for p in origin_ports)
    limit = f"    rate_limit: {rate_limit}\n" if rate_limit else ""
    store = f"rate_limit_store: {{redis: {redis}}}\n" if redis else ""
    return f"""workers: 1
{store}listeners:
  - name: bench
    bind: 127.0.0.1:{port}
    pool: origins
    timeouts: {{idle: 120s}}
{limit}pools:
  origins:
    algorithm: round_robin
    servers:
{servers}
"""


def start_redis(supervisor: Supervisor, workdir: Path, cpus: str | None) -> tuple[Child, str]:
    port = free_port()
    redis_dir = workdir / "redis"
    redis_dir.mkdir()
    argv = [
        tools.require("redis-server"),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(redis_dir),
    ]
    child = supervisor.start("redis", argv, workdir / "redis.log", cpus)
    deadline = time.monotonic() + 10
    while "Ready to accept connections" not in child.log_path.read_text():
        if time.monotonic() > deadline or not child.alive():
            raise SystemExit(f"bench: redis-server did not start:\n{child.log_tail()}")
        time.sleep(0.05)  # another process's log: no event to await
    return child, f"redis://127.0.0.1:{port}/0"


def start_target(
    name: str,
    supervisor: Supervisor,
    workdir: Path,
    origin_ports: list[int],
    redis_url: str,
    cpus: str | None,
) -> Target:
    port = free_port()
    slug = name.replace(",", "").replace(" ", "-")
    conf_path = workdir / f"maitred-{slug}.yaml"
    conf_path.write_text(
        maitred_config(port, origin_ports, TARGETS[name], redis_url if name == "redis" else "")
    )
    argv, env = maitred_argv(conf_path)
    child = supervisor.start(name, argv, workdir / f"maitred-{slug}.log", cpus, env)
    if not wait_until_serving(child, port, "/", 15):
        raise SystemExit(f"bench: maitred ({name}) did not start:\n{child.log_tail()}")
    return Target(name, port, child)


def wrk(target: Target, seconds: float, load_cpus: str | None, workdir: Path) -> load.WrkResult:
    url = f"http://127.0.0.1:{target.port}/"
    argv = load.wrk_command(url, seconds, 50, 1)
    if target.name == "memory, new key per request":
        script = workdir / "distinct-keys.lua"
        script.write_text(DISTINCT_KEYS_LUA)
        argv[1:1] = ["-s", str(script)]
    result = subprocess.run(
        [*pinned(load_cpus), *argv], capture_output=True, text=True, timeout=seconds + 60
    )
    return load.parse_wrk(result.stdout + result.stderr)


@dataclass
class Results:
    memory: dict[str, float] | None = None
    hotpath: dict[str, float] | None = None
    redis_store: dict[str, float] | None = None
    targets: list[Target] = field(default_factory=list)
    fixed_rate: float = 0.0
    notes: list[str] = field(default_factory=list)


def through_maitred(args: argparse.Namespace, results: Results) -> None:
    tools.ensure_installed(["nginx", "wrk", "h2load", "taskset"])
    if tools.which("redis-server") is None:
        raise SystemExit("bench: redis-server not found (apt-get install redis-server)")
    load_cpus, proxy_cpus, _ = cpu_plan(not args.no_pin)
    workdir = fresh_directory(OUT_DIR / "rate-limit-run")
    notes = results.notes
    with Supervisor() as supervisor:
        pool = origins.start(supervisor, workdir, load_cpus)
        _, redis_url = start_redis(supervisor, workdir, load_cpus)
        say("redis store: CPU per check")
        results.redis_store = redis_store_figures(redis_url, 2000)
        targets = results.targets = [
            start_target(name, supervisor, workdir, pool.ports, redis_url, proxy_cpus)
            for name in TARGETS
        ]
        for target in targets:
            wrk(target, 2, load_cpus, workdir)  # warm-up
        for round_index in range(args.rounds):
            for target in targets:
                say(f"throughput round {round_index + 1}/{args.rounds}: {target.name}")
                cpu_before = procfs.cpu_seconds(target.child.pid)
                result = wrk(target, args.duration, load_cpus, workdir)
                cpu = procfs.cpu_seconds(target.child.pid) - cpu_before
                target.record("req/s", result.requests_per_second)
                target.record("CPU µs/req", 1e6 * cpu / max(1, result.requests))
                if result.errors:
                    notes.append(f"{target.name}: {result.errors} errors in round {round_index}")
        rate = results.fixed_rate = targets[0].median("req/s") / 2
        for round_index in range(args.rounds):
            for target in targets:
                if target.name == "memory, new key per request":
                    continue  # h2load sends one fixed request
                say(f"latency round {round_index + 1}/{args.rounds}: {target.name}")
                fixed = load.run_h2load(
                    f"http://127.0.0.1:{target.port}/",
                    rate,
                    args.duration,
                    20,
                    workdir / "h2load.log",
                    load_cpus,
                )
                target.record("p50 ms", fixed.p50_ms)
                target.record("p99 ms", fixed.p99_ms)
                if fixed.errors:
                    notes.append(f"{target.name}: {fixed.errors} h2load errors")
        for target in targets:
            if not target.child.alive():
                notes.append(f"{target.name} exited:\n{target.child.log_tail()}")


# -- report ----------------------------------------------------------------------------


def report(results: Results, args: argparse.Namespace) -> str:
    lines = [
        "# Rate limit cost",
        "",
        f"Command: `python -m bench.rate_limit_bench {args.what} --rounds {args.rounds} "
        f"--duration {args.duration:g}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}.",
        "",
    ]
    memory = results.memory
    if memory:
        lines += [
            f"## Memory of {args.keys:,} keys in one limit (in process)",
            "",
            "| key | table B/key | key object B/key | RSS B/key | new key µs | hot key µs |",
            "|---|---|---|---|---|---|",
        ]
        for kind, label in (("ipv4", "IPv4 address"), ("header", "32-byte header value")):
            lines.append(
                f"| {label} | {memory[f'{kind} table bytes/key']:.0f} "
                f"| {memory[f'{kind} key bytes/key']:.0f} "
                f"| {memory[f'{kind} RSS bytes/key']:.0f} "
                f"| {memory[f'{kind} new key µs']:.2f} | {memory[f'{kind} hot key µs']:.2f} |"
            )
        lines.append("")
    if results.hotpath:
        base = results.hotpath["none"]
        lines += [
            "## Python cost per request (data plane in process, no sockets; best of 3)",
            "",
            "| limit | µs/request | added µs |",
            "|---|---|---|",
            *(
                f"| {name} | {cost:.2f} | {cost - base:+.2f} |"
                for name, cost in results.hotpath.items()
            ),
            "",
        ]
    if results.redis_store:
        lines += [
            "## Redis store: maitred CPU per check (one pipeline per event-loop iteration)",
            "",
            "| checks per pipeline | CPU µs/check |",
            "|---|---|",
            *(f"| {name} | {cost:.1f} |" for name, cost in results.redis_store.items()),
            "",
        ]
    targets = results.targets
    if targets:
        base_target = targets[0]
        lines += [
            "## Through maitred (medians; nothing refused)",
            "",
            f"wrk -t1 -c50 keep-alive; latency by h2load at a fixed {results.fixed_rate:,.0f} "
            "req/s (half the unlimited throughput), 20 connections.",
            "",
            "| limit | req/s | vs none | CPU µs/req | p50 ms | p99 ms | added p50 | added p99 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for target in targets:
            rps = target.median("req/s")
            p50, p99 = target.median("p50 ms"), target.median("p99 ms")
            lines.append(
                f"| {target.name} | {rps:,.0f} | {rps / base_target.median('req/s'):.2f} "
                f"| {target.median('CPU µs/req'):.1f} | {p50:.2f} | {p99:.2f} "
                f"| {p50 - base_target.median('p50 ms'):+.2f} "
                f"| {p99 - base_target.median('p99 ms'):+.2f} |"
            )
        lines += ["", "Every round:", ""]
        for target in targets:
            runs = "; ".join(
                f"{metric} " + ", ".join(f"{v:,.2f}" for v in values)
                for metric, values in target.runs.items()
            )
            lines.append(f"- {target.name}: {runs}")
    if results.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in results.notes)]
    return "\n".join(lines) + "\n"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rate_limit_bench", description=__doc__)
    parser.add_argument(
        "what", nargs="?", choices=["all", "memory", "hotpath", "load"], default="all"
    )
    parser.add_argument("--keys", type=int, default=KEY_COUNT)
    parser.add_argument("--requests", type=int, default=200_000, help="hotpath requests")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", choices=["ipv4", "header"], help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.json:  # the fresh interpreter of measure_memory
        print(json.dumps(memory_figures(args.keys, args.json)))
        return 0
    results = Results()
    if args.what in ("all", "memory"):
        results.memory = measure_memory(args.keys)
    if args.what in ("all", "hotpath"):
        say("hotpath: Python cost per request")
        results.hotpath = hotpath_figures(args.requests)
    if args.what in ("all", "load"):
        through_maitred(args, results)
    text = report(results, args)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "rate-limit.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
