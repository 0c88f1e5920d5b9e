"""Drive load with wrk (maximum rate) and h2load (fixed rate), and parse their output."""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.processes import pinned
from bench.tools import require


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    requests_per_second: float
    errors: int  # socket errors plus non-2xx/3xx answers


@dataclass(frozen=True)
class FixedRateResult:
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers and requests that never completed


def warmup_seconds(duration: float) -> float:
    """A third of a measured run, 1 to 3 s, whole seconds as wrk takes them."""
    return float(max(1, min(3, math.ceil(duration / 3))))


def wrk_command(
    url: str, seconds: float, connections: int, threads: int, headers: tuple[str, ...] = ()
) -> list[str]:
    # wrk reads whole seconds only: "-d2.5s" prints its usage instead of running.
    argv = [require("wrk"), f"-t{threads}", f"-c{connections}", f"-d{max(1, math.ceil(seconds))}s"]
    for header in headers:
        argv += ["-H", header]
    return [*argv, url]


def parse_wrk(text: str) -> WrkResult:
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not total or not rate:
        raise ValueError(f"unrecognised wrk output:\n{text}")
    seconds = float(total.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    bad_status = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if bad_status:
        errors += int(bad_status.group(1))
    return WrkResult(int(total.group(1)), seconds, float(rate.group(1)), errors)


def run_wrk(
    url: str,
    seconds: float,
    connections: int,
    threads: int,
    headers: tuple[str, ...] = (),
    cpus: str | None = None,
) -> WrkResult:
    argv = [*pinned(cpus), *wrk_command(url, seconds, connections, threads, headers)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    return parse_wrk(result.stdout + result.stderr)


def h2load_command(
    url: str, rate: float, seconds: float, clients: int, log_path: Path
) -> list[str]:
    # --rps is per client; HTTP/1.1 allows one request in flight per connection.
    per_client = max(1, round(rate / clients))
    return [
        require("h2load"),
        "--h1",
        f"--clients={clients}",
        "--threads=1",
        f"--rps={per_client}",
        f"--duration={seconds:g}",
        "--warm-up-time=1",
        f"--log-file={log_path}",
        url,
    ]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def parse_h2load_log(text: str, seconds: float) -> FixedRateResult:
    """Per-request rows: start time (us since epoch), status, duration (us)."""
    durations_ms: list[float] = []
    errors = 0
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) < 3:
            continue
        status, micros = int(fields[1]), int(fields[2])
        if 200 <= status < 400:
            durations_ms.append(micros / 1000)
        else:
            errors += 1  # h2load logs status -1 for requests that failed
    durations_ms.sort()
    return FixedRateResult(
        requests=len(durations_ms),
        requests_per_second=len(durations_ms) / seconds,
        p50_ms=percentile(durations_ms, 0.50),
        p99_ms=percentile(durations_ms, 0.99),
        errors=errors,
    )


def run_h2load(
    url: str, rate: float, seconds: float, clients: int, log_path: Path, cpus: str | None = None
) -> FixedRateResult:
    argv = [*pinned(cpus), *h2load_command(url, rate, seconds, clients, log_path)]
    log_path.unlink(missing_ok=True)
    subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    log = log_path.read_text() if log_path.exists() else ""
    return parse_h2load_log(log, seconds)
