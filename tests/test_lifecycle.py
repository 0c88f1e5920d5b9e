"""Reload, graceful stop, the command line and connection replay, with real processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.support.backends import (
    BackendProcess,
    build_request,
    connect,
    http_request,
    read_response,
)
from tests.support.balancer import BalancerFactory, LogFollower, pool_yaml


def test_sighup_applies_new_pools_without_dropping_connections(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    b1, b2, b3 = backends
    lb = balancer(pool_yaml([b1.address]))
    idle = connect("127.0.0.1", lb.port)
    busy = connect("127.0.0.1", lb.port)
    with idle, busy:
        idle.sendall(build_request("GET", "/"))
        assert read_response(idle).header("X-Backend") == "b1"
        # An in-flight request that spans the reload.
        busy.sendall(build_request("GET", "/delay?ms=1500"))
        lb.reload(pool_yaml([b2.address, b3.address]))
        assert read_response(busy).status == 200
        seen = Counter()
        for _ in range(4):
            idle.sendall(build_request("GET", "/"))
            seen[read_response(idle).header("X-Backend")] += 1
        assert seen == {"b2": 2, "b3": 2}


def test_invalid_config_on_reload_keeps_the_running_one(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml([backends[0].address]))
    lb.reload(pool_yaml([backends[1].address], algorithm="fastest"), expect="reload refused")
    assert "pools.web.algorithm" in lb.log.text()
    assert http_request("127.0.0.1", lb.port, "GET", "/").header("X-Backend") == "b1"


def test_graceful_stop_finishes_in_flight_requests(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(pool_yaml([backends[0].address]))
    idle = connect("127.0.0.1", lb.port)
    with connect("127.0.0.1", lb.port) as sock, idle:
        before = backends[0].stats()["requests"]
        sock.sendall(build_request("GET", "/delay?ms=1000"))
        # Stop only once the request reached the server (each /stats call counts itself).
        wait_until(lambda calls: backends[0].stats()["requests"] - before - calls >= 2)
        lb.proc.send_signal(15)
        lb.log.wait_for("stopping")
        response = read_response(sock)
        assert response.status == 200
        assert response.header("Connection") == "close"
        assert idle.recv(1) == b""  # idle keep-alive connections are closed at once
    assert lb.proc.wait(15) == 0
    # New connections are refused once stopped.
    try:
        socket.create_connection(("127.0.0.1", lb.port), timeout=2).close()
        refused = False
    except OSError:
        refused = True
    assert refused


def wait_until(condition: Callable[[int], bool], timeout: float = 10.0) -> None:
    """Poll an observable condition (given the number of earlier polls) until it holds."""
    deadline = time.monotonic() + timeout
    calls = 0
    while not condition(calls):
        calls += 1
        assert time.monotonic() < deadline, "condition not reached in time"


class OneShotServer:
    """A server that answers the first request of each connection, then closes the
    connection when the next request arrives without answering it: what a server
    whose keep-alive timeout fired at the wrong moment looks like."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                read_head(conn)
                body = b"fresh\n"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
                read_head(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_dead_pooled_connection_is_replaced_without_the_client_noticing(
    balancer: BalancerFactory,
) -> None:
    server = OneShotServer()
    try:
        lb = balancer(pool_yaml([f"127.0.0.1:{server.port}"]))
        with connect("127.0.0.1", lb.port) as sock:
            for _ in range(3):
                sock.sendall(build_request("GET", "/"))
                response = read_response(sock)
                assert response.status == 200
                assert response.body == b"fresh\n"
        assert server.connections >= 3
    finally:
        server.close()


def test_flag_form_runs_without_a_file(backends: list[BackendProcess], tmp_path: Path) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maitred",
            "run",
            "--listen",
            f"127.0.0.1:{port}",
            "--backend",
            backends[0].address,
            "--backend",
            backends[1].address,
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = LogFollower(proc.stderr)
        log.wait_for('"message": "maitred ready"')
        names = {http_request("127.0.0.1", port, "GET", "/").header("X-Backend") for _ in range(4)}
        assert names == {"b1", "b2"}
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_check_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        """listeners:
  - name: public
    bind: 127.0.0.1:8080
    pool: wbe
pools:
  web:
    algorithm: fastest
    servers:
      - {address: 127.0.0.1:9001, weight: 0}
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "maitred", "check", "-c", str(config)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert any(line.startswith("listeners[0].pool: ") and "(line 4)" in line for line in lines)
    assert any(line.startswith("pools.web.algorithm: ") and "(line 7)" in line for line in lines)
    assert "pools.web.servers[0].weight: must be >= 1 (line 9)" in lines

    run = subprocess.run(
        [sys.executable, "-m", "maitred", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert "pools.web.servers[0].weight: must be >= 1 (line 9)" in run.stderr


def test_check_accepts_a_valid_file(tmp_path: Path) -> None:
    config = tmp_path / "good.yaml"
    config.write_text(pool_yaml(["127.0.0.1:9001"]))
    result = subprocess.run(
        [sys.executable, "-m", "maitred", "check", "-c", str(config)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout
