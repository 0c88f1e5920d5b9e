"""HTTP/2 termination: maitred against HAProxy 2.6, measured with h2load.

Both terminate h2 over TLS (ALPN h2) and forward HTTP/1.1 over keep-alive
connections to the same four origin nginx ports (bench/origins.py), one
worker/thread each. h2load opens ``--clients`` connections and keeps 1, then 100,
streams in flight on each; the table gives each target's median req/s over the
rounds and the median of the per-round maitred/HAProxy ratios.

    python -m bench.h2_bench                      # 3 rounds x 8 s per cell
    python -m bench.h2_bench --rounds 1 --seconds 5 --clients 10

A change to the h2 path is measured against the code before it in the same run
(the machine is shared, so figures from different runs do not compare): put
the old tree's ``src`` somewhere and name it; a third target runs from it and
the table gains a new/old column.

    mkdir -p /tmp/before && git archive HEAD src | tar -x -C /tmp/before
    python -m bench.h2_bench --rounds 2 --seconds 5 --before-src /tmp/before/src
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

from bench import origins, targets
from bench.processes import (
    Supervisor,
    cpu_plan,
    free_port,
    fresh_directory,
    pinned,
    wait_until_serving,
)
from bench.tls_files import TlsFiles, generate
from bench.tools import require

WORKDIR = Path(__file__).resolve().parent / "out" / "run-h2"
STREAMS = (1, 100)
BEFORE = "maitred-before"
_RATE = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def start_haproxy(
    supervisor: Supervisor,
    workdir: Path,
    origin_ports: list[int],
    tls: TlsFiles,
    cpus: str | None,
) -> targets.Target:
    port, tls_port = free_port(), free_port()
    conf = workdir / "haproxy-h2.cfg"
    conf.write_text(
        targets.haproxy_config(port, origin_ports, tls_port, tls).replace(
            "alpn http/1.1", "alpn h2,http/1.1"
        )
    )
    child = supervisor.start(
        targets.HAPROXY, [require("haproxy"), "-f", str(conf), "-db"], workdir / "haproxy.log", cpus
    )
    if not wait_until_serving(child, port, "/", targets.START_TIMEOUT_SECONDS):
        raise SystemExit(f"HAProxy did not start:\n{child.log_tail()}")
    return targets.Target(targets.HAPROXY, port, child, tls_port=tls_port)


def start_maitred_from(
    supervisor: Supervisor,
    workdir: Path,
    origin_ports: list[int],
    tls: TlsFiles,
    cpus: str | None,
    source: Path,
) -> targets.Target:
    """maitred imported from another source tree (``source`` holds ``maitred/``)."""
    port, tls_port = free_port(), free_port()
    conf = workdir / "maitred-before.yaml"
    conf.write_text(targets.maitred_config(port, origin_ports, tls_port, tls))
    env = {**os.environ, "PYTHONPATH": str(source)}
    argv = [sys.executable, "-m", "maitred", "run", "-c", str(conf)]
    child = supervisor.start(BEFORE, argv, workdir / "maitred-before.log", cpus, env)
    if not wait_until_serving(child, port, "/", targets.START_TIMEOUT_SECONDS):
        raise SystemExit(f"maitred from {source} did not start:\n{child.log_tail()}")
    return targets.Target(BEFORE, port, child, tls_port=tls_port)


def h2load(
    port: int, clients: int, streams: int, seconds: float, cpus: str | None
) -> tuple[float, int]:
    """req/s and non-2xx answers of one h2load run over h2 (TLS, ALPN)."""
    argv = [
        *pinned(cpus),
        require("h2load"),
        "--duration",
        str(round(seconds)),
        "--warm-up-time",
        "1",
        "--clients",
        str(clients),
        "--threads",
        "1",
        "--max-concurrent-streams",
        str(streams),
        f"https://127.0.0.1:{port}/",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout + done.stderr
    rate = _RATE.search(out)
    status = _STATUS.search(out)
    if rate is None or status is None:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    if "application protocol: h2" not in out.lower():
        raise RuntimeError(f"h2load did not negotiate h2:\n{out}")
    failed = sum(int(n) for n in status.groups()[1:])
    return float(rate.group(1)), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=10, help="h2load connections")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--before-src",
        type=Path,
        help="also run maitred from this source tree (holding maitred/) and compare",
    )
    args = parser.parse_args()
    workdir = fresh_directory(WORKDIR)
    load_cpus, proxy_cpu, pinning = cpu_plan(not args.no_pin)
    results: dict[tuple[str, int], list[float]] = {}
    ratios: dict[int, list[float]] = {m: [] for m in STREAMS}
    gains: dict[int, list[float]] = {m: [] for m in STREAMS}
    with Supervisor() as supervisor:
        tls = generate(workdir)
        origin = origins.start(supervisor, workdir, load_cpus)
        maitred = targets.start(targets.MAITRED, supervisor, workdir, origin.ports, proxy_cpu, tls)
        if not maitred.available:
            raise SystemExit(f"maitred did not start: {maitred.problem}")
        haproxy = start_haproxy(supervisor, workdir, origin.ports, tls, proxy_cpu)
        measured_targets = [maitred, haproxy]
        if args.before_src is not None:
            before = start_maitred_from(
                supervisor, workdir, origin.ports, tls, proxy_cpu, args.before_src.resolve()
            )
            measured_targets.insert(1, before)
        for round_number in range(args.rounds):
            for streams in STREAMS:
                measured = {}
                for target in measured_targets:
                    rate, failed = h2load(
                        target.tls_port, args.clients, streams, args.seconds, load_cpus
                    )
                    if failed:
                        print(f"  ! {target.name}: {failed} non-2xx answers")
                    measured[target.name] = rate
                    results.setdefault((target.name, streams), []).append(rate)
                ratio = measured[targets.MAITRED] / measured[targets.HAPROXY]
                ratios[streams].append(ratio)
                line = (
                    f"round {round_number + 1}, {streams} stream(s)/connection: "
                    f"maitred {measured[targets.MAITRED]:,.0f} req/s, "
                    f"HAProxy {measured[targets.HAPROXY]:,.0f} req/s, ratio {ratio:.2f}"
                )
                if BEFORE in measured:
                    gain = measured[targets.MAITRED] / measured[BEFORE]
                    gains[streams].append(gain)
                    line += f"; before {measured[BEFORE]:,.0f} req/s, new/before {gain:.2f}"
                print(line, flush=True)
    print()
    print(f"h2 over TLS, {args.clients} connections, {args.rounds} x {args.seconds:g} s")
    print(f"pinning: {pinning}")
    compare = args.before_src is not None
    print(
        "| streams/connection | maitred req/s | HAProxy 2.6 req/s | maitred/HAProxy |"
        + (" before req/s | before/HAProxy | new/before |" if compare else "")
    )
    print("|---:|---:|---:|---:|" + ("---:|---:|---:|" if compare else ""))
    for streams in STREAMS:
        haproxy_rate = statistics.median(results[(targets.HAPROXY, streams)])
        row = (
            f"| {streams} | {statistics.median(results[(targets.MAITRED, streams)]):,.0f} "
            f"| {haproxy_rate:,.0f} | {statistics.median(ratios[streams]):.2f} |"
        )
        if compare:
            before_rates = results[(BEFORE, streams)]
            haproxy_rates = results[(targets.HAPROXY, streams)]
            before_ratios = [b / h for b, h in zip(before_rates, haproxy_rates, strict=True)]
            row += (
                f" {statistics.median(before_rates):,.0f} "
                f"| {statistics.median(before_ratios):.2f} "
                f"| {statistics.median(gains[streams]):.2f} |"
            )
        print(row)


if __name__ == "__main__":
    main()
