"""Slow and greedy clients: timeouts, connection caps and a slowloris attack.

One balancer process with three listeners:

- ``strict``: short client timeouts, for the header, body and idle timeouts;
- ``guarded``: ``max_connections_per_client: 100``, attacked from 127.0.0.2
  (the whole 127/8 is loopback) while a normal client on 127.0.0.1 keeps asking;
- ``capped``: ``max_connections: 5`` for the whole listener;
- ``unpooled``: its pool keeps no idle server connection, so every server
  connection must be closed once its exchange is over;
- ``metered``: a minimum body data rate (``client_body_min_rate``) with a short
  grace and a long inactivity timeout, so only the rate can cut a body.

Every loop here is bounded in count and time; the attack stops by itself.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import connect, read_response
from tests.support.balancer import BalancerProcess
from tests.support.recording import RecordingServer

TIMEOUT = 5.0
HEADER_TIMEOUT = 0.4  # strict.timeouts.client_header
BODY_TIMEOUT = 0.4  # strict.timeouts.client_body
IDLE_TIMEOUT = 0.4  # strict.timeouts.idle
GUARDED_HEADER_TIMEOUT = 2.0
PER_CLIENT = 100
LISTENER_CAP = 5
ATTACKER = "127.0.0.2"
ATTACK_CONNECTIONS = 500
MIN_RATE = 1000  # metered.timeouts.client_body_min_rate, bytes per second
RATE_GRACE = 0.5  # metered.timeouts.client_body_min_rate_grace


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(scope="module")
def unpooled() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(scope="module")
def lb(
    recorder: RecordingServer,
    unpooled: RecordingServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BalancerProcess]:
    ms = 1000
    config = f"""
listeners:
  - name: strict
    bind: 127.0.0.1:0
    pool: web
    timeouts:
      client_header: {int(HEADER_TIMEOUT * ms)}ms
      client_body: {int(BODY_TIMEOUT * ms)}ms
      idle: {int(IDLE_TIMEOUT * ms)}ms
  - name: guarded
    bind: 127.0.0.1:0
    pool: web
    timeouts: {{client_header: {int(GUARDED_HEADER_TIMEOUT * ms)}ms}}
    limits: {{max_connections_per_client: {PER_CLIENT}}}
  - name: capped
    bind: 127.0.0.1:0
    pool: web
    limits: {{max_connections: {LISTENER_CAP}}}
  - name: unpooled
    bind: 127.0.0.1:0
    pool: unpooled
  - name: metered
    bind: 127.0.0.1:0
    pool: web
    timeouts:
      client_body: 30s
      client_body_min_rate: {MIN_RATE}
      client_body_min_rate_grace: {int(RATE_GRACE * ms)}ms
pools:
  web:
    servers: [{{address: {recorder.address}}}]
  unpooled:
    servers: [{{address: {unpooled.address}}}]
    connection_pool: {{max_idle: 0}}
