"""One test (or one parametrized case) per rule of docs/http-policy.md.

Raw bytes go to a real balancer process. Requests are forwarded to a
``RecordingServer`` that keeps every byte it receives, so a test checks both
what the client is answered and what reached the server: nothing for a
rejected request, the exact bytes for an accepted one. Answers from servers
come from a ``ScriptedServer`` that sends whatever bytes a test registers.

Rule ids (``R-...``) match the headings of docs/http-policy.md. Cases marked
xfail are rules maitred does not enforce yet: each reason says what happens.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import BackendProcess, Response, connect, read_response
from tests.support.bad_backends import Peer, Request, ScriptedServer, send_in_two_parts, send_raw
from tests.support.balancer import BalancerFactory, BalancerProcess, pool_yaml
from tests.support.recording import RecordingServer

TIMEOUT = 5.0
MAX_HEADER_SIZE = 2048
MAX_HEADERS = 20
MAX_URI_LENGTH = 256
MAX_BODY_SIZE = 1000

SETTLE_REQUEST = b"GET /__settle HTTP/1.1\r\nHost: settle\r\nX-Request-Id: settle\r\n\r\n"
SETTLE_FORWARDED = re.compile(rb"GET /__settle HTTP/1\.1\r\n.*?\r\n\r\n", re.S)


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture(scope="module")
def silent_recorder() -> Iterator[RecordingServer]:
    """Records and never answers: the pipelining limit test leaves it in a mess."""
    with RecordingServer() as server:
        server.hold_answers()
        yield server


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@pytest.fixture(scope="module")
def lb(
    recorder: RecordingServer,
    silent_recorder: RecordingServer,
    scripted: ScriptedServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BalancerProcess]:
    config = f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    limits:
      max_header_size: {MAX_HEADER_SIZE}
      max_headers: {MAX_HEADERS}
      max_uri_length: {MAX_URI_LENGTH}
      max_body_size: {MAX_BODY_SIZE}
    routes:
      - match: {{path_prefix: /answer/}}
        pool: scripted
      - match: {{path_prefix: /silent/}}
        pool: silent
    pool: web
pools:
  web:
    servers: [{{address: {recorder.address}}}]
    outlier_detection: {{enabled: false}}
  scripted:
    servers: [{{address: {scripted.address}}}]
    outlier_detection: {{enabled: false}}
    retries: {{attempts: 0}}
    timeouts: {{connect: 2s, response: 3s}}
  silent:
    servers: [{{address: {silent_recorder.address}}}]
    outlier_detection: {{enabled: false}}
"""
    process = BalancerProcess(config, Path(tmp_path_factory.mktemp("policy")))
    settle(process, recorder)  # leaves an idle pooled connection to the recorder
    yield process
    process.kill()


_log_start = {"line": 0}


@pytest.fixture(autouse=True)
def log_mark(lb: BalancerProcess) -> None:
    """Remember where the balancer's log stood when the test began."""
    _log_start["line"] = len(lb.log.lines)


# -- helpers ----------------------------------------------------------------------


def settle(lb: BalancerProcess, recorder: RecordingServer) -> None:
    """A barrier: a marker request through the balancer to the recorder, then a drain.

    The balancer is one event loop: whatever it wrote to the recorder before the
    marker is in the recorder's socket buffers once the marker is answered.
    """
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(SETTLE_REQUEST)
        assert read_response(sock).status == 200
    recorder.drain()


def assert_no_crash(lb: BalancerProcess) -> None:
    """The balancer logged no traceback since the test began, and is still running.

    A request it rejects itself is logged; once that line is read, every line the
    balancer wrote before it has been read too.
    """
    start = _log_start["line"]
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(b"GET /log-barrier HTTP/1.1\r\n\r\n")
        assert read_response(sock).status == 400
    lb.log.wait_for(r"rejecting request .*missing Host", start=start)
    crashes = [line for line in lb.log.lines[start:] if "Traceback" in line or "Fatal" in line]
    assert not crashes, "\n".join(lb.log.lines[start:])
    assert lb.proc.poll() is None


def forwarded(recorder: RecordingServer) -> bytes:
    """Every byte the recorder received since its last reset, markers left out."""
    return SETTLE_FORWARDED.sub(b"", recorder.raw_bytes())


def real_requests(recorder: RecordingServer) -> list[bytes]:
    return [r.target for r in recorder.complete_requests() if r.target != b"/__settle"]


def send_and_read(
    lb: BalancerProcess, raw: bytes, method: str = "GET"
) -> tuple[Response, socket.socket]:
    sock = connect("127.0.0.1", lb.port, TIMEOUT)
    sock.sendall(raw)
    return read_response(sock, method), sock


def assert_closed(sock: socket.socket) -> None:
    try:
        assert sock.recv(1) == b"", "the balancer kept the connection open"
    except ConnectionResetError:
        pass  # closed with unread bytes of ours pending: a reset is a close too
    finally:
        sock.close()


