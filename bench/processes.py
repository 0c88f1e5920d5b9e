"""Start, watch and stop the benchmark's long-running child processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

STOP_GRACE_SECONDS = 10.0


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class Supervisor:
    """Owns every child it starts and stops them all on exit, Ctrl-C included.

    Each child leads its own session, so stopping it by process group also
    stops whatever it forked (nginx workers, maitred workers).
    """

    def __init__(self) -> None:
        self._children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cpus: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Child:
        command = [*pinned(cpus), *argv]
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        child = Child(name, popen, log_path)
        self._children.append(child)
        return child

    def stop(self, child: Child) -> None:
        if child in self._children:
            self._children.remove(child)
        if not child.alive():
            return
        _signal_group(child.pid, signal.SIGTERM)
        try:
            child.popen.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(child.pid, signal.SIGKILL)
            child.popen.wait()
        # Forked workers may outlive a leader that exited on SIGTERM.
        _signal_group(child.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for child in reversed(list(self._children)):
            self.stop(child)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def pinned(cpus: str | None) -> list[str]:
    """The taskset prefix that keeps a command on `cpus` ("0", "1", "0-2")."""
    return ["taskset", "-c", cpus] if cpus else []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_status(port: int, path: str = "/", timeout: float = 1.0) -> int | None:
    """Status code of one GET on 127.0.0.1:`port`, or None when nothing answers."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request.encode())
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def wait_until_serving(child: Child, port: int, path: str, timeout: float) -> bool:
    """Poll until GET `path` answers 200; False if the child dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            return False
        if http_status(port, path) == 200:
            return True
        time.sleep(0.1)  # polling a port that another process opens: no event to await
    return False


def cpu_plan(pin: bool) -> tuple[str | None, str | None, str]:
    """(CPUs for load and origins, CPUs for the proxy, how it was done)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None, "none (every process free on every CPU)"
    load_cpus = ",".join(str(c) for c in cpus[:-1])
    proxy_cpu = str(cpus[-1])
    return (
        load_cpus,
        proxy_cpu,
        f"taskset: the proxy under test on CPU {proxy_cpu}; wrk, h2load, the idle "
        f"client and the origin nginx on CPU {load_cpus}",
    )


def fresh_directory(path: Path) -> Path:
    """An empty `path`: each run keeps its configs and logs there until the next."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path.resolve()