"""
    process = BalancerProcess(config, Path(tmp_path_factory.mktemp("slow")))
    yield process
    assert process.proc.poll() is None, "the balancer died"
    assert "Traceback" not in process.log.text()
    process.kill()


def port(lb: BalancerProcess, listener: str) -> int:
    return lb.listeners[listener][1]


def assert_closed(sock: socket.socket) -> None:
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


# -- timeouts ------------------------------------------------------------------------------


def test_header_timeout_is_408_and_close(lb: BalancerProcess, recorder: RecordingServer) -> None:
    recorder.reset()
    with connect("127.0.0.1", port(lb, "strict"), TIMEOUT) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        response = read_response(sock)
        elapsed = time.monotonic() - started
        assert response.status == 408
        assert response.header("Connection") == "close"
        assert_closed(sock)
    assert HEADER_TIMEOUT * 0.9 <= elapsed < HEADER_TIMEOUT + 1.5
    recorder.drain()
    assert recorder.raw_bytes() == b""


def test_header_timeout_counts_from_the_first_byte_not_from_the_last(
    lb: BalancerProcess,
) -> None:
    """Slowloris defence: a head dribbled faster than the timeout is still cut."""
    head = b"GET /drip HTTP/1.1\r\nHost: a\r\nX-Drip: " + b"d" * 100
    with connect("127.0.0.1", port(lb, "strict"), TIMEOUT) as sock:
        started = time.monotonic()
        pause = threading.Event()
        answered = b""
        for index in range(len(head)):
            try:
                sock.sendall(head[index : index + 1])
            except OSError:
                break  # the balancer gave up on us: that is the point
            pause.wait(HEADER_TIMEOUT / 8)  # pacing, well inside the timeout
            if time.monotonic() - started > HEADER_TIMEOUT * 4:
                break
        sock.settimeout(TIMEOUT)
        with contextlib.suppress(ConnectionResetError):
            answered = sock.recv(65536)
    assert answered.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < HEADER_TIMEOUT * 4


def test_connection_sending_nothing_is_closed_at_the_header_timeout(
    lb: BalancerProcess,
) -> None:
    with connect("127.0.0.1", port(lb, "strict"), TIMEOUT) as sock:
        started = time.monotonic()
        assert_closed(sock)
        assert time.monotonic() - started < HEADER_TIMEOUT + 1.5


def test_body_inactivity_timeout_is_408_and_close(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    recorder.reset()
    with connect("127.0.0.1", port(lb, "strict"), TIMEOUT) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        response = read_response(sock, "POST")
        elapsed = time.monotonic() - started
        assert response.status == 408
        assert response.header("Connection") == "close"
        assert_closed(sock)
    assert BODY_TIMEOUT * 0.9 <= elapsed < BODY_TIMEOUT + 1.5
    # The server saw at most the start of the request, and lost its connection.
    recorder.wait_for(lambda server: server.partial_requests_closed())
    assert recorder.complete_requests() == []


def test_body_arriving_steadily_is_not_cut_by_the_inactivity_timeout(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    recorder.reset()
    pieces = [b"one-", b"two-", b"three-", b"four"]
    body = b"".join(pieces)
    pause = threading.Event()
    with connect("127.0.0.1", port(lb, "strict"), TIMEOUT) as sock:
        sock.sendall(b"POST /steady HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
        for piece in pieces:  # the whole body takes longer than the timeout
            pause.wait(BODY_TIMEOUT / 2)
            sock.sendall(piece)
        response = read_response(sock, "POST")
        assert response.status == 200
    (got,) = recorder.complete_requests()
    assert got.body == body


def send_body_paced(sock: socket.socket, piece: bytes, every: float, limit: float) -> bytes:
    """Send ``piece`` every ``every`` seconds until the balancer answers (or ``limit``
    seconds pass); return what it answered."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            sock.sendall(piece)
        except OSError:
            break  # the balancer closed on us: its answer is already in our buffer
        readable, _, _ = select.select([sock], [], [], every)  # pacing; wakes on an answer
        if readable:
            break
    sock.settimeout(TIMEOUT)
    with contextlib.suppress(ConnectionResetError):
        return sock.recv(65536)
    return b""