def assert_rejected(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    """The request gets ``status`` and a close, and nothing of it reaches the server."""
    recorder.reset()
    response, sock = send_and_read(lb, raw)
    assert response.status == status, response.body
    assert response.header("Connection") == "close"
    assert_closed(sock)
    settle(lb, recorder)
    assert forwarded(recorder) == b"", recorder.summary()
    assert_no_crash(lb)


def assert_rejected_mid_body(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    """A request whose body turns out bad: ``status`` and a close for the client; the
    server (which may have seen the head stream by) never receives a complete request,
    and its connection is closed."""
    recorder.reset()
    response, sock = send_and_read(lb, raw, "POST")
    assert response.status == status, response.body
    assert response.header("Connection") == "close"
    assert_closed(sock)
    recorder.wait_for(lambda server: server.partial_requests_closed())
    settle(lb, recorder)
    assert real_requests(recorder) == [], recorder.summary()
    assert recorder.errors() == [], recorder.summary()
    assert_no_crash(lb)


def forward_exactly(lb: BalancerProcess, recorder: RecordingServer, raw: bytes) -> bytes:
    """Send ``raw`` (answered 200 by the recorder); return exactly what the server got."""
    recorder.reset()
    response, sock = send_and_read(lb, raw)
    sock.close()
    assert response.status == 200, response.body
    recorder.drain()
    assert recorder.errors() == [], recorder.summary()
    assert_no_crash(lb)
    return forwarded(recorder)


def answer_through(
    lb: BalancerProcess,
    scripted: ScriptedServer,
    name: str,
    answer: bytes,
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    then_close: bool = True,
) -> tuple[Response, socket.socket]:
    """Have the scripted server answer ``answer`` to one request; read the client's answer."""
    path = scripted.on(f"/answer/{name}", send_raw(answer, then_close=then_close))
    request = f"{method} {path} {version}\r\nHost: a\r\nX-Request-Id: rid\r\n\r\n".encode()
    return send_and_read(lb, request, method)


def assert_still_in_step(sock: socket.socket) -> None:
    """The client connection still carries a correct next exchange."""
    sock.sendall(b"GET /answer/next HTTP/1.1\r\nHost: a\r\n\r\n")
    response = read_response(sock)
    assert (response.status, response.body) == (200, b"good /answer/next")


def read_until_close(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def xfail(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=reason)


def case(case_id: str, raw: bytes, status: int, bug: str | None = None) -> object:
    marks = [xfail(bug)] if bug else []
    return pytest.param(raw, status, id=case_id, marks=marks)


H = b"Host: a\r\n"

# -- R-LINE: the request line -------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case(
            "double-space",
            b"GET  / HTTP/1.1\r\n" + H + b"\r\n",
            400,
        ),
        case("tab-separator", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n", 400),
        case("space-after-version", b"GET / HTTP/1.1 \r\n" + H + b"\r\n", 400),
        case("lowercase-http", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
        case("missing-target", b"GET HTTP/1.1\r\n" + H + b"\r\n", 400),
        case("version-junk", b"GET / HTTP/1.1x\r\n" + H + b"\r\n", 400),
        case("version-two-digits", b"GET / HTTP/11.1\r\n" + H + b"\r\n", 400),
    ],
)
def test_r_line_invalid_request_line_is_400(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("not-a-token", b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
        case(
            "unknown-method",
            b"FROB / HTTP/1.1\r\n" + H + b"\r\n",
            501,
        ),
        case(
            "lowercase-method",
            b"get / HTTP/1.1\r\n" + H + b"\r\n",
            501,
        ),
    ],
)
def test_r_method_non_token_is_400_unknown_is_501(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("asterisk-without-options", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
        case("authority-form-without-connect", b"GET a:80 HTTP/1.1\r\n" + H + b"\r\n", 400),
        case("connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
        case("scheme-not-http", b"GET ftp://a/x HTTP/1.1\r\n" + H + b"\r\n", 400),
        case("space-in-target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
        case("control-in-target", b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400),
        case("nul-in-target", b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n", 400),
        case("8bit-in-target", b"GET /a\xffb HTTP/1.1\r\n" + H + b"\r\n", 400),
        case(
            "fragment-in-target",
            b"GET /a#b HTTP/1.1\r\n" + H + b"\r\n",
            400,
        ),
    ],
)
def test_r_target_form_is_checked(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


def test_r_target_too_long_is_414(lb: BalancerProcess, recorder: RecordingServer) -> None:
    target = b"/" + b"a" * MAX_URI_LENGTH
    assert_rejected(lb, recorder, b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n", 414)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("http-2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
        case("http-1.2", b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
        case("http-3.0", b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
        case("http-0.9-version", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
        case("http-0.9-simple-request", b"GET /\r\n\r\n", 505),
        # The line ends in "HTTP/1.1" but has no version: llhttp reads HTTP/0.9.
        case("http-0.9-target-ending-in-version", b"GET /HTTP/1.1\r\n" + H + b"\r\n", 505),
    ],
)
def test_r_version_other_than_1_0_and_1_1_is_505(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


# -- R-CRLF: line endings, NUL and whitespace in the head ----------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: a\n\n", 400),
        case("bare-lf-after-request-line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
        case("bare-lf-ending-the-head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400),
        case("bare-lf-inside-a-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb: c\r\n\r\n", 400),
        case("bare-cr-after-request-line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
        case("bare-cr-inside-a-value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
        case("whitespace-before-first-header", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
        case(
            "bare-cr-before-request-line",
            b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
        ),
        case(
            "bare-lf-before-request-line",
            b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
        ),
    ],
)
def test_r_crlf_bare_cr_or_lf_in_the_head_is_400(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    "between",
    [
        pytest.param(b"\n", id="lf-after-a-head"),
        pytest.param(b"\r\n\r", id="cr-after-an-empty-line"),
    ],
)
def test_r_crlf_lone_cr_or_lf_between_pipelined_requests_is_400(
    lb: BalancerProcess, recorder: RecordingServer, between: bytes
) -> None:
    """The lone byte before the second request is refused after the first request is
    answered (in order), and the second request never reaches a server."""
    recorder.reset()
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(
            b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
            + between
            + b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        assert read_response(sock).status == 200
        refused = read_response(sock)
        assert refused.status == 400
        assert b"lone CR or LF" in refused.body
        assert_closed(sock)
    settle(lb, recorder)
    assert b"/second" not in real_requests(recorder)
    assert_no_crash(lb)


def test_r_crlf_lone_lf_after_a_content_length_body_is_400(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    recorder.reset()
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(
            b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        assert read_response(sock, "POST").status == 200  # answered first, in order
        refused = read_response(sock)
        assert refused.status == 400
        assert b"lone CR or LF" in refused.body
        assert_closed(sock)
    settle(lb, recorder)
    assert b"/second" not in real_requests(recorder)
    assert_no_crash(lb)


def test_r_crlf_empty_line_before_request_line_is_ignored(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    sent = forward_exactly(
        lb, recorder, b"\r\nGET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: r1\r\n\r\n"
    )
    assert sent.startswith(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: r1\r\n")


# -- R-FIELD: header field names and values -------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        case("tab-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-A\t: b\r\n\r\n", 400),
        case("space-inside-name", b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n", 400),
        case("separator-in-name", b"GET / HTTP/1.1\r\n" + H + b"X(A): b\r\n\r\n", 400),
        case("empty-name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", 400),
        case("8bit-in-name", b"GET / HTTP/1.1\r\n" + H + b"X\xffA: b\r\n\r\n", 400),
        case("no-colon", b"GET / HTTP/1.1\r\n" + H + b"XAb\r\n\r\n", 400),
    ],
)
def test_r_field_name_must_be_a_token_followed_by_colon(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("nul", b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", 400),
        case("nul-in-host", b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n", 400),
        case("control", b"GET / HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n", 400),
        case("del", b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", 400),
    ],
)
def test_r_field_value_control_characters_are_400(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("space", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n folded\r\n\r\n", 400),
        case("tab", b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tfolded\r\n\r\n", 400),
    ],
)
def test_r_field_obs_fold_is_400(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


def test_r_field_tab_and_obs_text_in_values_are_forwarded(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    sent = forward_exactly(
        lb, recorder, b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nX: a\tb\xe9\r\n\r\n"
    )
    assert b"\r\nX: a\tb\xe9\r\n" in sent


# -- R-LIMIT: sizes of the head and of the body ---------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case(
            "head-too-large",
            b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"b" * MAX_HEADER_SIZE + b"\r\n\r\n",
            431,
        ),
        case(
            "too-many-fields",
            b"GET / HTTP/1.1\r\n"
            + H
            + b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 5))
            + b"\r\n",
            431,
        ),
        case(
            "content-length-over-limit",
            b"POST / HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % (MAX_BODY_SIZE + 1),
            413,
        ),
    ],
)
def test_r_limit_head_and_declared_body_sizes(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


def test_r_limit_chunked_body_over_limit_is_413(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    chunk = b"y" * (MAX_BODY_SIZE // 2 + 10)
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n%b\r\n" % (len(chunk), chunk)) * 2
        + b"0\r\n\r\n"
    )
    assert_rejected_mid_body(lb, recorder, raw, 413)


def test_r_limit_pipelined_requests_queued_per_connection_are_bounded(
    lb: BalancerProcess, silent_recorder: RecordingServer
) -> None:
    connections = 20
    request = b"GET /silent/p HTTP/1.1\r\nHost: a\r\n\r\n"
    burst = request * 40_000  # ~1.3 MB per connection, mostly left in kernel buffers
    socks: list[socket.socket] = []
    try:
        before = _rss_kb(lb.proc.pid)
        for _ in range(connections):
            sock = socket.create_connection(("127.0.0.1", lb.port), timeout=TIMEOUT)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(burst)
            socks.append(sock)
        # Each connection's first request reaches the silent server; the rest queue.
        silent_recorder.wait_for(lambda server: len(server.complete_requests()) >= connections)
        settle_without_recorder_answers(lb)
        growth_mb = (_rss_kb(lb.proc.pid) - before) / 1024
    finally:
        for sock in socks:
            sock.close()
    assert growth_mb < 16, f"balancer grew by {growth_mb:.0f} MB for {connections} connections"
    assert_no_crash(lb)


def settle_without_recorder_answers(lb: BalancerProcess) -> None:
    """Wait until the balancer has processed everything sent so far (its loop turned)."""
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\n\r\n")  # no Host: answered 400 by the balancer itself
        assert read_response(sock).status == 400


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- R-HOST --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("missing-on-http-1.1", b"GET / HTTP/1.1\r\n\r\n", 400),
        case("two-host-fields", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        case("two-equal-host-fields", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        case(
            "space-in-host",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            400,
        ),
        case(
            "slash-in-host",
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            400,
        ),
        case(
            "userinfo-in-host",
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            400,
        ),
    ],
)
def test_r_host_exactly_one_valid_host(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("authority-differs", b"GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("userinfo", b"GET http://u@a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("empty-authority", b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        case("http-1.1-without-host", b"GET http://a/x HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_r_host_absolute_form_authority_must_match_host(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            b"GET http://a/x?y=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n\r\n",
            b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n",
            id="path-and-query",
        ),
        pytest.param(
            b"GET HTTPS://A/x HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n",
            id="case-insensitive-scheme-and-authority",
        ),
        pytest.param(
            b"GET http://a HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n",
            id="no-path",
        ),
        pytest.param(
            b"GET http://a/x HTTP/1.0\r\nX-Request-Id: r\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n",
            id="http-1.0-host-from-authority",
        ),
    ],
)
def test_r_host_absolute_form_is_forwarded_in_origin_form(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, expected: bytes
) -> None:
    sent = forward_exactly(lb, recorder, raw)
    assert sent.startswith(expected), sent
    assert sent.count(b"\r\nHost:") == 1


def test_r_host_http10_without_host_gets_one(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    sent = forward_exactly(lb, recorder, b"GET /old HTTP/1.0\r\nX-Request-Id: r\r\n\r\n")
    assert sent == (
        b"GET /old HTTP/1.1\r\nHost: \r\nX-Request-Id: r\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: \r\n\r\n"
    )


# -- R-CL: Content-Length ------------------------------------------------------------------


def _post_with(headers: bytes, body: bytes = b"hello") -> bytes:
    return b"POST / HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n" + body


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("plus-sign", _post_with(b"Content-Length: +5\r\n"), 400),
        case("minus-sign", _post_with(b"Content-Length: -5\r\n"), 400),
        case("hex", _post_with(b"Content-Length: 0x10\r\n"), 400),
        case("empty", _post_with(b"Content-Length: \r\n", b""), 400),
        case("space-inside", _post_with(b"Content-Length: 1 0\r\n"), 400),
        case("list-of-equal-values", _post_with(b"Content-Length: 5, 5\r\n"), 400),
        case("list-of-different-values", _post_with(b"Content-Length: 5, 6\r\n"), 400),
        case("two-equal-fields", _post_with(b"Content-Length: 5\r\nContent-Length: 5\r\n"), 400),
        case(
            "two-different-fields",
            _post_with(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
            400,
        ),
        case("overflow", _post_with(b"Content-Length: 99999999999999999999999\r\n", b""), 400),
    ],
)
def test_r_cl_content_length_must_be_one_decimal_number(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


def test_r_cl_request_is_forwarded_with_one_content_length_and_its_body(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    sent = forward_exactly(
        lb,
        recorder,
        b"POST /up HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nContent-Length:\t5\r\n\r\nhello",
    )
    assert sent == (
        b"POST /up HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\nContent-Length: 5\r\n\r\nhello"
    )


# -- R-TE: Transfer-Encoding -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case(
            "content-length-then-chunked",
            _post_with(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"),
            400,
        ),
        case(
            "chunked-then-content-length",
            _post_with(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"0\r\n\r\n"),
            400,
        ),
        case(
            "both-on-http-1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            400,
        ),
    ],
)
def test_r_te_content_length_and_transfer_encoding_together_are_400(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("gzip", _post_with(b"Transfer-Encoding: gzip\r\n", b""), 501),
        case("identity", _post_with(b"Transfer-Encoding: identity\r\n", b""), 501),
        case("xchunked", _post_with(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), 501),
        case("gzip-then-chunked", _post_with(b"Transfer-Encoding: gzip, chunked\r\n"), 501),
        case(
            "gzip-and-chunked-in-two-fields",
            _post_with(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
            501,
        ),
    ],
)
def test_r_te_codings_other_than_chunked_are_501(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("chunked-not-last", _post_with(b"Transfer-Encoding: chunked, gzip\r\n"), 400),
        case("chunked-twice", _post_with(b"Transfer-Encoding: chunked, chunked\r\n"), 400),
        case(
            "chunked-in-two-fields",
            _post_with(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            400,
        ),
        case(
            "chunked-then-gzip-fields",
            _post_with(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"),
            400,
        ),
        case("empty", _post_with(b"Transfer-Encoding: \r\n", b""), 400),
        case(
            "on-http-1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
    ],
)
def test_r_te_chunked_must_be_the_only_and_final_coding_on_http11(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


@pytest.mark.parametrize(
    "coding",
    [
        pytest.param(b"chunked ", id="space"),
        pytest.param(b"chunked\t", id="tab"),
    ],
)
def test_r_te_trailing_whitespace_is_not_part_of_the_coding(
    lb: BalancerProcess, recorder: RecordingServer, coding: bytes
) -> None:
    sent = forward_exactly(
        lb,
        recorder,
        b"POST /ows HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nTransfer-Encoding: "
        + coding
        + b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    assert sent.endswith(b"\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")


# -- R-CHUNK: the chunked body ---------------------------------------------------------------

CHUNKED = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case("not-hex", CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n", 400),
        case("negative", CHUNKED + b"-1\r\nhello\r\n0\r\n\r\n", 400),
        case("0x-prefix", CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
        case("space-after-size", CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", 400),
        case("overflow", CHUNKED + b"FFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", 400),
        case("bare-lf-after-size", CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400),
        case("bare-lf-after-last-chunk", CHUNKED + b"5\r\nhello\r\n0\n\n", 400),
        case("extension-with-bare-cr", CHUNKED + b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
        case("extension-with-bare-lf", CHUNKED + b"5;a\nb\r\nhello\r\n0\r\n\r\n", 400),
        case("data-not-followed-by-crlf", CHUNKED + b"5\r\nhelloXX0\r\n\r\n", 400),
        case("data-followed-by-bare-lf", CHUNKED + b"5\r\nhello\n0\r\n\r\n", 400),
        case(
            "size-line-with-long-extension",
            CHUNKED + b"5;" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        case(
            "size-line-with-many-leading-zeros",
            CHUNKED + b"0" * 5000 + b"5\r\nhello\r\n0\r\n\r\n",
            400,
        ),
    ],
)
def test_r_chunk_invalid_chunked_body_is_400(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected_mid_body(lb, recorder, raw, status)


def test_r_chunk_request_is_rechunked_without_extensions_or_trailers(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    sent = forward_exactly(
        lb,
        recorder,
        b"POST /c HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    head, _, body = sent.partition(b"\r\n\r\n")
    assert head == (
        b"POST /c HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\nTransfer-Encoding: chunked"
    )
    assert body == b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


def test_r_chunk_trailer_fields_never_reach_the_next_request(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    recorder.reset()
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(
            b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Injected: yes\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        assert read_response(sock).status == 200
        assert read_response(sock).status == 200
    recorder.drain()
    first, second = recorder.complete_requests()
    assert (first.target, second.target) == (b"/first", b"/second")
    assert second.header_values(b"X-Injected") == []
    assert_no_crash(lb)


# -- R-FWD: what is forwarded ----------------------------------------------------------------


def test_r_fwd_pipelined_request_after_a_body_is_forwarded_separately(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    recorder.reset()
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(
            b"POST /first HTTP/1.1\r\nHost: a\r\nX-Request-Id: 1\r\nContent-Length: 5\r\n\r\n"
            b"hello"
            b"GET /second HTTP/1.1\r\nHost: a\r\nX-Request-Id: 2\r\n\r\n"
        )
        assert read_response(sock).status == 200
        assert read_response(sock).status == 200
    recorder.drain()
    first, second = recorder.complete_requests()
    assert (first.target, first.body, second.target, second.body) == (
        b"/first",
        b"hello",
        b"/second",
        b"",
    )
    common = b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n"
    assert forwarded(recorder) == (
        b"POST /first HTTP/1.1\r\nHost: a\r\nX-Request-Id: 1\r\n"
        + common
        + b"Content-Length: 5\r\n\r\nhello"
        + b"GET /second HTTP/1.1\r\nHost: a\r\nX-Request-Id: 2\r\n"
        + common
        + b"\r\n"
    )
    assert_no_crash(lb)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        case(
            "after-a-malformed-head",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n",
            400,
        ),
        case(
            "hidden-in-an-ambiguous-body",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
        ),
    ],
)
def test_r_fwd_nothing_after_a_rejected_request_is_processed(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes, status: int
) -> None:
    assert_rejected(lb, recorder, raw, status)


def test_r_fwd_hop_by_hop_fields_are_removed(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    sent = forward_exactly(
        lb,
        recorder,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nConnection: keep-alive, X-Secret\r\n"
        b"X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X-T\r\n"
        b"Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\n"
        b"Upgrade: h2c\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: gopher\r\n"
        b"X-Forwarded-Host: evil\r\nX-Kept: k\r\n\r\n",
    )
    assert sent == (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nX-Kept: k\r\n"
        b"X-Forwarded-For: 203.0.113.9, 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: a\r\n\r\n"
    )


@pytest.mark.parametrize(
    "named",
    [
        pytest.param(
            b"Host",
            id="host",
        ),
        pytest.param(
            b"X-Request-Id",
            id="x-request-id",
        ),
        pytest.param(b"X-Forwarded-For", id="x-forwarded-for"),
        pytest.param(b"Content-Length", id="content-length"),
    ],
)
def test_r_fwd_connection_cannot_remove_fields_the_balancer_relies_on(
    lb: BalancerProcess, recorder: RecordingServer, named: bytes
) -> None:
    recorder.reset()
    raw = (
        b"POST /p HTTP/1.1\r\nHost: a\r\nX-Request-Id: rid\r\nX-Forwarded-For: 198.51.100.1\r\n"
        b"Connection: " + named + b"\r\nContent-Length: 5\r\n\r\nhello"
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(raw)
        read_response(sock)
    recorder.drain()
    assert recorder.errors() == [], recorder.summary()
    (got,) = [r for r in recorder.complete_requests() if r.target == b"/p"]
    assert got.header_values(b"Host") == [b"a"]
    assert got.header_values(b"X-Request-Id") == [b"rid"]
    assert got.header_values(b"X-Forwarded-For") == [b"198.51.100.1, 127.0.0.1"]
    assert got.body == b"hello"
    assert_no_crash(lb)


def test_r_upgrade_request_is_forwarded_with_one_connection_upgrade(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    sent = forward_exactly(
        lb,
        recorder,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert sent == (
        b"GET /ws HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nSec-WebSocket-Version: 13\r\n"
        b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b"GET /h2c HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            id="h2c",
        ),
        pytest.param(
            b"GET /h2c HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nUpgrade: websocket\r\n\r\n",
            id="upgrade-without-connection-upgrade",
        ),
    ],
)
def test_r_upgrade_not_tunnelled_is_forwarded_as_a_plain_request(
    lb: BalancerProcess, recorder: RecordingServer, raw: bytes
) -> None:
    sent = forward_exactly(lb, recorder, raw)
    assert sent == (
        b"GET /h2c HTTP/1.1\r\nHost: a\r\nX-Request-Id: r\r\nX-Forwarded-For: 127.0.0.1\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n"
    )


def echo_after_switching(peer: Peer, request: Request) -> bool:
    """Say 101, then echo every byte back until the peer closes."""
    peer.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
    if peer.buffer:
        peer.send(bytes(peer.buffer))
    while data := peer.sock.recv(65536):
        peer.send(data)
    return False


def test_r_upgrade_101_turns_the_connection_into_a_tunnel(
    lb: BalancerProcess, scripted: ScriptedServer
) -> None:
    path = scripted.on("/answer/tunnel", echo_after_switching)
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        upgrade = "Connection: Upgrade\r\nUpgrade: echo\r\n"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n{upgrade}\r\n".encode())
        switched = read_response(sock, skip_interim=False)
        assert switched.status == 101
        assert switched.header("Upgrade") == "echo"
        for message in (b"ping", b"\x00\xff binary \r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"):
            sock.sendall(message)
            echoed = b""
            while len(echoed) < len(message):
                echoed += sock.recv(65536)
            assert echoed == message
    assert_no_crash(lb)


def test_r_fwd_expect_100_continue_goes_through(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    recorder.reset()
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(
            b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        interim = read_response(sock, skip_interim=False)
        assert interim.status == 100  # the server's, relayed before any body byte was sent
        assert [r.body for r in recorder.requests if r.target == b"/e"] == [b""]
        sock.sendall(b"hello")
        final = read_response(sock)
        assert (final.status, final.body) == (200, b"ok")
    (got,) = [r for r in recorder.complete_requests() if r.target == b"/e"]
    assert got.header_values(b"Expect") == [b"100-continue"]
    assert got.body == b"hello"
    assert_no_crash(lb)


# -- R-RESP: answers from servers -------------------------------------------------------------

OK_TAIL = b"Content-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        case("garbage", b"garbage\r\n\r\n", 502),
        case("empty-status-line", b"\r\n\r\n", 502),
        case("status-99", b"HTTP/1.1 99 Low\r\n" + OK_TAIL, 502),
        # Three digits llhttp reads as a status; maitred took them for interim answers.
        case("status-000", b"HTTP/1.1 000 Zero\r\n" + OK_TAIL, 502),
        case("status-099", b"HTTP/1.1 099 Low\r\n" + OK_TAIL, 502),
        case("status-1000", b"HTTP/1.1 1000 High\r\n" + OK_TAIL, 502),
        case("status-not-a-number", b"HTTP/1.1 abc X\r\n" + OK_TAIL, 502),
        case(
            "status-600",
            b"HTTP/1.1 600 Beyond\r\n" + OK_TAIL,
            502,
        ),
        case(
            "version-2.0",
            b"HTTP/2.0 200 OK\r\n" + OK_TAIL,
            502,
        ),
        case("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 502),
        case(
            "bare-cr-before-status-line",
            b"\rHTTP/1.1 200 OK\r\n" + OK_TAIL,
            502,
        ),
        case(
            "invalid-chunk-in-the-same-read-as-the-head",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            502,
        ),
        case("bare-cr-in-value", b"HTTP/1.1 200 OK\r\nX: a\rb\r\n" + OK_TAIL, 502),
        case("nul-in-value", b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n" + OK_TAIL, 502),
        case(
            "nul-in-reason-phrase",
            b"HTTP/1.1 200 O\x00K\r\n" + OK_TAIL,
            502,
        ),
        case("space-before-colon", b"HTTP/1.1 200 OK\r\nX : a\r\n" + OK_TAIL, 502),
        case("obs-fold", b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n" + OK_TAIL, 502),
        case(
            "content-length-and-chunked",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            502,
        ),
        case(
            "chunked-and-content-length",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
            b"2\r\nok\r\n0\r\n\r\n",
            502,
        ),
        case(
            "two-different-content-lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
            502,
        ),
        case(
            "two-equal-content-lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            502,
        ),
        case("content-length-plus", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", 502),
        case("content-length-list", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", 502),
        case(
            "gzip-coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz",
            502,
        ),
        case(
            "chunked-then-gzip",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nzz",
            502,
        ),
        case(
            "gzip-then-chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n",
            502,
        ),
        case(
            "chunked-in-two-fields",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n2\r\nok\r\n0\r\n\r\n",
            502,
        ),
        case(
            "unsolicited-101",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nxyz",
            502,
        ),
    ],
)
def test_r_resp_malformed_answer_is_502_and_never_forwarded(
    lb: BalancerProcess, scripted: ScriptedServer, answer: bytes, status: int
) -> None:
    response, sock = answer_through(lb, scripted, unique("malformed"), answer)
    with sock:
        assert response.status == status
        assert response.body.startswith(b"502 Bad Gateway: ")
        assert_still_in_step(sock)
    assert_no_crash(lb)


def test_r_resp_head_too_large_is_502(lb: BalancerProcess, scripted: ScriptedServer) -> None:
    big = b"".join(b"X-Big-%d: %b\r\n" % (i, b"b" * 1000) for i in range(1024))
    response, sock = answer_through(lb, scripted, "huge", b"HTTP/1.1 200 OK\r\n" + big + OK_TAIL)
    with sock:
        assert response.status == 502
    assert_no_crash(lb)


def interim_then_final(
    lb: BalancerProcess, scripted: ScriptedServer, name: str, interim_head: bytes
) -> tuple[Response, Response]:
    """The server sends ``interim_head``, then a 200 "ok": what an HTTP/1.1 client reads."""
    path = scripted.on(f"/answer/{name}", send_raw(interim_head + b"HTTP/1.1 200 OK\r\n" + OK_TAIL))
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        return read_response(sock, skip_interim=False), read_response(sock)


def test_r_resp_interim_100_is_relayed_to_http11_clients(
    lb: BalancerProcess, scripted: ScriptedServer
) -> None:
    interim, final = interim_then_final(lb, scripted, "continue2", b"HTTP/1.1 100 Continue\r\n\r\n")
    assert interim.status == 100
    assert (final.status, final.body) == (200, b"ok")
    assert_no_crash(lb)


def test_r_resp_interim_answers_keep_their_fields(
    lb: BalancerProcess, scripted: ScriptedServer
) -> None:
    hints, final = interim_then_final(
        lb, scripted, "hints", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    )
    assert hints.status == 103
    assert hints.header("Link") == "</a.css>; rel=preload"
    assert final.status == 200
    assert_no_crash(lb)


def test_r_resp_an_interim_answer_ends_with_its_head_whatever_its_fields_say(
    lb: BalancerProcess, scripted: ScriptedServer
) -> None:
    # llhttp reads a Content-Length body after any 1xx head but 100's: here it would
    # take the final answer's first byte for that body (found by fuzzing).
    interim, final = interim_then_final(
        lb, scripted, "interim-with-length", b"HTTP/1.1 106 Odd\r\nContent-Length: 1\r\n\r\n"
    )
    assert interim.status == 106
    assert (final.status, final.body) == (200, b"ok")
    assert_no_crash(lb)


def test_r_resp_interim_answers_are_not_sent_to_http10_clients(
    lb: BalancerProcess, scripted: ScriptedServer
) -> None:
    path = scripted.on(
        "/answer/continue10",
        send_raw(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n" + OK_TAIL),
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        first = read_response(sock, skip_interim=False)
        assert (first.status, first.body) == (200, b"ok")
    assert_no_crash(lb)


def test_r_resp_malformed_final_answer_after_an_interim_one_is_502(
    lb: BalancerProcess, scripted: ScriptedServer
) -> None:
    relayed = threading.Event()
    path = scripted.on(
        "/answer/interim-then-malformed",
        send_in_two_parts(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            relayed,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ),
    )
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert read_response(sock, skip_interim=False).status == 100
        relayed.set()
        assert read_response(sock).status == 502
    assert_no_crash(lb)


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        pytest.param(
            "HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", id="head-with-length"
        ),
        pytest.param(
            "HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", id="head-chunked"
        ),
        pytest.param("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", id="304"),
        pytest.param("GET", b"HTTP/1.1 204 No Content\r\n\r\n", id="204"),
    ],
)
def test_r_resp_answers_without_content_carry_no_body(
    lb: BalancerProcess, scripted: ScriptedServer, method: str, answer: bytes
) -> None:
    response, sock = answer_through(
        lb, scripted, unique("no-body"), answer, method=method, then_close=False
    )
    with sock:
        assert response.body == b""
        assert_still_in_step(sock)  # no byte was taken for a body
    assert_no_crash(lb)


def test_r_resp_204_is_relayed_without_content_length(
    lb: BalancerProcess, scripted: ScriptedServer
) -> None:
    response, sock = answer_through(
        lb, scripted, "204-length", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"
    )
    with sock:
        assert response.status == 204
        assert response.header("Content-Length") is None
    assert_no_crash(lb)


def test_r_resp_body_bytes_after_a_204_are_never_relayed(
    lb: BalancerProcess, scripted: ScriptedServer
) -> None:
    response, sock = answer_through(
        lb, scripted, "204-body", b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n" + OK_TAIL
    )
    with sock:
        assert (response.status, response.body) == (204, b"")
        assert_still_in_step(sock)
    assert_no_crash(lb)


@pytest.mark.parametrize(
    ("version", "answer", "expected"),
    [
        pytest.param(
            "HTTP/1.1",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;x=y\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Request-Id: rid\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            id="chunked-rechunked",
        ),
        pytest.param(
            "HTTP/1.1",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-Request-Id: rid\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            id="chunked-with-trailing-tab",
        ),
        pytest.param(
            "HTTP/1.1",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
            b"HTTP/1.1 200 OK\r\nX-Request-Id: rid\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\nb\r\nuntil close\r\n0\r\n\r\n",
            id="close-delimited-chunked-for-http11",
        ),
        pytest.param(
            "HTTP/1.0",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
            b"HTTP/1.1 200 OK\r\nX-Request-Id: rid\r\nConnection: close\r\n\r\nuntil close",
            id="close-delimited-for-http10",
        ),
        pytest.param(
            "HTTP/1.1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\n"
            b"X-Hop: h\r\nKeep-Alive: timeout=5\r\nUpgrade: h2\r\nX-Kept: k\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nX-Kept: k\r\nX-Request-Id: rid\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\nok",
            id="hop-by-hop-removed",
        ),
    ],
)
def test_r_resp_answer_is_reframed_unambiguously(
    lb: BalancerProcess,
    scripted: ScriptedServer,
    version: str,
    answer: bytes,
    expected: bytes,
) -> None:
    path = scripted.on(f"/answer/{unique('reframe')}", send_raw(answer, then_close=True))
    with connect("127.0.0.1", lb.port, TIMEOUT) as sock:
        sock.sendall(
            f"GET {path} {version}\r\nHost: a\r\nX-Request-Id: rid\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        assert read_until_close(sock) == expected
    assert_no_crash(lb)


def test_r_resp_balancer_survives_every_rule_above(
    lb: BalancerProcess, recorder: RecordingServer
) -> None:
    """Runs last in this file: the process is alive and still forwards."""
    assert lb.proc.poll() is None
    settle(lb, recorder)


def test_a_refused_pipelined_request_waits_for_the_slow_answer_before_it(
    balancer: BalancerFactory, backends: list[BackendProcess]
) -> None:
    """Two valid pipelined requests (the first answered slowly) then a malformed one:
    both answers arrive whole and in order, then the 400, then the close."""
    slow = balancer(pool_yaml([backends[0].address]))
    with connect("127.0.0.1", slow.port, TIMEOUT) as sock:
        sock.sendall(
            b"GET /delay?ms=300 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /x HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n"
        )
        first, second = read_response(sock), read_response(sock)
        assert (first.status, second.status) == (200, 200)
        assert second.json()["path"] == "/echo"
        assert read_response(sock).status == 400
        assert_closed(sock)
