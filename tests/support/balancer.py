"""Run `maitred run -c FILE` as a real process and follow its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

LISTENER_LINE = re.compile(r"listener (\S+) serving on (\S+)")
ADMIN_LINE = re.compile(r"admin listening on (\S+)")


class LogFollower:
    """Collects a process's stderr lines and lets tests wait for one."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            index = start
            while True:
                while index < len(self.lines):
                    match = regex.search(self.lines[index])
                    if match:
                        return match
                    if self.lines[index] == "<eof>":
                        raise AssertionError(
                            f"process ended before {pattern!r}:\n" + "\n".join(self.lines)
                        )
                    index += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out waiting for {pattern!r}:\n" + "\n".join(self.lines)
                    )
                self._cond.wait(remaining)

    def wait_for_count(self, pattern: str, count: int, timeout: float = 15.0) -> int:
        """Wait until ``count`` lines match, then return how many match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = sum(1 for line in self.lines if regex.search(line))
                remaining = deadline - time.monotonic()
                if found >= count or remaining <= 0:
                    return found
                self._cond.wait(remaining)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


class BalancerProcess:
    def __init__(self, config_text: str, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.config_path = workdir / "maitred.yaml"
        self.config_path.write_text(config_text)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maitred", "run", "-c", str(self.config_path), *extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log = LogFollower(self.proc.stderr)
        self.log.wait_for(r"maitred ready")
        self.listeners: dict[str, tuple[str, int]] = {}
        for line in self.log.lines:
            match = LISTENER_LINE.search(line)
            if match:
                host, port = match.group(2).rstrip(",").rsplit(":", 1)
                self.listeners[match.group(1)] = (host, int(port))
            admin = ADMIN_LINE.search(line)
            if admin:
                host, port = admin.group(1).rsplit(":", 1)
                self.admin = (host, int(port))

    @property
    def port(self) -> int:
        return next(iter(self.listeners.values()))[1]

    def reload(self, config_text: str, expect: str = "configuration reloaded") -> None:
        start = len(self.log.lines)
        self.config_path.write_text(config_text)
        self.proc.send_signal(signal.SIGHUP)
        self.log.wait_for(expect, start=start)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


BalancerFactory = Callable[[str], BalancerProcess]


def pool_yaml(addresses: list[str], algorithm: str = "round_robin", extra: str = "") -> str:
    """One listener on a free port, sending everything to pool ``web`` of ``addresses``."""
    return pool_config([f"{{address: {address}}}" for address in addresses], algorithm, extra)


def pool_config(servers: list[str], algorithm: str = "round_robin", extra: str = "") -> str:
    """The same with each server written out (``{address: A, max_connections: 1}``);
    ``extra`` holds pool settings, each line indented by four spaces."""
    lines = "\n".join(f"      - {server}" for server in servers)
    return f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
pools:
  web:
    algorithm: {algorithm}
{extra}    servers:
{lines}
"""
