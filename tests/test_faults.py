"""Servers that misbehave: the balancer answers 502/504 or cuts the answer visibly,
and stays healthy.

One balancer process serves the whole module. Paths under ``/fault/`` go to a
``ScriptedServer`` acting out one fault per path, ``/deaf/`` to a server that
never reads, everything else to a good ``RecordingServer``. After each fault the
test checks that a good request is still answered, that the balancer logged no
traceback and that its process is alive.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import Response, connect, read_response
from tests.support.bad_backends import (
    Behaviour,
    NeverReadingServer,
    ScriptedServer,
    hold,
    send_in_two_parts,
    send_raw,
    send_then_hold,
    send_then_reset,
)
from tests.support.balancer import BalancerProcess
from tests.support.recording import RecordingServer

TIMEOUT = 5.0
RESPONSE_TIMEOUT = 0.4  # the faulty pools' timeouts.response
LOOP_CLOCK_STEP = 0.001  # uvloop's loop.time() is in whole milliseconds


@pytest.fixture(scope="module")
def good() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(scope="module")
def faulty() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def deaf() -> Iterator[NeverReadingServer]:
    with NeverReadingServer() as server:
        yield server


@pytest.fixture(scope="module")
def lb(
    good: RecordingServer,
    faulty: ScriptedServer,
    deaf: NeverReadingServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BalancerProcess]:
    faulty_pool = (
        "    outlier_detection: {enabled: false}\n"
        "    retries: {attempts: 0}\n"
        f"    timeouts: {{connect: 1s, response: {int(RESPONSE_TIMEOUT * 1000)}ms}}\n"
    )
    config = f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    routes:
      - match: {{path_prefix: /fault/}}
        pool: faulty
      - match: {{path_prefix: /deaf/}}
        pool: deaf
    pool: good
pools:
  good:
    servers: [{{address: {good.address}}}]
  faulty:
    servers: [{{address: {faulty.address}}}]
{faulty_pool}  deaf:
    servers: [{{address: {deaf.address}}}]
{faulty_pool}"""
    process = BalancerProcess(config, Path(tmp_path_factory.mktemp("faults")))
    yield process
    process.kill()


@pytest.fixture
def healthy_after(lb: BalancerProcess) -> Iterator[None]:
    """After the test: a good request is answered, no traceback was logged, alive."""
    start = len(lb.log.lines)
    yield
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(b"GET /good HTTP/1.1\r\nHost: a\r\n\r\n")
        response = read_response(sock)
        assert (response.status, response.body) == (200, b"ok")
        # A request the balancer rejects itself is logged: once that line is
        # read, every line logged before it has been read too.
        sock.sendall(b"GET /log-barrier HTTP/1.1\r\n\r\n")
        assert read_response(sock).status == 400
    lb.log.wait_for(r"rejecting request .*missing Host", start=start)
    logged = lb.log.lines[start:]
    assert not [line for line in logged if "Traceback" in line], "\n".join(logged)
    assert lb.proc.poll() is None


_names = itertools.count()


def fault_path(faulty: ScriptedServer, behaviour: Behaviour) -> str:
    return faulty.on(f"/fault/{next(_names)}", behaviour)


def get(sock: socket.socket, path: str) -> Response:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    return read_response(sock)


