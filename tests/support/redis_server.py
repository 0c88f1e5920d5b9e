"""A throwaway redis-server (Debian package ``redis-server``) on 127.0.0.1.

A test module makes its fixture from ``running_redis(tmp_path / "redis")``,
or uses ``RedisServer(workdir)`` directly; ``kill()`` then ``start()`` brings
the same port back, empty (no persistence). Modules using it carry
``pytestmark = requires_redis``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.balancer import LogFollower

REDIS_SERVER = shutil.which("redis-server")
requires_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server not installed (apt-get install redis-server)"
)


class RedisServer:
    """A redis-server on 127.0.0.1, no persistence, started at construction."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        LogFollower(self.proc.stdout).wait_for("Ready to accept connections")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    """A RedisServer in ``workdir`` (created), killed at the end."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = RedisServer(workdir)
    try:
        yield server
    finally:
        server.kill()
