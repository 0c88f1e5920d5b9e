"""The ceiling: maitred beside HAProxy and a plain uvloop + httptools forwarder.

    python -m bench.ceiling              # 3 rounds x 8 s (~4 min), writes bench/RESULTS-ceiling.md
    python -m bench.ceiling --rounds 5 --duration 10
    python -m bench.ceiling --quick      # smoke: 1 round x 2 s, bench/out/RESULTS-ceiling-quick.md
    python -m bench.ceiling --work-us 4 7.5   # plus forwarders spinning 4 and 7.5 µs per read

Issue 3 compares maitred with HAProxy. This asks a second question beside it: how
far is maitred, with all its features, from what a Python proxy on the same stack
can do at all? The yardstick is `bench/reference_forwarder.py` (one upstream
connection per client connection, bytes through unchanged, no checks, no headers
added). The three run over the same four nginx origins, each as one process on
the proxy CPU, pinned as `python -m bench` pins them:

- **small**: keep-alive GET `/` (6-byte answer), wrk -t1 -c50;
- **50k**: keep-alive GET `/50k` (51,200-byte answer);
- **https**: keep-alive GET `/` over TLS (each proxy terminates TLS, plain HTTP to
  the origins).

For each scenario: a warm-up per target, then rounds of maitred, HAProxy, forwarder.
Each run records req/s and the proxy's user and system CPU time per request
(utime and stime from /proc/PID/stat, summed over the process tree, before and
after the wrk run). The report gives medians over rounds and, as ratios, the
median of per-round ratios (bench/report.py's Row.paired_ratio), then the CPU
split: where a proxy's time goes, in its own code (user) or in the kernel (sys).

With `--work-us N [N ...]`, one more forwarder per N (named `forwarder+Nµs`) runs
in the rotation after the plain one: the same forwarder spinning N µs of CPU per
client read (one request per read here), a stand-in for a proxy's own work per
request. If maitred lands where a forwarder with maitred's extra user time per
request lands, its gap to the ceiling is that user-space work, and nothing else.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import FrameType

from bench import load, origins, procfs, tls_files, tools
from bench.processes import Supervisor, cpu_plan, free_port, fresh_directory, wait_until_serving
from bench.procfs import CpuTicks
from bench.report import Row, format_number, format_ratio, write
from bench.targets import (
    HAPROXY,
    MAITRED,
    PROJECT_ROOT,
    START_TIMEOUT_SECONDS,
    Target,
    checkout_env,
)
from bench.targets import start as start_target
from bench.tls_files import TlsFiles

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
DEFAULT_RESULTS = BENCH_DIR / "RESULTS-ceiling.md"
QUICK_RESULTS = OUT_DIR / "RESULTS-ceiling-quick.md"

FORWARDER = "forwarder"
TARGETS = (MAITRED, HAPROXY, FORWARDER)  # rotation order within a round; then --work-us ones
WRK_CONNECTIONS = 50
WRK_THREADS = 1

REQUESTS = "req/s"
USER = "user µs/req"
SYSTEM = "sys µs/req"
TOTAL = "total µs/req"
BUSY = "proxy CPU %"
METRICS = (REQUESTS, USER, SYSTEM, TOTAL, BUSY)


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str
    tls: bool
    goal: float  # issue 3: maitred / HAProxy at least this


SCENARIOS = (
    Scenario("small", "/", False, 1.0),
    Scenario("50k", "/50k", False, 1.2),
    Scenario("https", "/", True, 0.9),
)


# -- one run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One wrk run through one proxy."""

    requests_per_second: float
    user_us: float  # proxy user CPU µs per request
    system_us: float  # proxy system CPU µs per request
    busy_percent: float  # proxy CPU time / wrk's duration
    errors: int


def run_figures(
    requests: int,
    requests_per_second: float,
    seconds: float,
    before: CpuTicks,
    after: CpuTicks,
    ticks_per_second: int,
    errors: int = 0,
) -> Run:
    """Per-request CPU split from two readings around a run of `requests` requests."""
    used = after - before
    user_s, system_s = used.user / ticks_per_second, used.system / ticks_per_second
    per_request = 1e6 / requests if requests else math.nan
    return Run(
        requests_per_second,
        user_s * per_request,
        system_s * per_request,
        100 * (user_s + system_s) / seconds if seconds else math.nan,
        errors,
    )


# -- results --------------------------------------------------------------------------


def work_target(work_us: float) -> str:
    """The name of the forwarder run with --work-us `work_us`: forwarder+7.5µs."""
    return f"{FORWARDER}+{work_us:g}µs"