def test_body_below_the_minimum_rate_is_408_after_the_grace(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    """Never silent, so the inactivity timeout never fires: only the rate cuts it."""
    recorder.reset()
    with connect("127.0.0.1", port(lb, "metered"), TIMEOUT) as sock:
        sock.sendall(b"POST /trickle HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        # 50 bytes every 0.1 s: about half the minimum rate.
        answered = send_body_paced(sock, b"x" * 50, 0.1, limit=10.0)
        elapsed = time.monotonic() - started
        assert answered.startswith(b"HTTP/1.1 408 "), answered
        assert b"minimum data rate" in answered
        assert b"Connection: close" in answered
        assert_closed(sock)
    # A grace, then each byte buys 1 ms: at ~500 B/s the body falls behind at ~1 s.
    assert RATE_GRACE <= elapsed < 6.0
    recorder.wait_for(lambda server: server.partial_requests_closed())
    assert recorder.complete_requests() == []


def test_body_above_the_minimum_rate_is_forwarded_whole(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    recorder.reset()
    piece = b"y" * 500
    count = 15  # 7.5 kB at ~5 kB/s: well past the grace, at five times the minimum
    with connect("127.0.0.1", port(lb, "metered"), TIMEOUT) as sock:
        sock.sendall(
            b"POST /brisk HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (len(piece) * count)
        )
        pause = threading.Event()
        for _ in range(count):
            sock.sendall(piece)
            pause.wait(0.1)  # pacing, not synchronization
        response = read_response(sock, "POST")
        assert response.status == 200
    (got,) = recorder.complete_requests()
    assert got.body == piece * count


def test_the_minimum_rate_ends_with_its_body(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    """A body sent at once is answered, and the rate's deadline does not outlive it:
    the connection is still served well after the grace."""
    recorder.reset()
    with connect("127.0.0.1", port(lb, "metered"), TIMEOUT) as sock:
        sock.sendall(b"POST /quick HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        assert read_response(sock, "POST").status == 200
        # The connection stays usable: the rate does not outlive its body.
        threading.Event().wait(RATE_GRACE * 2)
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock).status == 200


def test_idle_keep_alive_connection_is_closed_silently(lb: BalancerProcess) -> None:
    with connect("127.0.0.1", port(lb, "strict"), TIMEOUT) as sock:
        sock.sendall(b"GET /once HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock).status == 200
        started = time.monotonic()
        assert sock.recv(65536) == b""  # no 408 for a connection between requests
        assert time.monotonic() - started < IDLE_TIMEOUT + 1.5


# -- connection caps -----------------------------------------------------------------------


def test_listener_connection_cap_refuses_the_excess(lb: BalancerProcess) -> None:
    listener = port(lb, "capped")
    held = [connect("127.0.0.1", listener, TIMEOUT) for _ in range(LISTENER_CAP)]
    try:
        for sock in held:  # each is really accepted and served
            sock.sendall(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(sock).status == 200
        with connect("127.0.0.1", listener, TIMEOUT) as extra:
            with contextlib.suppress(OSError):
                extra.sendall(b"GET /extra HTTP/1.1\r\nHost: a\r\n\r\n")
            assert_closed(extra)  # aborted at once, nothing answered
        held.pop().close()
        # Answered after the close above was read: the balancer has counted it.
        held[0].sendall(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(held[0]).status == 200
        with connect("127.0.0.1", listener, TIMEOUT) as freed:
            freed.sendall(b"GET /freed HTTP/1.1\r\nHost: a\r\n\r\n")
            assert read_response(freed).status == 200
    finally:
        for sock in held:
            sock.close()


def test_slowloris_from_one_address_does_not_starve_other_clients(
    lb: BalancerProcess,
) -> None:
    listener = port(lb, "guarded")
    stop = threading.Event()
    latencies: list[float] = []
    failures: list[str] = []

    def normal_client() -> None:
        for _ in range(400):  # bounded; ends when the attack is over
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                with connect("127.0.0.1", listener, TIMEOUT) as sock:
                    sock.sendall(b"GET /normal HTTP/1.1\r\nHost: a\r\n\r\n")
                    status = read_response(sock).status
                if status != 200:
                    failures.append(f"status {status}")
            except OSError as exc:
                failures.append(repr(exc))
            latencies.append(time.monotonic() - started)
            stop.wait(0.02)

    bystander = threading.Thread(target=normal_client, daemon=True)
    bystander.start()
    attack: list[socket.socket] = []
    refused = 0
    try:
        started = time.monotonic()
        for _ in range(ATTACK_CONNECTIONS):
            sock = socket.socket()
            sock.settimeout(TIMEOUT)
            sock.bind((ATTACKER, 0))
            sock.connect(("127.0.0.1", listener))
            try:
                sock.sendall(b"GET /loris HTTP/1.1\r\nHost: a\r\n")
            except OSError:
                refused += 1
                sock.close()
                continue
            attack.append(sock)
        connected_in = time.monotonic() - started
        assert connected_in < GUARDED_HEADER_TIMEOUT / 2, "the attack must open within the timeout"

        # Keep the accepted ones dribbling header lines until the balancer cuts them.
        pause = threading.Event()
        timed_out: list[socket.socket] = []
        for round_number in range(int(GUARDED_HEADER_TIMEOUT * 10) + 20):
            if not attack:
                break
            pause.wait(0.1)
            for sock in list(attack):
                try:
                    sock.sendall(b"X-Round-%d: x\r\n" % round_number)
                except OSError:
                    # Refused (reset at accept) or cut by the header timeout: which
                    # one is told apart below by what the balancer answered.
                    attack.remove(sock)
                    timed_out.append(sock)
        for sock in attack:  # still open after every round: let the reads decide
            timed_out.append(sock)
        attack = timed_out

        answered_408 = 0
        for sock in attack:
            sock.settimeout(TIMEOUT)
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 408 "):
                answered_408 += 1
            else:
                refused += 1
        attack_lasted = time.monotonic() - started
    finally:
        stop.set()
        bystander.join(TIMEOUT)
        for sock in attack:
            sock.close()

    # Exactly the per-client cap was let in; each of those was cut by the header timeout.
    assert answered_408 == PER_CLIENT
    assert refused == ATTACK_CONNECTIONS - PER_CLIENT
    assert attack_lasted < GUARDED_HEADER_TIMEOUT + 3
    # The bystander was served all along, promptly.
    assert not failures, failures
    assert len(latencies) >= 10
    assert max(latencies) < 0.5, f"slowest normal request took {max(latencies):.3f}s"


# -- clients that leave -------------------------------------------------------------------


def test_client_leaving_while_the_server_connection_opens_leaks_nothing(
    lb: BalancerProcess, unpooled: RecordingServer
) -> None:
    listener = port(lb, "unpooled")
    upload = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n"
    for _ in range(20):
        # Head, part of the body and the close arrive together: the balancer sees
        # the client leave before the connection it opened for it is ready.
        with connect("127.0.0.1", listener, TIMEOUT) as sock:
            sock.sendall(upload + b"x" * 100_000)
    # Answered after the abandoned uploads were read: their connects have completed.
    with connect("127.0.0.1", listener, TIMEOUT) as sock:
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock).status == 200
    # No server connection is kept (max_idle: 0): every one that was opened closes.
    unpooled.wait_for(lambda server: all(c.closed for c in server.connections), timeout=3)
