"""Layer 4 with splice(2) (``zero_copy`` on a tcp listener), through a real maitred process.

The servers here are raw sockets owned by the test, so each test decides exactly
when a server reads, writes, half-closes or resets. That the splice relay is the
one at work shows in the balancer's open descriptors: a spliced connection holds
two pipes, a copied one none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from maitred.config import ConfigError, parse_config_text
from maitred.proxy.proxy_protocol import parse
from maitred.proxy.tcp_splice import splice_supported, use_zero_copy
from tests.support.admin import api, wait_until
from tests.support.backends import connect
from tests.support.balancer import BalancerFactory, BalancerProcess

pytestmark = pytest.mark.skipif(not splice_supported(), reason="needs Linux splice(2)")

TEN_MB = 10 * 1024 * 1024
WAIT = 10.0


class RawServer:
    """A listening socket whose accepted connections the test takes one by one, or
    echoes back (``echo=True``) on a thread per connection until the client's FIN."""

    def __init__(self, echo: bool = False) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port: int = self.listener.getsockname()[1]
        self.echo = echo
        self.accepted: queue.Queue[socket.socket] = queue.Queue()
        self.echoed = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            if self.echo:
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()
            else:
                self.accepted.put(conn)

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(WAIT)
            with self._lock:
                self.echoed += 1
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def take(self) -> socket.socket:
        conn = self.accepted.get(timeout=WAIT)
        conn.settimeout(WAIT)
        return conn

    def close(self) -> None:
        # shutdown wakes the thread blocked in accept(); close alone would leave the
        # socket listening until that accept returned.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(WAIT)


@pytest.fixture
def raw_server() -> Iterator[RawServer]:
    server = RawServer()
    yield server
    server.close()


def splice_config(
    servers: list[RawServer],
    *,
    zero_copy: str = "true",
    idle: str = "60s",
    pool_extra: str = "",
) -> str:
    addresses = "\n".join(f"      - {{address: {s.address}}}" for s in servers)
    return f"""
admin:
  bind: 127.0.0.1:0
drain_timeout: 2s
listeners:
  - name: l4
    bind: 127.0.0.1:0
    protocol: tcp
    pool: raw
    zero_copy: {zero_copy}
    timeouts: {{idle: {idle}}}
pools:
  raw:
{pool_extra}    servers:
{addresses}
"""


def pipe_descriptors(pid: int) -> int:
    count = 0
    for entry in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{entry}").startswith("pipe:"):
                count += 1
        except OSError:
            continue  # closed while we looked
    return count


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def active_connections(lb: BalancerProcess) -> int:
    response = api(lb, "GET", "/api/v1/servers")
    assert response.status == 200, response.body
    return sum(server["active_connections"] for server in response.json()["servers"])


