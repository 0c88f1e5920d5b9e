"""HTTP/2 abuse is contained: each attack costs the attacker its connection (or
its extra streams), and the balancer goes on serving everybody else."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import h2.errors
import h2.settings
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from tests.support.backends import BackendProcess
from tests.support.balancer import BalancerProcess
from tests.support.h2client import RawH2

LIMITS = (
    "{h2c: true, max_concurrent_streams: 5, max_resets: 20, max_control_frames: 50,"
    " max_header_list_size: 4096}"
)


@pytest.fixture(scope="module")
def lb(
    backends: list[BackendProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BalancerProcess]:
    servers = "".join(f"      - {{address: {b.address}}}\n" for b in backends)
    config = f"""
listeners:
  - name: h2c
    bind: 127.0.0.1:0
    pool: web
    http2: {LIMITS}
pools:
  web:
    servers:
{servers}"""
    process = BalancerProcess(config, tmp_path_factory.mktemp("h2abuse"))
    yield process
    process.kill()


@pytest.fixture
def bystander(lb: BalancerProcess) -> Iterator[RawH2]:
    """A well-behaved client connected before the attack; it must keep being served."""
    client = RawH2(lb.port)
    assert client.response(client.request("/")).status == 200
    yield client
    assert client.response(client.request("/")).status == 200
    client.close()


def _closed_with_calm(client: RawH2) -> None:
    client.wait_closed()
    assert client.terminated is not None
    assert client.terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_streams_past_the_limit_are_refused_and_the_others_answered(
    lb: BalancerProcess, bystander: RawH2
) -> None:
    client = RawH2(lb.port)
    try:
        # Opened before the server's SETTINGS could be applied by the client.
        client.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
        streams = [client.request("/delay?ms=300") for _ in range(8)]
        answers = [client.response(stream_id) for stream_id in streams]
        answered = [a for a in answers if a.ended and a.status == 200]
        refused = [a for a in answers if a.reset_code == h2.errors.ErrorCodes.REFUSED_STREAM]
        assert len(answered) == 5 and len(refused) == 3
        # The connection itself is fine: a new stream once the others are done.
        assert client.response(client.request("/")).status == 200
    finally:
        client.close()


def test_rapid_reset_closes_the_connection(lb: BalancerProcess, bystander: RawH2) -> None:
    client = RawH2(lb.port)
    try:
        for _ in range(100):
            try:  # the server may close while requests are still being sent
                stream_id = client.request("/delay?ms=1000")
                client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                client.flush()
            except OSError:
                break
        _closed_with_calm(client)
    finally:
        client.close()


def _ping(client: RawH2, n: int) -> None:
    client.conn.ping(n.to_bytes(8, "big"))


def _settings(client: RawH2, n: int) -> None:
    client.conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})


@pytest.mark.parametrize("send", [_ping, _settings], ids=["ping", "settings"])
def test_a_control_frame_flood_closes_the_connection(
    lb: BalancerProcess, bystander: RawH2, send: Callable[[RawH2, int], None]
) -> None:
    client = RawH2(lb.port)
    try:
        for n in range(200):
            send(client, n)
            try:
                client.flush()
            except OSError:
                break
        _closed_with_calm(client)
    finally:
        client.close()


def test_hpack_bomb_closes_the_connection(lb: BalancerProcess, bystander: RawH2) -> None:
    client = RawH2(lb.port)
    try:
        # One 3 KB value enters the dynamic table, then each repeat costs a byte or
        # two on the wire but 3 KB decoded: 60 KB against a 4 KB header list limit.
        client.request("/", headers=[("x-bomb", "x" * 3000)] * 20)
        _closed_with_calm(client)
    finally:
        client.close()


def test_oversized_header_list_closes_the_connection(lb: BalancerProcess, bystander: RawH2) -> None:
    client = RawH2(lb.port)
    try:
        client.request("/", headers=[(f"x-field-{n}", "v" * 100) for n in range(60)])
        client.wait_closed()
        assert client.terminated is not None
        assert client.terminated.error_code != h2.errors.ErrorCodes.NO_ERROR
    finally:
        client.close()


def test_continuation_flood_closes_the_connection(lb: BalancerProcess, bystander: RawH2) -> None:
    client = RawH2(lb.port)
    try:
        headers = HeadersFrame(1)  # no END_HEADERS: CONTINUATION frames must follow
        headers.data = client.conn.encoder.encode(
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
        )
        wire = [headers.serialize()]
        for _ in range(500):
            continuation = ContinuationFrame(1)
            continuation.data = b"\x00" * 16  # never END_HEADERS
            wire.append(continuation.serialize())
        with contextlib.suppress(OSError):
            client.sock.sendall(b"".join(wire))
        client.wait_closed()
        assert client.terminated is not None
        assert client.terminated.error_code != h2.errors.ErrorCodes.NO_ERROR
    finally:
        client.close()
