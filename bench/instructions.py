"""Instructions the data plane's Python runs per request, counted by callgrind.

On a shared machine the time one build takes per request moves by 20% from run to
run; the instructions it runs do not (the same count twice, whatever else the
machine does). `bench.hotpath_bench`'s loop runs under valgrind's callgrind twice,
with FEW and MANY requests: the difference, divided by MANY - FEW, is what one more
request costs, start-up and warm-up cancelled out. `--root` measures another
checkout (its own `.venv`, e.g. a `git worktree` of the base of a change) in the
same way, for a before/after comparison. callgrind's output of the last runs stays
in bench/out/callgrind-REQUEST-COUNT.out.

    python -m bench.instructions [--request small|browser] [--root DIR]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from bench.tools import ensure_installed, which

FEW = 10_000
MANY = 30_000
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: callgrind's output of the last runs, for callgrind_annotate.
OUT_DIR = PROJECT_ROOT / "bench" / "out"
REQUESTS = {"small": "SMALL_REQUEST", "browser": "BROWSER_REQUEST"}


def run_command(python: str, request: str, requests: int, out_file: Path) -> list[str]:
    """callgrind around `requests` rounds of bench.hotpath_bench's loop."""
    program = (
        f"from bench import hotpath_bench as h; h.run({requests}, h.{REQUESTS[request]}, False)"
    )
    valgrind = which("valgrind") or "valgrind"
    return [valgrind, "--tool=callgrind", f"--callgrind-out-file={out_file}", python, "-c", program]


def parse_collected(output: str) -> int:
    """The instruction count callgrind reports on exit ("Collected : 1,234")."""
    found = re.search(r"Collected\s*:\s*([\d,]+)", output)
    if found is None:
        raise ValueError("callgrind reported no instruction count")
    return int(found.group(1).replace(",", ""))


def per_request(few_total: int, many_total: int) -> float:
    return (many_total - few_total) / (MANY - FEW)


def count(root: Path, request: str, requests: int) -> int:
    python = str(root / ".venv" / "bin" / "python")
    OUT_DIR.mkdir(exist_ok=True)
    result = subprocess.run(
        run_command(python, request, requests, OUT_DIR / f"callgrind-{request}-{requests}.out"),
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"bench.instructions: the run failed:\n{result.stderr[-2000:]}")
    return parse_collected(result.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--request", choices=list(REQUESTS), action="append")
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="a checkout to measure")
    args = parser.parse_args(argv)
    ensure_installed(["valgrind"])
    for request in args.request or list(REQUESTS):
        cost = per_request(count(args.root, request, FEW), count(args.root, request, MANY))
        print(f"{request:8s} request  {cost:9,.0f} instructions of Python per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
