"""Find (and install when missing) the programs the benchmark drives."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Command -> Debian package that provides it.
DEBIAN_PACKAGES = {
    "haproxy": "haproxy",
    "nginx": "nginx",
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "taskset": "util-linux",
    "openssl": "openssl",
    "valgrind": "valgrind",
}


def which(command: str) -> str | None:
    search_path = os.environ.get("PATH", "") + os.pathsep + SYSTEM_PATH
    return shutil.which(command, path=search_path)


def require(command: str) -> str:
    path = which(command)
    if path is None:
        raise SystemExit(f"bench: {command} not found (apt-get install {DEBIAN_PACKAGES[command]})")
    return path


def ensure_installed(commands: Iterable[str]) -> None:
    """apt-get install the Debian packages of any missing command (needs root)."""
    packages = sorted({DEBIAN_PACKAGES[c] for c in commands if which(c) is None})
    if not packages:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"bench: missing {packages}; run as root or apt-get install them")
    print(f"bench: installing {' '.join(packages)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        # A fresh machine has no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)


def ensure_pip_package(module: str, package: str) -> bool:
    """pip install `package` when `module` is not on PATH; True when available."""
    if which(module):
        return True
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", package],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return result.returncode == 0 and which(module) is not None


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def versions() -> dict[str, str]:
    return {
        "haproxy": _first_line([which("haproxy") or "haproxy", "-v"]),
        "nginx": _first_line([which("nginx") or "nginx", "-v"]),
        "wrk": _first_line([which("wrk") or "wrk", "-v"]),
        "h2load": _first_line([which("h2load") or "h2load", "--version"]),
        "python": interpreter(),
    }


def interpreter() -> str:
    """The CPython that runs maitred here: its build matters as much as its version
    (a libpython shared library without PGO cost 13% more Python time per request)."""
    version = sys.version.split()[0]
    executable = os.path.realpath(sys.executable)
    try:
        with open("/proc/self/maps") as maps:
            shared = any("libpython" in line for line in maps)
    except OSError:
        return f"{version} ({executable})"
    linkage = "libpython as a shared library" if shared else "libpython built in"
    return f"{version} ({executable}, {linkage})"


def machine() -> dict[str, str]:
    cpu_model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu_model,
        "kernel": platform.release(),
    }


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as every report prints them."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def load_at_start_note(load_at_start: str) -> str:
    """The report note giving the load when the run began (the end's is a machine fact)."""
    return (
        f"Load average when the run began (1, 5, 15 min): {load_at_start}; at the end: see Machine."
    )


#: The machine fact naming the load at the end of a run.
LOAD_AT_END = "load average at the end (1, 5, 15 min)"
