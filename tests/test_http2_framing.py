"""What HTTP/2 framing adds on top of the shared request path: malformed header
lists refused per stream (the checks h2 would make, done by maitred), interim
answers relayed, and the two-step GOAWAY that serves streams crossing it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import h2.errors
import pytest

from tests.support.backends import BackendProcess
from tests.support.balancer import BalancerFactory, BalancerProcess
from tests.support.h2client import RawH2, StreamResult, h2c_config


def _config(backends: list[BackendProcess]) -> str:
    return h2c_config([b.address for b in backends])


@pytest.fixture(scope="module")
def lb(
    backends: list[BackendProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BalancerProcess]:
    process = BalancerProcess(_config(backends), tmp_path_factory.mktemp("h2framing"))
    yield process
    process.kill()


MALFORMED = {
    "CR LF in a value (header injection)": [("x-note", "a\r\nx-injected: 1")],
    "NUL in a value": [("x-note", "a\x00b")],
    "a control character in a value": [("x-note", "a\x01b")],
    "whitespace around a value": [("x-note", " padded")],
    "an uppercase name": [("X-Note", "v")],
    "a name that is no token": [("x note", "v")],
    "connection": [("connection", "close")],
    "transfer-encoding": [("transfer-encoding", "chunked")],
    "upgrade": [("upgrade", "websocket")],
    "te other than trailers": [("te", "gzip")],
    "host differing from :authority": [("host", "other.test")],
    "a pseudo-field after a regular one": [("x-note", "v"), (":status", "200")],
}


@pytest.mark.parametrize("fields", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_requests_are_reset_and_the_connection_goes_on(
    lb: BalancerProcess, fields: list[tuple[str, str]]
) -> None:
    client = RawH2(lb.port, validate=False)
    try:
        stream_id = client.request("/echo", headers=fields)
        assert client.response(stream_id).reset_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert client.response(client.request("/")).status == 200
        assert client.terminated is None
    finally:
        client.close()


def test_a_request_without_scheme_is_reset(lb: BalancerProcess) -> None:
    client = RawH2(lb.port, validate=False)
    try:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a.test")],
            end_stream=True,
        )
        client.streams[stream_id] = StreamResult()
        client.flush()
        assert client.response(stream_id).reset_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    finally:
        client.close()


def test_conflicting_content_lengths_end_the_connection(lb: BalancerProcess) -> None:
    # h2 itself checks content-length against DATA, and treats a conflict as a
    # connection error: never a body of two lengths to forward.
    client = RawH2(lb.port, validate=False)
    try:
        client.request("/echo", headers=[("content-length", "1"), ("content-length", "2")])
        client.wait_closed()
        assert client.terminated is not None
        assert client.terminated.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    finally:
        client.close()


@pytest.mark.parametrize("path", ["/a b", "/a\tb", "/a#frag"])
def test_request_targets_the_request_line_cannot_carry_are_400(
    lb: BalancerProcess, path: str
) -> None:
    client = RawH2(lb.port, validate=False)
    try:
        assert client.response(client.request(path)).status == 400
    finally:
        client.close()


def test_valid_fields_reach_the_server_as_sent(lb: BalancerProcess) -> None:
    client = RawH2(lb.port)
    try:
        answer = client.response(
            client.request("/echo", headers=[("x-note", "a  b\tc"), ("te", "trailers")])
        )
        assert answer.status == 200
        headers = {name.lower(): value for name, value in json.loads(answer.body)["headers"]}
        assert headers["x-note"] == "a  b\tc"
        assert "te" not in headers  # hop-by-hop: not forwarded
    finally:
        client.close()


def test_100_continue_is_relayed_before_the_body_is_sent(lb: BalancerProcess) -> None:
    client = RawH2(lb.port)
    try:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            stream_id,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"example.test"),
                (b":path", b"/upload"),
                (b"expect", b"100-continue"),
                (b"content-length", b"5"),
            ],
        )
        client.streams[stream_id] = StreamResult()
        client.flush()
        stream = client.streams[stream_id]
        client.wait(lambda: bool(stream.informational) or stream.done)
        assert [dict(fields)[b":status"] for fields in stream.informational] == [b"100"]
        client.send_body(stream_id, b"hello")
        answer = client.response(stream_id)
        assert answer.status == 200
        assert json.loads(answer.body)["body_length"] == 5
    finally:
        client.close()


def test_stop_goaway_has_two_steps_and_serves_a_stream_crossing_the_first(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(_config(backends))
    client = RawH2(lb.port)
    try:
        slow = [client.request("/delay?ms=700") for _ in range(3)]
        client.round_trip()
        lb.proc.send_signal(15)
        # Wait until the first GOAWAY (and its PING) has arrived, unread: the
        # client opens a stream it has not yet heard of, as a racing client does.
        client.sock.settimeout(10)
        assert client.sock.recv(1, socket.MSG_PEEK)
        crossing = client.request("/")
        answers = [client.response(stream_id) for stream_id in [*slow, crossing]]
        assert [answer.status for answer in answers] == [200] * 4
        client.wait(lambda: len(client.goaways) >= 2)
        first, final = client.goaways[0], client.goaways[-1]
        assert first.last_stream_id == 2**31 - 1
        assert final.last_stream_id == crossing
        assert final.error_code == h2.errors.ErrorCodes.NO_ERROR
        client.wait_closed()
    finally:
        client.close()
    assert lb.proc.wait(20) == 0
