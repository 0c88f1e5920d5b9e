"""Instructions the data plane's Python runs per request, counted by callgrind.

On a shared machine the time one build takes per request moves by 20% from run to
run; the instructions it runs do not. `bench.hotpath_bench`'s loop runs under
valgrind's callgrind, counting only inside the calls the event loop would make
(the client's and the server's data_received, the end-of-pass flush of writes):
start-up, the harness's own loop and anything else the process does are left out,
and the same build gives the same count to within a few instructions. `--root`
measures another checkout (its own `.venv`, e.g. a `git worktree` of the base of
a change) the same way, for a before/after comparison. callgrind's output of the
last run stays in bench/out/callgrind-REQUEST.out.

    python -m bench.instructions [--request small|browser] [--root DIR]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from bench.hotpath_bench import WARMUP_REQUESTS
from bench.tools import ensure_installed, which

REQUESTS = 10_000
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: callgrind's output of the last runs, for callgrind_annotate.
OUT_DIR = PROJECT_ROOT / "bench" / "out"
KINDS = {"small": "SMALL_REQUEST", "browser": "BROWSER_REQUEST"}
#: The compiled entry points the event loop calls (mypyc's wrappers): counted inside.
COUNTED_CALLS = ("CPyPy_*data_received", "CPyPy_write_batch___WriteBatch___flush")


def run_command(python: str, kind: str, out_file: Path) -> list[str]:
    """callgrind around REQUESTS rounds (and the warm-up) of bench.hotpath_bench."""
    program = f"from bench import hotpath_bench as h; h.run({REQUESTS}, h.{KINDS[kind]}, False)"
    counted = [f"--toggle-collect={name}" for name in COUNTED_CALLS]
    valgrind = [which("valgrind") or "valgrind", "--tool=callgrind", "--collect-atstart=no"]
    return [*valgrind, *counted, f"--callgrind-out-file={out_file}", python, "-c", program]


def parse_collected(output: str) -> int:
    """The instruction count callgrind reports on exit ("Collected : 1,234")."""
    found = re.search(r"Collected\s*:\s*([\d,]+)", output)
    if found is None:
        raise ValueError("callgrind reported no instruction count")
    return int(found.group(1).replace(",", ""))


def per_request(collected: int) -> float:
    return collected / (REQUESTS + WARMUP_REQUESTS)


def count(root: Path, kind: str) -> float:
    python = str(root / ".venv" / "bin" / "python")
    OUT_DIR.mkdir(exist_ok=True)
    result = subprocess.run(
        run_command(python, kind, OUT_DIR / f"callgrind-{kind}.out"),
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"bench.instructions: the run failed:\n{result.stderr[-2000:]}")
    return per_request(parse_collected(result.stderr))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--request", choices=list(KINDS), action="append")
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="a checkout to measure")
    args = parser.parse_args(argv)
    ensure_installed(["valgrind"])
    for kind in args.request or list(KINDS):
        print(f"{kind:8s} request  {count(args.root, kind):9,.0f} instructions per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