def receive_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def closed_by_peer(sock: socket.socket, timeout: float = WAIT) -> bool:
    """True once ``sock`` reads EOF or a reset within ``timeout``; data read is dropped."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def in_background(work: Callable[[], bytes]) -> Callable[[], bytes]:
    """Run ``work`` on a thread; the returned call waits for and returns its result."""
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(work)
    pool.shutdown(wait=False)
    return lambda: future.result(timeout=60)


def send_and_half_close(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    return b""


# -- intact data and half-close ------------------------------------------------------


@pytest.mark.parametrize("zero_copy", ["true", "false"])
@pytest.mark.parametrize("first_to_finish", ["client", "server"])
def test_10_mb_each_way_intact_with_half_close(
    balancer: BalancerFactory, raw_server: RawServer, zero_copy: str, first_to_finish: str
) -> None:
    lb = balancer(splice_config([raw_server], zero_copy=zero_copy))
    pipes_before = pipe_descriptors(lb.proc.pid)
    upload, download = os.urandom(TEN_MB), os.urandom(TEN_MB)
    with connect("127.0.0.1", lb.port, timeout=WAIT) as client:
        server = raw_server.take()
        with server:
            if first_to_finish == "client":
                # The client sends everything and half-closes; the server still answers.
                sent = in_background(lambda: send_and_half_close(client, upload))
                assert receive_all(server) == upload  # ends with the client's FIN
                sent()
                got = in_background(lambda: receive_all(client))
                send_and_half_close(server, download)
                assert got() == download
            else:
                # The server sends everything and half-closes; the client still uploads.
                got = in_background(lambda: receive_all(client))
                send_and_half_close(server, download)
                assert got() == download
                sent = in_background(lambda: send_and_half_close(client, upload))
                assert receive_all(server) == upload
                sent()
    # Used by this connection, then kept in the pool for the next: the splice relay ran.
    spliced_pipes = pipe_descriptors(lb.proc.pid) - pipes_before
    if zero_copy == "true":
        assert spliced_pipes == 4  # one pipe (two descriptors) per direction
    else:
        assert spliced_pipes == 0
    wait_until(lambda: active_connections(lb) == 0)


def test_pipes_are_reused_across_connections(
    balancer: BalancerFactory, raw_server: RawServer
) -> None:
    lb = balancer(splice_config([raw_server]))
    pipes_before = pipe_descriptors(lb.proc.pid)
    for round_number in range(5):
        with connect("127.0.0.1", lb.port) as client, raw_server.take() as server:
            client.sendall(b"ping %d" % round_number)
            assert server.recv(100) == b"ping %d" % round_number
            server.sendall(b"pong")
            assert client.recv(100) == b"pong"
        wait_until(lambda: active_connections(lb) == 0)
    # Sequential connections kept taking the same two pipes from the pool.
    assert pipe_descriptors(lb.proc.pid) - pipes_before == 4


# -- backpressure --------------------------------------------------------------------


def fill_until_blocked(sock: socket.socket, limit: int, stall: float = 2.0) -> int:
    """Send until the kernel takes nothing for ``stall`` seconds; bytes taken (≤ limit)."""
    sock.setblocking(False)
    chunk = b"x" * 65536
    total = 0
    try:
        while total < limit:
            try:
                total += sock.send(chunk)
            except BlockingIOError:
                _, writable, _ = select.select([], [sock], [], stall)
                if not writable:
                    return total
    finally:
        sock.setblocking(True)
    return total


@pytest.mark.parametrize("zero_copy", ["true", "false"])
def test_a_server_that_does_not_read_stops_the_sender(
    balancer: BalancerFactory, raw_server: RawServer, zero_copy: str
) -> None:
    lb = balancer(splice_config([raw_server], zero_copy=zero_copy))
    rss_before = rss_kib(lb.proc.pid)
    limit = 512 * 1024 * 1024
    with connect("127.0.0.1", lb.port, timeout=WAIT) as client, raw_server.take() as server:
        taken = fill_until_blocked(client, limit)
        # Socket buffers on both sides and one pipe at most: nowhere near the limit.
        assert taken < 128 * 1024 * 1024, f"{taken} bytes went in while nobody read"
        assert rss_kib(lb.proc.pid) - rss_before < 32 * 1024
        client.shutdown(socket.SHUT_WR)
        received = 0
        while chunk := server.recv(1 << 20):
            assert chunk.count(b"x") == len(chunk)
            received += len(chunk)
        assert received == taken  # once the server reads, every byte arrives


# -- idle timeout and resets ---------------------------------------------------------


def test_idle_connections_are_closed_on_both_sides(
    balancer: BalancerFactory, raw_server: RawServer
) -> None:
    lb = balancer(splice_config([raw_server], idle="1s"))
    with connect("127.0.0.1", lb.port) as busy, raw_server.take() as busy_server:
        with connect("127.0.0.1", lb.port) as quiet, raw_server.take() as quiet_server:
            quiet.sendall(b"hello")
            assert quiet_server.recv(10) == b"hello"
            started = time.monotonic()
            ticks = 0
            # Traffic every 200 ms on the busy connection until the quiet one is closed.
            while not select.select([quiet], [], [], 0.2)[0]:
                assert time.monotonic() - started < WAIT, "the idle connection stayed open"
                busy.sendall(b"tick")
                assert busy_server.recv(10) == b"tick"
                ticks += 1
            assert quiet.recv(10) == b""
            assert time.monotonic() - started >= 0.9
            assert closed_by_peer(quiet_server)
        assert ticks >= 4  # the busy connection outlived the idle timeout
        busy.sendall(b"tock")
        assert busy_server.recv(10) == b"tock"


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("who_resets", ["client", "server"])
def test_a_reset_on_one_side_closes_the_other(
    balancer: BalancerFactory, raw_server: RawServer, who_resets: str
) -> None:
    lb = balancer(splice_config([raw_server]))
    client = connect("127.0.0.1", lb.port)
    server = raw_server.take()
    client.sendall(b"hello")
    assert server.recv(10) == b"hello"
    server.sendall(b"x" * 100_000)  # data in flight does not delay the reset
    assert active_connections(lb) == 1
    survivor = server if who_resets == "client" else client
    reset(client if who_resets == "client" else server)
    with survivor:
        assert closed_by_peer(survivor)
    wait_until(lambda: active_connections(lb) == 0)


# -- PROXY protocol before splicing --------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_goes_first_then_the_bytes(
    balancer: BalancerFactory, raw_server: RawServer, version: str
) -> None:
    lb = balancer(splice_config([raw_server], pool_extra=f"    send_proxy_protocol: {version}\n"))
    payload = os.urandom(1024 * 1024)
    with connect("127.0.0.1", lb.port) as client:
        client.sendall(payload[:1000])  # sent at once, before the server connection is up
        server = raw_server.take()
        with server:
            sending = in_background(lambda: client.sendall(payload[1000:]) or b"")
            head = server.recv(1024, socket.MSG_PEEK)
            header = parse(head)
            assert header is not None and header.source is not None
            assert header.source == client.getsockname()[:2]
            assert header.destination == ("127.0.0.1", lb.port)
            server.recv(header.length)
            received = b""
            while len(received) < len(payload):
                received += server.recv(1 << 20)
            sending()
            assert received == payload
            server.sendall(b"answer")
            assert client.recv(100) == b"answer"


# -- many connections and balancing --------------------------------------------------


def test_many_concurrent_connections_are_relayed_and_balanced(
    balancer: BalancerFactory,
) -> None:
    servers = [RawServer(echo=True), RawServer(echo=True)]
    try:
        lb = balancer(splice_config(servers))
        count = 200
        clients = [connect("127.0.0.1", lb.port, timeout=30) for _ in range(count)]
        messages = [hashlib.sha256(b"%d" % i).digest() * 512 for i in range(count)]  # 16 KiB
        wait_until(lambda: active_connections(lb) == count, timeout=30)
        for client, message in zip(clients, messages, strict=True):
            client.sendall(message)
            client.shutdown(socket.SHUT_WR)
        for client, message in zip(clients, messages, strict=True):
            with client:
                assert receive_all(client) == message
        assert Counter(s.echoed for s in servers) == Counter({count // 2: 2})
        wait_until(lambda: active_connections(lb) == 0, timeout=30)
        # Closed connections gave their pipes back to a bounded pool.
        assert pipe_descriptors(lb.proc.pid) <= 2 * 128 + 16
    finally:
        for server in servers:
            server.close()


def test_unreachable_first_server_is_skipped(
    balancer: BalancerFactory, raw_server: RawServer, tmp_path: Path
) -> None:
    dead = RawServer()
    dead.close()  # nothing listens there any more: connects are refused
    lb = balancer(splice_config([dead, raw_server]))
    for _ in range(4):
        with connect("127.0.0.1", lb.port) as client, raw_server.take() as server:
            client.sendall(b"hi")
            assert server.recv(10) == b"hi"


# -- configuration -------------------------------------------------------------------


def listener_yaml(zero_copy: str | None) -> str:
    line = f"    zero_copy: {zero_copy}\n" if zero_copy is not None else ""
    return f"""
listeners:
  - name: l4
    bind: 127.0.0.1:0
    protocol: tcp
    pool: raw
{line}pools:
  raw:
    servers: [{{address: 127.0.0.1:9}}]
"""


@pytest.mark.parametrize(
    ("written", "parsed", "splices"),
    [(None, "auto", True), ("auto", "auto", True), ("true", True, True), ("false", False, False)],
)
def test_zero_copy_setting(written: str | None, parsed: object, splices: bool) -> None:
    listener = parse_config_text(listener_yaml(written)).listeners[0]
    assert listener.zero_copy == parsed
    assert use_zero_copy(listener.zero_copy) is splices


def test_zero_copy_rejects_other_values() -> None:
    with pytest.raises(ConfigError) as error:
        parse_config_text(listener_yaml("sometimes"))
    assert "listeners[0].zero_copy: must be true, false or 'auto'" in str(error.value)
