"""The demo backend, exercised through real sockets against a real process."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from maitred.demo.backend import BackendState, pattern_bytes, server_address, start_backend
from tests.support.backends import (
    BackendProcess,
    build_request,
    connect,
    http_request,
    read_response,
    start_backends,
)


@pytest.fixture(scope="module")
def backend() -> Iterator[BackendProcess]:
    with BackendProcess("b1") as process:
        yield process


@pytest.fixture
def fresh_backend() -> Iterator[BackendProcess]:
    """A backend no other test has talked to, for exact counter checks."""
    with BackendProcess("fresh") as process:
        yield process


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_root_and_unknown_paths_name_the_backend(backend: BackendProcess) -> None:
    for path in ("/", "/no/such/path?x=1"):
        response = http_request(backend.host, backend.port, "GET", path)
        assert response.status == 200
        assert response.header("X-Backend") == "b1"
        assert response.header("Content-Type") == "text/plain"
        assert response.header("Content-Length") == "3"
        assert response.header("Connection") == "close"  # the client asked to close
        assert response.body == b"b1\n"


def test_keep_alive_serves_several_requests_on_one_connection(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        for path in ("/", "/health", "/echo", "/status?code=404", "/bytes?n=300", "/"):
            sock.sendall(build_request("GET", path))
            response = read_response(sock)
            assert response.header("X-Backend") == "b1"
            assert response.header("Connection") is None
        assert response.body == b"b1\n"


def test_pipelined_requests_are_answered_in_order(backend: BackendProcess) -> None:
    # The slow first answer must still come out before the instant second one.
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("GET", "/delay?ms=100") + build_request("GET", "/echo?second"))
        first = read_response(sock)
        second = read_response(sock)
    assert first.status == 200
    assert first.body == b"delayed 100ms\n"
    assert second.json()["path"] == "/echo?second"


def test_deep_pipeline_beyond_the_read_pause_threshold(backend: BackendProcess) -> None:
    count = 200
    burst = b"".join(build_request("GET", f"/echo?i={index}") for index in range(count))
    with connect(backend.host, backend.port) as sock:
        sock.sendall(burst)
        paths = [read_response(sock).json()["path"] for _ in range(count)]
    assert paths == [f"/echo?i={index}" for index in range(count)]


def test_bytes_sends_ten_megabytes_intact(backend: BackendProcess) -> None:
    size = 10 * 1024 * 1024
    response = http_request(backend.host, backend.port, "GET", f"/bytes?n={size}")
    assert response.status == 200
    assert response.header("Content-Length") == str(size)
    assert response.header("Transfer-Encoding") is None
    assert len(response.body) == size
    assert _sha256(response.body) == _sha256(pattern_bytes(size))
    assert response.body[:258] == bytes(range(256)) + b"\x00\x01"


def test_chunked_uses_the_requested_chunk_size(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("GET", "/chunked?n=10&size=4", {"Connection": "close"}))
        raw = b""
        while data := sock.recv(65536):
            raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert b"Content-Length" not in head
    assert body == (b"4\r\n\x00\x01\x02\x03\r\n4\r\n\x04\x05\x06\x07\r\n2\r\n\x08\x09\r\n0\r\n\r\n")


def test_chunked_large_body_and_keep_alive_after_it(backend: BackendProcess) -> None:
    size = 3 * 1024 * 1024 + 17
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("GET", f"/chunked?n={size}&size=100000"))
        response = read_response(sock)
        sock.sendall(build_request("GET", "/"))
        after = read_response(sock)
    assert _sha256(response.body) == _sha256(pattern_bytes(size))
    assert after.body == b"b1\n"


def test_upload_with_content_length(backend: BackendProcess) -> None:
    body = os.urandom(2 * 1024 * 1024)
    response = http_request(backend.host, backend.port, "POST", "/upload", body=body)
    assert response.status == 200
    assert response.json() == {
        "backend": "b1",
        "body_length": len(body),
        "body_sha256": _sha256(body),
    }


def test_upload_with_chunked_body_sent_in_pieces(backend: BackendProcess) -> None:
    pieces = [os.urandom(size) for size in (1, 70000, 5, 300000)]
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("POST", "/upload", {"Transfer-Encoding": "chunked"}))
        for piece in pieces:
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        response = read_response(sock)
    whole = b"".join(pieces)
    assert response.json()["body_length"] == len(whole)
    assert response.json()["body_sha256"] == _sha256(whole)


def test_upload_answers_expect_continue_before_the_body(backend: BackendProcess) -> None:
    body = b"x" * 5000
    with connect(backend.host, backend.port) as sock:
        headers = {"Expect": "100-continue", "Content-Length": str(len(body))}
        sock.sendall(build_request("POST", "/upload", headers))
        interim = read_response(sock, "POST", skip_interim=False)
        assert interim.status == 100
        sock.sendall(body)
        response = read_response(sock, "POST")
    assert response.json()["body_sha256"] == _sha256(body)


def test_echo_reports_the_request_as_received(backend: BackendProcess) -> None:
    body = b"hello echo"
    with connect(backend.host, backend.port) as sock:
        client_host, client_port = sock.getsockname()[:2]
        request = (
            b"POST /echo?a=1&b=%20 HTTP/1.1\r\nHost: example.test\r\nX-Custom: One\r\n"
            b"x-custom: two\r\nContent-Length: 10\r\n\r\n" + body
        )
        sock.sendall(request)
        response = read_response(sock)
    assert response.header("Content-Type") == "application/json"
    echoed = response.json()
    assert echoed["backend"] == "b1"
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/echo?a=1&b=%20"
    assert echoed["headers"] == [
        ["Host", "example.test"],
        ["X-Custom", "One"],
        ["x-custom", "two"],
        ["Content-Length", "10"],
    ]
    assert echoed["body_length"] == len(body)
    assert echoed["body_sha256"] == _sha256(body)
    assert echoed["client"] == f"{client_host}:{client_port}"
    assert echoed["proxy"] is None


def test_health_toggles_between_ok_and_failing(fresh_backend: BackendProcess) -> None:
    host, port = fresh_backend.host, fresh_backend.port
    assert http_request(host, port, "GET", "/health").status == 200
    fresh_backend.set_health(False)
    failing = http_request(host, port, "GET", "/health")
    assert failing.status == 503
    assert failing.header("X-Backend") == "fresh"
    fresh_backend.set_health(True)
    assert http_request(host, port, "GET", "/health").status == 200
    # GET works for the toggle too, and nonsense is refused without changing state.
    assert http_request(host, port, "GET", "/admin/health?state=fail").status == 200
    assert http_request(host, port, "GET", "/health").status == 503
    assert http_request(host, port, "POST", "/admin/health?state=maybe").status == 400
    assert http_request(host, port, "GET", "/health").status == 503


def test_stats_count_connections_and_requests(fresh_backend: BackendProcess) -> None:
    before = fresh_backend.stats()
    assert before["backend"] == "fresh"
    assert before["connections_accepted"] == 1
    assert before["requests"] == 1
    held = [connect(fresh_backend.host, fresh_backend.port) for _ in range(2)]
    try:
        for sock in held:
            for _ in range(3):
                sock.sendall(build_request("GET", "/"))
                assert read_response(sock).status == 200
        after = fresh_backend.stats()
    finally:
        for sock in held:
            sock.close()
    assert after["connections_accepted"] == 4  # first stats, two held, this stats
    assert after["connections_open"] == 3
    assert after["requests"] == 1 + 6 + 1


def test_close_drops_the_connection_without_an_answer(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("GET", "/close"))
        assert sock.recv(1024) == b""


def test_reset_aborts_the_connection(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("GET", "/reset"))
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)


def test_close_after_pipelined_answer_still_delivers_it(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("GET", "/") + build_request("GET", "/close"))
        assert read_response(sock).body == b"b1\n"
        assert sock.recv(1024) == b""


def test_head_sends_headers_without_body(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("HEAD", "/bytes?n=1000"))
        head = read_response(sock, "HEAD")
        sock.sendall(build_request("HEAD", "/chunked?n=1000"))
        chunked_head = read_response(sock, "HEAD")
        # A following GET parses cleanly only if no body bytes were sent above.
        sock.sendall(build_request("GET", "/"))
        after = read_response(sock)
    assert head.status == 200
    assert head.header("Content-Length") == "1000"
    assert head.header("X-Backend") == "b1"
    assert head.body == b""
    assert chunked_head.header("Transfer-Encoding") == "chunked"
    assert after.body == b"b1\n"


def test_status_answers_with_the_requested_code(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("GET", "/status?code=503"))
        unavailable = read_response(sock)
        sock.sendall(build_request("GET", "/status?code=204"))
        no_content = read_response(sock)
        sock.sendall(build_request("GET", "/status?code=99"))
        invalid = read_response(sock)
        sock.sendall(build_request("GET", "/"))
        after = read_response(sock)
    assert (unavailable.status, unavailable.body) == (503, b"status 503\n")
    assert no_content.status == 204
    assert no_content.header("Content-Length") is None
    assert no_content.header("X-Backend") == "b1"
    assert invalid.status == 400
    assert after.body == b"b1\n"


def test_delay_waits_at_least_the_requested_time(backend: BackendProcess) -> None:
    started = time.monotonic()
    response = http_request(backend.host, backend.port, "GET", "/delay?ms=150")
    assert time.monotonic() - started >= 0.15
    assert response.status == 200


def test_malformed_request_gets_400_and_close(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
        first = read_response(sock)
        bad = read_response(sock)
        assert sock.recv(1024) == b""
    assert first.status == 200
    assert bad.status == 400
    assert bad.header("Connection") == "close"
    assert bad.header("X-Backend") == "b1"


def test_http_1_0_closes_unless_keep_alive_is_asked(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        kept = read_response(sock)
        sock.sendall(b"GET /chunked?n=300 HTTP/1.0\r\n\r\n")
        closed = read_response(sock)
        assert sock.recv(1024) == b""
    assert kept.header("Connection") == "keep-alive"
    assert closed.header("Connection") == "close"
    assert closed.header("Transfer-Encoding") is None  # no chunked framing for 1.0
    assert closed.body == pattern_bytes(300)


def test_upgrade_switches_to_raw_echo(backend: BackendProcess) -> None:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    with connect(backend.host, backend.port) as sock:
        sock.sendall(build_request("GET", "/ws", headers) + b"early bytes|")
        switched = read_response(sock, skip_interim=False)
        sock.sendall(b"later bytes")
        expected = b"early bytes|later bytes"
        echoed = b""
        while len(echoed) < len(expected):
            echoed += sock.recv(1024)
    assert switched.status == 101
    assert switched.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert echoed == expected


def test_proxy_protocol_v1_and_v2_are_reported(backend: BackendProcess) -> None:
    v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 80\r\n"
    addresses = socket.inet_aton("203.0.113.9") + socket.inet_aton("198.51.100.1")
    v2 = (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11"
        + struct.pack("!H", 12)
        + addresses
        + struct.pack("!HH", 50000, 443)
    )
    seen = []
    for preface in (v1, v2):
        with connect(backend.host, backend.port) as sock:
            sock.sendall(preface + build_request("GET", "/echo"))
            seen.append(read_response(sock).json()["proxy"])
    assert seen == [
        {"version": 1, "source": "192.0.2.7:40000", "destination": "198.51.100.1:80"},
        {"version": 2, "source": "203.0.113.9:50000", "destination": "198.51.100.1:443"},
    ]


def test_malformed_proxy_header_is_refused(backend: BackendProcess) -> None:
    with connect(backend.host, backend.port) as sock:
        sock.sendall(b"PROXY TCP4 not-an-address 198.51.100.1 1 80\r\n" + build_request("GET", "/"))
        assert read_response(sock).status == 400


def _resident_megabytes(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_large_download_to_a_stalled_reader_is_flow_controlled(
    fresh_backend: BackendProcess,
) -> None:
    baseline = _resident_megabytes(fresh_backend.proc.pid)
    with connect(fresh_backend.host, fresh_backend.port) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        # Chunked framing makes the backend build fresh buffers, which is what would
        # pile up in memory if it ignored pause_writing.
        stalled.sendall(build_request("GET", f"/chunked?n={200 * 1024 * 1024}&size=1000"))
        received = stalled.recv(65536)  # the stream has started
        # The backend keeps serving others while this reader takes nothing; the answer
        # also proves the loop is past any write burst before memory is measured.
        assert http_request(fresh_backend.host, fresh_backend.port, "GET", "/").status == 200
        grown = _resident_megabytes(fresh_backend.proc.pid) - baseline
        # Read on: the stream must continue where it stopped.
        while len(received) < 1024 * 1024:
            received += stalled.recv(1 << 20)
    assert grown < 64, f"backend buffered {grown:.0f} MB for a reader that reads nothing"
    head, _, body_start = received.partition(b"\r\n\r\n")
    assert body_start.startswith(b"3e8\r\n" + pattern_bytes(1000) + b"\r\n3e8\r\n")


def test_pause_and_resume_freeze_the_process(fresh_backend: BackendProcess) -> None:
    with connect(fresh_backend.host, fresh_backend.port) as sock:
        fresh_backend.pause()
        sock.sendall(build_request("GET", "/"))
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1024)
        fresh_backend.resume()
        sock.settimeout(10)
        assert read_response(sock).body == b"fresh\n"


def test_stop_exits_zero_and_stdin_close_also_stops() -> None:
    first, second = start_backends(2, prefix="s")
    assert (first.name, second.name) == ("s1", "s2")
    assert first.port != second.port
    assert http_request(second.host, second.port, "GET", "/").body == b"s2\n"
    assert first.stop() == 0
    assert second.proc.stdin is not None
    second.proc.stdin.close()
    assert second.proc.wait(10) == 0
    second.stop()


def test_paused_backend_still_stops_cleanly() -> None:
    process = BackendProcess("paused")
    process.pause()
    assert process.stop() == 0


def test_in_process_backend_serves_and_closes_connections() -> None:
    async def scenario() -> None:
        state = BackendState("inproc")
        server = await start_backend("127.0.0.1", 0, "inproc", state=state)
        host, port = server_address(server).rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(build_request("GET", "/"))
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readexactly(len(b"inproc\n"))
        assert b"\r\nX-Backend: inproc\r\n" in head
        assert body == b"inproc\n"
        assert state.connections_open == 1
        server.close()
        state.close_connections()
        await server.wait_closed()
        assert await reader.read() == b""
        writer.close()
        assert state.stats()["requests"] == 1

    asyncio.run(scenario())