def assert_truncated(sock: socket.socket, path: str) -> None:
    """The answer begins, then the connection ends before the answer is complete."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    with pytest.raises((ConnectionError, ValueError)):
        read_response(sock)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


# -- malformed answers ----------------------------------------------------------------


def test_garbage_instead_of_a_status_line_is_502(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    path = fault_path(faulty, send_raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", then_close=True))
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        response = get(sock, path)
        assert response.status == 502
        assert b"SSH" not in response.body
        assert get(sock, "/fault/next").body == b"good /fault/next"


def test_content_length_and_chunked_in_an_answer_is_502(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    path = fault_path(
        faulty,
        send_raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        ),
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        assert get(sock, path).status == 502
        assert get(sock, "/fault/next").body == b"good /fault/next"


def test_more_bytes_than_content_length_are_dropped_and_connection_not_reused(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    # One write: the surplus arrives with the answer, as a smuggled answer would.
    path = fault_path(
        faulty,
        send_raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"
        ),
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        response = get(sock, path)
        assert (response.status, response.body) == (200, b"hello")
        accepted = faulty.accepted
        # The next answer on this client connection is its own, not the surplus.
        assert get(sock, "/fault/after").body == b"good /fault/after"
    # ...and it came over a new connection: the one that over-delivered was dropped.
    assert faulty.accepted == accepted + 1


# -- answers cut short ------------------------------------------------------------------


def test_server_closing_mid_body_truncates_the_answer_visibly(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    path = fault_path(
        faulty,
        send_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", then_close=True),
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        assert_truncated(sock, path)


def test_server_closing_before_the_last_chunk_truncates_the_answer_visibly(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    path = fault_path(
        faulty,
        send_raw(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n",
            then_close=True,
        ),
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        assert_truncated(sock, path)


def test_invalid_chunk_from_the_server_truncates_the_answer_visibly(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    # The bad chunk comes once the answer's start has reached the client, and the
    # server keeps its connection open: the cut is the balancer's doing.
    started = threading.Event()
    path = fault_path(
        faulty,
        send_in_two_parts(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            started,
            b"zz\r\nbad\r\n",
        ),
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        received = b""
        while b"hello\r\n" not in received:
            data = sock.recv(65536)
            assert data, "closed before the answer began"
            received += data
        assert received.startswith(b"HTTP/1.1 200 ")
        started.set()
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                received += data
    assert not received.endswith(b"0\r\n\r\n"), "the cut answer looks complete"
    assert b"bad" not in received


def test_server_stalling_mid_body_truncates_the_answer_visibly(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    path = fault_path(
        faulty, send_then_hold(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes!")
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        started = time.monotonic()
        assert_truncated(sock, path)
        assert time.monotonic() - started >= RESPONSE_TIMEOUT


def test_server_resetting_mid_body_truncates_the_answer_visibly(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    path = fault_path(
        faulty, send_then_reset(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes!")
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        assert_truncated(sock, path)


def test_server_resetting_before_answering_is_502(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    path = fault_path(faulty, send_then_reset(b""))
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        assert get(sock, path).status == 502
        assert get(sock, "/fault/next").body == b"good /fault/next"


# -- answers that never come ----------------------------------------------------------------


def test_server_answering_too_slowly_is_504(
    lb: BalancerProcess, faulty: ScriptedServer, healthy_after: None
) -> None:
    path = fault_path(faulty, hold)
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        started = time.monotonic()
        response = get(sock, path)
        elapsed = time.monotonic() - started
        assert response.status == 504
        # The event loop's clock counts whole milliseconds: a deadline set from it
        # may fall up to 1 ms before the same delay on time.monotonic().
        assert RESPONSE_TIMEOUT - LOOP_CLOCK_STEP <= elapsed < RESPONSE_TIMEOUT + 2
        assert get(sock, "/fault/next").body == b"good /fault/next"


def test_server_never_reading_the_request_is_504(
    lb: BalancerProcess, deaf: NeverReadingServer, healthy_after: None
) -> None:
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        assert get(sock, "/deaf/a").status == 504


def test_server_never_reading_a_large_body_is_504_and_the_client_is_not_stuck(
    lb: BalancerProcess, deaf: NeverReadingServer, healthy_after: None
) -> None:
    # Far more than the socket buffers between the balancer and the server hold:
    # the balancer must stop reading the client, answer 504, then free it.
    body = b"x" * (32 * 1024 * 1024)
    sock = connect("127.0.0.1", lb.port, timeout=3 * TIMEOUT)
    outcome: list[str] = []
    done = threading.Event()

    def upload() -> None:
        head = b"POST /deaf/upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
        try:
            sock.sendall(head % len(body) + body)
            outcome.append("sent")  # the balancer read (and dropped) the rest
        except TimeoutError:
            outcome.append("stuck")
        except OSError:
            outcome.append("closed")  # the balancer closed the connection: free too
        done.set()

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    try:
        response = read_response(sock, "POST")
        assert response.status == 504
        # Once answered, the rest of the body is read and dropped, or the connection
        # closed: either frees the client at once.
        assert done.wait(2.0), "the client stayed blocked sending the rest of its body"
        assert outcome != ["stuck"]
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        uploader.join(TIMEOUT)
