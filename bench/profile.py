"""`python -m bench.profile`: where maitred spends its time under wrk load.

Samples maitred with py-spy (installed with pip when missing) into a
speedscope file (open it at speedscope.app or in the speedscope viewer) and
prints the hottest functions. Falls back to cProfile when py-spy cannot attach.
"""

from __future__ import annotations

import argparse
import json
import pstats
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

from bench import load, origins, targets, tools
from bench.processes import (
    Supervisor,
    cpu_plan,
    free_port,
    fresh_directory,
    pinned,
    wait_until_serving,
)

OUT_DIR = Path(__file__).resolve().parent / "out"
SPEEDSCOPE_PATH = OUT_DIR / "profile.speedscope.json"
TOP_PATH = OUT_DIR / "profile-top.txt"
PSTATS_PATH = OUT_DIR / "profile.pstats"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--duration", type=float, default=15, help="seconds of load (default 15)")
    parser.add_argument("--path", default="/", help="URL path to load: / or /50k (default /)")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--close", action="store_true", help="a new connection per request")
    parser.add_argument("--top", type=int, default=25, help="functions to print (default 25)")
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too")
    parser.add_argument("--cprofile", action="store_true", help="use cProfile, not py-spy")
    return parser.parse_args(argv)


def top_functions(speedscope: dict[str, Any], count: int) -> str:
    """Self and inclusive sample shares per function, from a speedscope document."""
    frames = speedscope["shared"]["frames"]
    self_time: Counter[int] = Counter()
    total_time: Counter[int] = Counter()
    busy = 0.0  # py-spy leaves out samples where the process sleeps in epoll
    for profile in speedscope["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            busy += weight
            if stack:
                self_time[stack[-1]] += weight
            for frame in set(stack):  # recursion counts once per sample
                total_time[frame] += weight
    if not busy:
        return "no samples (was maitred busy?)"

    def label(index: int) -> str:
        frame = frames[index]
        where = f"{frame.get('file', '?')}:{frame.get('line', '?')}"
        return f"{frame['name']} ({where})"

    lines = [
        f"{busy:.2f} s busy; shares are of busy time. Self time of the event loop's run()",
        "is uvloop's C code (socket I/O, dispatch) unless --native shows it.",
        "",
        "self%   total%  function",
    ]
    for index, seconds in self_time.most_common(count):
        share, inclusive = 100 * seconds / busy, 100 * total_time[index] / busy
        lines.append(f"{share:5.1f}   {inclusive:6.1f}  {label(index)}")
    lines += ["", "by inclusive time:", "total%  function"]
    for index, seconds in total_time.most_common(count):
        lines.append(f"{100 * seconds / busy:6.1f}  {label(index)}")
    return "\n".join(lines)


def _drive_load(url: str, args: argparse.Namespace, load_cpus: str | None) -> load.WrkResult:
    headers = ("Connection: close",) if args.close else ()
    return load.run_wrk(url, args.duration, args.connections, 1, headers, load_cpus)


def profile_with_py_spy(
    target: targets.Target, args: argparse.Namespace, load_cpus: str | None
) -> bool:
    if not tools.ensure_pip_package("py-spy", "py-spy"):
        print("bench.profile: py-spy is not available", file=sys.stderr)
        return False
    record = [
        tools.which("py-spy") or "py-spy",
        "record",
        "--pid",
        str(target.pid),
        "--subprocesses",  # in case maitred runs its worker in a child process
        "--rate",
        "250",
        "--duration",
        f"{max(1, int(args.duration))}",
        "--format",
        "speedscope",
        "--output",
        str(SPEEDSCOPE_PATH),
        *(["--native"] if args.native else []),
    ]
    SPEEDSCOPE_PATH.unlink(missing_ok=True)
    with subprocess.Popen([*pinned(load_cpus), *record], stderr=subprocess.PIPE, text=True) as spy:
        result = _drive_load(f"http://127.0.0.1:{target.port}{args.path}", args, load_cpus)
        _, spy_errors = spy.communicate(timeout=args.duration + 60)
    if spy.returncode != 0 or not SPEEDSCOPE_PATH.exists():
        print(f"bench.profile: py-spy failed: {spy_errors.strip()}", file=sys.stderr)
        return False
    summary = top_functions(json.loads(SPEEDSCOPE_PATH.read_text()), args.top)
    header = f"maitred under wrk: {result.requests_per_second:,.0f} req/s on {args.path}"
    TOP_PATH.write_text(f"{header}\n{summary}\n")
    print(f"{header}\n{summary}\n\nbench.profile: wrote {SPEEDSCOPE_PATH} and {TOP_PATH}")
    return True


def profile_with_cprofile(
    supervisor: Supervisor,
    workdir: Path,
    origin_ports: list[int],
    args: argparse.Namespace,
    cpus: tuple[str | None, str | None],
) -> int:
    """Run maitred under cProfile, load it, stop it with SIGINT so the stats get written."""
    load_cpus, proxy_cpus = cpus
    port = free_port()
    config_path = workdir / "maitred-cprofile.yaml"
    config_path.write_text(targets.maitred_config(port, origin_ports))
    argv, env = targets.maitred_argv(config_path)
    python, module_args = argv[0], argv[1:]  # "-m maitred run -c FILE"
    cprofile = [python, "-m", "cProfile", "-o", str(PSTATS_PATH), *module_args]
    child = supervisor.start(
        "maitred-cprofile", cprofile, workdir / "cprofile.log", proxy_cpus, env
    )
    if not wait_until_serving(child, port, "/", targets.START_TIMEOUT_SECONDS):
        print(f"bench.profile: maitred did not start:\n{child.log_tail()}", file=sys.stderr)
        return 1
    result = _drive_load(f"http://127.0.0.1:{port}{args.path}", args, load_cpus)
    child.popen.send_signal(signal.SIGINT)
    child.popen.wait(30)
    if not PSTATS_PATH.exists():
        print(f"bench.profile: no cProfile output:\n{child.log_tail()}", file=sys.stderr)
        return 1
    print(f"maitred under wrk (cProfile): {result.requests_per_second:,.0f} req/s")
    stats = pstats.Stats(str(PSTATS_PATH))
    stats.sort_stats("tottime").print_stats(args.top)
    stats.sort_stats("cumulative").print_stats(args.top)
    print(f"bench.profile: wrote {PSTATS_PATH} (python -m pstats {PSTATS_PATH})")
    return 0


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the Supervisor, which stops every child


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tools.ensure_installed(["nginx", "wrk", "taskset"])
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    load_cpus, proxy_cpus, _ = cpu_plan(pin=True)
    workdir = fresh_directory(OUT_DIR / "profile-run")
    with Supervisor() as supervisor:
        pool = origins.start(supervisor, workdir, load_cpus)
        if not args.cprofile:
            maitred = targets.start(targets.MAITRED, supervisor, workdir, pool.ports, proxy_cpus)
            if not maitred.available:
                print(f"bench.profile: maitred {maitred.problem}", file=sys.stderr)
                return 1
            warm_up = argparse.Namespace(**{**vars(args), "duration": 2})
            _drive_load(f"http://127.0.0.1:{maitred.port}{args.path}", warm_up, load_cpus)
            if profile_with_py_spy(maitred, args, load_cpus):
                return 0
            assert maitred.child is not None
            supervisor.stop(maitred.child)
            print("bench.profile: falling back to cProfile", file=sys.stderr)
        return profile_with_cprofile(supervisor, workdir, pool.ports, args, (load_cpus, proxy_cpus))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every child was already stopped on the way out
        print("bench.profile: interrupted", file=sys.stderr)
        sys.exit(130)
