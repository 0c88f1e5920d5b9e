"""`python -m bench`: maitred, HAProxy and NGINX side by side over the same origins."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from bench import load, origins, report, scenarios, targets, tls_files, tools
from bench.processes import Supervisor, cpu_plan, fresh_directory

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(scenarios.SCENARIOS),
        help="run only this scenario (repeatable; default: all but the opt-in "
        + ", ".join(scenarios.OPT_IN_SCENARIOS)
        + ")",
    )
    parser.add_argument(
        "--all", action="store_true", help="every scenario, the opt-in ones included"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A B C (default 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per run (default 10)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 3 s")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--targets",
        default=",".join(targets.ALL_TARGETS),
        help="comma-separated subset of " + ",".join(targets.ALL_TARGETS),
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--results",
        type=Path,
        help="where to write the report (default bench/RESULTS.md; bench/out/ with --quick)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 3.0
    if args.results is None:
        args.results = OUT_DIR / "RESULTS-quick.md" if args.quick else BENCH_DIR / "RESULTS.md"
    unknown = set(args.targets.split(",")) - set(targets.ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    return args


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the Supervisor, which stops every child


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    tools.ensure_installed(["haproxy", "nginx", "wrk", "h2load", "taskset", "openssl"])
    order = list(scenarios.SCENARIOS)
    chosen = order if args.all else args.scenario or scenarios.DEFAULT_SCENARIOS
    names = sorted(set(chosen), key=order.index)
    load_cpus, proxy_cpus, pinning = cpu_plan(not args.no_pin)
    workdir = fresh_directory(OUT_DIR / "run")
    settings = scenarios.Settings(
        seconds=args.duration,
        rounds=args.rounds,
        warmup_seconds=load.warmup_seconds(args.duration),
        connections=args.connections,
        threads=args.threads,
        load_cpus=load_cpus,
        workdir=workdir,
        proxy_cpus=proxy_cpus,
    )
    notes: list[str] = []
    load_at_start = tools.load_average()
    with Supervisor() as supervisor:
        pool = origins.start(supervisor, workdir, load_cpus)
        tls = tls_files.generate(workdir)
        started = [
            targets.start(
                name, supervisor, workdir, pool.ports, proxy_cpus, tls, tcp="tcp" in names
            )
            for name in args.targets.split(",")
        ]
        for target in started:
            if not target.available:
                notes.append(f"{target.name} {target.problem}")
                print(f"bench: {target.name} {target.problem}", file=sys.stderr)
        bench = scenarios.Bench(
            settings,
            [t for t in started if t.available],
            notes,
            supervisor=supervisor,
            origin_ports=pool.ports,
        )
        rows = scenarios.run(names, bench)

    notes += [
        tools.load_at_start_note(load_at_start),
        "Open-source NGINX has no active health checks (only passive max_fails); "
        "HAProxy and maitred check GET /health every 2 s.",
        "Headers: every target adds what maitred adds by contract, X-Forwarded-For, "
        "X-Forwarded-Proto, X-Forwarded-Host and X-Request-Id to requests and X-Request-Id "
        "to answers (HAProxy: set-header and unique-id-format, NGINX: proxy_set_header, "
        "$request_id and add_header), except HAProxy-xff, which adds X-Forwarded-For only, "
        "as the benchmarks did before 2026-11-27. Goals compare with HAProxy.",
        f"Throughput: wrk -t{args.threads} -c{args.connections}, {args.rounds} round(s) of "
        f"{args.duration:g} s per target in rotation after a {settings.warmup_seconds:g} s "
        "warm-up each; 'close' sends Connection: close on every request.",
        "Origins: one nginx process, one worker, four ports; / answers 6 bytes, /50k 51,200.",
        "Ratio columns and goals: the median over rounds of the ratio (or, for p99, the "
        "difference) within each round, where the targets ran back to back; values are "
        "medians over rounds. Other work on this shared machine moves absolute numbers "
        "between rounds: see every round above.",
    ]
    facts = {**tools.machine(), **tools.versions(), "pinning": pinning}
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    facts[tools.LOAD_AT_END] = tools.load_average()
    text = report.results_markdown(rows, command, date, facts, notes, bench.sections)
    report.write(args.results, text)
    print(report.table(rows))
    print(f"\nbench: wrote {args.results}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every child was already stopped on the way out
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