class Results:
    """A Row per (scenario, metric); every target gets a value per round, NaN if none.

    `extra_targets` (forwarders with --work-us) come after TARGETS in the tables.
    """

    def __init__(
        self, scenarios: tuple[Scenario, ...] = SCENARIOS, extra_targets: tuple[str, ...] = ()
    ) -> None:
        self.scenarios = scenarios
        self.extra_targets = extra_targets
        self.targets = (*TARGETS, *extra_targets)
        self.rows = {(s.name, m): Row(s.name, m) for s in scenarios for m in METRICS}

    def row(self, scenario: str, metric: str) -> Row:
        return self.rows[(scenario, metric)]

    def add(self, scenario: str, target: str, run: Run | None) -> None:
        values = {metric: math.nan for metric in METRICS}
        if run is not None:
            values = {
                REQUESTS: run.requests_per_second,
                USER: run.user_us,
                SYSTEM: run.system_us,
                TOTAL: run.user_us + run.system_us,
                BUSY: run.busy_percent,
            }
        for metric, value in values.items():
            self.row(scenario, metric).runs.setdefault(target, []).append(value)


def _goal_cell(ratio: float | None, goal: float) -> str:
    if ratio is None:
        return "n/a"
    return "yes" if ratio >= goal else "**no**"


def throughput_table(results: Results) -> str:
    header = [
        "scenario",
        *(f"{t} req/s" for t in results.targets),
        f"{MAITRED}/{HAPROXY}",
        f"{FORWARDER}/{HAPROXY}",
        *(f"{t}/{HAPROXY}" for t in results.extra_targets),
        f"{MAITRED}/{FORWARDER}",
        "goal (issue 3)",
        f"{MAITRED} meets it",
        f"{FORWARDER} would",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario in results.scenarios:
        row = results.row(scenario.name, REQUESTS)
        maitred_ratio = row.paired_ratio(MAITRED, HAPROXY)
        forwarder_ratio = row.paired_ratio(FORWARDER, HAPROXY)
        cells = [
            scenario.name,
            *(format_number(row.median(t)) for t in results.targets),
            format_ratio(maitred_ratio),
            format_ratio(forwarder_ratio),
            *(format_ratio(row.paired_ratio(t, HAPROXY)) for t in results.extra_targets),
            format_ratio(row.paired_ratio(MAITRED, FORWARDER)),
            f"≥ {scenario.goal:g}× {HAPROXY}",
            _goal_cell(maitred_ratio, scenario.goal),
            _goal_cell(forwarder_ratio, scenario.goal),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(results: Results) -> str:
    header = ["scenario", "target", USER, SYSTEM, TOTAL, f"total / {HAPROXY}", BUSY]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario in results.scenarios:
        total = results.row(scenario.name, TOTAL)
        for target in results.targets:
            cells = [
                scenario.name,
                target,
                format_number(results.row(scenario.name, USER).median(target)),
                format_number(results.row(scenario.name, SYSTEM).median(target)),
                format_number(total.median(target)),
                format_ratio(total.paired_ratio(target, HAPROXY)),
                format_number(results.row(scenario.name, BUSY).median(target)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def every_round(results: Results) -> str:
    lines = []
    for scenario in results.scenarios:
        for metric in METRICS:
            row = results.row(scenario.name, metric)
            values = "; ".join(
                f"{t} " + ", ".join(format_number(v) for v in row.runs.get(t, []))
                for t in results.targets
            )
            lines.append(f"- {scenario.name} {metric}: {values}")
    return "\n".join(lines)


def results_markdown(
    results: Results, command: str, date: str, facts: dict[str, str], notes: list[str]
) -> str:
    machine = "\n".join(f"- {name}: {value}" for name, value in facts.items())
    notes_text = "\n".join(f"- {note}" for note in notes)
    return f"""# The ceiling: maitred, HAProxy and a plain forwarder

Command: `{command}` (from the project root), {date}.

How far maitred, with all its features, is from what a plain Python forwarder on
the same stack (uvloop + httptools, `bench/reference_forwarder.py`) can do at all,
with HAProxy as the reference of issue 3.

## Machine

{machine}

## Throughput (medians over rounds; ratios: median of per-round ratios)

{throughput_table(results)}

## Where the proxy's CPU time goes (per request, medians over rounds)

User is the proxy's own code (Python and the C under it, or HAProxy's C; TLS
encryption counts here too); sys is the kernel working for it (socket reads and
writes, epoll). Each column is its own median, so user + sys may differ slightly
from total.

{cpu_table(results)}

## Every round

{every_round(results)}

## Notes

{notes_text}
"""


def terminal_tables(results: Results) -> str:
    return f"{throughput_table(results)}\n\n{cpu_table(results)}"


# -- running ------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    seconds: float
    rounds: int
    warmup_seconds: float
    load_cpus: str | None


def start_forwarder(
    supervisor: Supervisor,
    workdir: Path,
    origin_ports: list[int],
    cpus: str | None,
    tls: TlsFiles,
    work_us: float | None = None,
) -> Target:
    """The plain forwarder, or with `work_us` the one spinning that much per read."""
    name, log_name = FORWARDER, "forwarder.log"
    if work_us is not None:
        name, log_name = work_target(work_us), f"forwarder-work-{work_us:g}us.log"
    port, tls_port = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "bench.reference_forwarder",
        "--port",
        str(port),
        "--origins",
        ",".join(str(p) for p in origin_ports),
        "--cert",
        str(tls.cert),
        "--key",
        str(tls.key),
        "--tls-port",
        str(tls_port),
    ]
    if work_us is not None:
        argv += ["--work-us", f"{work_us:g}"]
    env = checkout_env()
    env["PYTHONPATH"] = os.pathsep.join((str(PROJECT_ROOT), env["PYTHONPATH"]))
    child = supervisor.start(name, argv, workdir / log_name, cpus, env)
    if wait_until_serving(child, port, "/", START_TIMEOUT_SECONDS):
        return Target(name, port, child, tls_port=tls_port)
    problem = child.log_tail(5) or "did not answer 200 on /"
    supervisor.stop(child)
    return Target(name, port, None, f"not available: {problem}")


def work_note(work_us: list[float]) -> str:
    """The report's note on the --work-us forwarders."""
    names = ", ".join(work_target(us) for us in work_us)
    return (
        f"{names}: the same forwarder started with `--work-us N`, which spins N µs of CPU "
        "(a busy loop on time.perf_counter_ns) after parsing each client read, before "
        "forwarding it. wrk sends one request per read on each keep-alive connection, so "
        "that is N µs of user time per request: a stand-in for a proxy's own work per "
        "request (maitred's routing, headers, balancing, bookkeeping). Where a forwarder "
        f"spinning about maitred's extra user µs/req (maitred's minus the {FORWARDER}'s) "
        "lands on maitred's req/s and sys µs/req, maitred's distance from the ceiling is "
        "that user-space work; sys time per request grows with the spin as well, since "
        "a slower proxy lets wrk and the origins go idle and be woken more often."
    )


def url(target: Target, scenario: Scenario) -> str:
    if scenario.tls:
        return f"https://127.0.0.1:{target.tls_port}{scenario.path}"
    return f"http://127.0.0.1:{target.port}{scenario.path}"


def measure(target: Target, scenario: Scenario, seconds: float, cpus: str | None) -> Run | str:
    """One wrk run with the proxy's CPU time around it; a reason when it gave nothing."""
    if not target.available:
        return f"{target.name} is not running"
    before = procfs.cpu_ticks(target.pid)
    try:
        result = load.run_wrk(
            url(target, scenario), seconds, WRK_CONNECTIONS, WRK_THREADS, (), cpus
        )
    except ValueError as error:  # wrk printed no result: the target stopped answering
        return f"wrk failed: {str(error).strip()[:200]}"
    after = procfs.cpu_ticks(target.pid)
    return run_figures(
        result.requests,
        result.requests_per_second,
        result.seconds,
        before,
        after,
        procfs.CLOCK_TICKS_PER_SECOND,
        result.errors,
    )


def run_scenario(
    scenario: Scenario, started: list[Target], settings: Settings, results: Results
) -> list[str]:
    notes: list[str] = []
    for target in started:
        if target.available:
            say(f"{scenario.name}: warm-up {target.name}")
            measure(target, scenario, settings.warmup_seconds, settings.load_cpus)
    for round_index in range(settings.rounds):
        for target in started:
            say(f"{scenario.name} round {round_index + 1}/{settings.rounds}: {target.name}")
            outcome = measure(target, scenario, settings.seconds, settings.load_cpus)
            if isinstance(outcome, str):
                notes.append(f"{scenario.name}, round {round_index + 1}, {target.name}: {outcome}")
                results.add(scenario.name, target.name, None)
                continue
            results.add(scenario.name, target.name, outcome)
            say(
                f"  {outcome.requests_per_second:,.0f} req/s, user {outcome.user_us:.1f} + "
                f"sys {outcome.system_us:.1f} µs/req"
            )
            if outcome.errors:
                notes.append(
                    f"{scenario.name}, round {round_index + 1}: {target.name} had "
                    f"{outcome.errors} wrk errors (socket errors or non-2xx answers)"
                )
    return notes


def say(message: str) -> None:
    print(f"ceiling: {message}", file=sys.stderr, flush=True)


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ceiling",
        description="maitred beside HAProxy and a plain uvloop + httptools forwarder.",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of A B C (default 3)")
    parser.add_argument("--duration", type=float, default=8, help="seconds per run (default 8)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--work-us",
        type=float,
        nargs="+",
        default=[],
        metavar="N",
        help="also run, per N, a forwarder spinning N µs of CPU per client read "
        "(forwarder+Nµs): a stand-in for a proxy's per-request work, e.g. maitred's",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help=f"where to write the report (default {DEFAULT_RESULTS.relative_to(PROJECT_ROOT)}; "
        f"{QUICK_RESULTS.relative_to(PROJECT_ROOT)} with --quick)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2.0
    if args.results is None:
        args.results = QUICK_RESULTS if args.quick else DEFAULT_RESULTS
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be at least 1 and --duration above 0")
    if not all(math.isfinite(us) and us >= 0 for us in args.work_us):
        parser.error("--work-us takes microseconds, 0 or more")
    names = [work_target(us) for us in args.work_us]
    if len(set(names)) != len(names):
        parser.error("--work-us: the same value twice")
    return args


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the Supervisor, which stops every child


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = parse_args(arguments)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    tools.ensure_installed(["haproxy", "nginx", "wrk", "taskset", "openssl"])
    load_cpus, proxy_cpus, pinning = cpu_plan(not args.no_pin)
    settings = Settings(
        seconds=args.duration,
        rounds=args.rounds,
        warmup_seconds=load.warmup_seconds(args.duration),
        load_cpus=load_cpus,
    )
    workdir = fresh_directory(OUT_DIR / "ceiling-run")
    results = Results(extra_targets=tuple(work_target(us) for us in args.work_us))
    notes: list[str] = []
    load_at_start = tools.load_average()
    with Supervisor() as supervisor:
        pool = origins.start(supervisor, workdir, load_cpus)
        tls = tls_files.generate(workdir)
        started = [
            start_target(name, supervisor, workdir, pool.ports, proxy_cpus, tls)
            for name in (MAITRED, HAPROXY)
        ]
        started.append(start_forwarder(supervisor, workdir, pool.ports, proxy_cpus, tls))
        started += [
            start_forwarder(supervisor, workdir, pool.ports, proxy_cpus, tls, us)
            for us in args.work_us
        ]
        for target in started:
            if target.available:
                processes = len(procfs.descendants(target.pid))
                notes.append(
                    f"{target.name} ran as {processes} process{'es' if processes > 1 else ''} "
                    "at start (CPU is summed over the process tree either way)."
                )
            else:
                notes.append(f"{target.name} {target.problem}")
                say(f"{target.name} {target.problem}")
        for scenario in SCENARIOS:
            notes += run_scenario(scenario, started, settings, results)

    notes += [
        tools.load_at_start_note(load_at_start),
        f"Throughput: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, {args.rounds} round(s) of "
        f"{args.duration:g} s per target in rotation ({', '.join(results.targets)}) after a "
        f"{settings.warmup_seconds:g} s warm-up of each, per scenario.",
        "maitred and HAProxy run as configured by `python -m bench` (one worker/thread, "
        "round robin, health checks every 2 s, X-Forwarded-For, keep-alive both sides). "
        "The forwarder (bench/reference_forwarder.py) has one upstream connection per "
        "client connection, chosen round robin at accept, and passes bytes through "
        "unchanged: no health checks, no headers added. It is a yardstick, not a product.",
        "HTTPS: each proxy terminates TLS with the same ECDSA P-256 certificate "
        "(HAProxy's OpenSSL, maitred's and the forwarder's uvloop TLS transport); "
        "the origins are plain HTTP.",
        "CPU: utime and stime from /proc/PID/stat of the proxy and its descendants, read "
        f"before and after each wrk run ({procfs.CLOCK_TICKS_PER_SECOND} ticks/s), divided by "
        "the requests wrk completed; proxy CPU % is that time over wrk's duration (near "
        "100: the proxy was the bottleneck).",
        "Origins: one nginx process, one worker, four ports; / answers 6 bytes, /50k 51,200.",
    ]
    if args.work_us:
        notes.append(work_note(args.work_us))
    versions = tools.versions()
    facts = {
        **tools.machine(),
        "haproxy": versions["haproxy"],
        "nginx (origins)": versions["nginx"],
        "wrk": versions["wrk"],
        "python": versions["python"],
        "uvloop": _package_version("uvloop"),
        "httptools": _package_version("httptools"),
        "pinning": pinning,
        tools.LOAD_AT_END: tools.load_average(),
    }
    command = shlex.join(["python", "-m", "bench.ceiling", *arguments])
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    write(args.results, results_markdown(results, command, date, facts, notes))
    print(terminal_tables(results))
    print(f"\nceiling: wrote {args.results}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every child was already stopped on the way out
        print("ceiling: interrupted", file=sys.stderr)
        sys.exit(130)
