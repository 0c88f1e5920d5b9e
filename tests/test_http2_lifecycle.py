"""GOAWAY on reload and stop: the streams in flight are answered, none is lost."""

from __future__ import annotations

import h2.errors

from tests.support.backends import BackendProcess
from tests.support.balancer import BalancerFactory
from tests.support.h2client import RawH2, h2c_config


def _config(backends: list[BackendProcess], max_streams: int) -> str:
    return h2c_config([b.address for b in backends], max_streams)


def _in_flight(client: RawH2, count: int) -> list[int]:
    """Open ``count`` slow streams, and make sure the balancer has read them all
    (streams it has not seen before its GOAWAY are refused, for the client to retry)."""
    streams = [client.request("/delay?ms=700") for _ in range(count)]
    client.round_trip()
    return streams


def test_reload_with_new_http2_settings_sends_goaway_and_finishes_streams(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(_config(backends, 100))
    client = RawH2(lb.port)
    try:
        streams = _in_flight(client, 20)
        lb.reload(_config(backends, 50))
        answers = [client.response(stream_id) for stream_id in streams]
        assert [answer.status for answer in answers] == [200] * 20
        assert client.terminated is not None
        assert client.terminated.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert client.terminated.last_stream_id >= max(streams)
        client.wait_closed()
    finally:
        client.close()
    fresh = RawH2(lb.port)  # the listener serves new connections with the new settings
    try:
        assert fresh.response(fresh.request("/")).status == 200
    finally:
        fresh.close()


def test_reload_without_http2_changes_keeps_the_connection(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(_config(backends, 100))
    client = RawH2(lb.port)
    try:
        streams = _in_flight(client, 5)
        lb.reload(_config(backends, 100).replace("drain_timeout: 20s", "drain_timeout: 15s"))
        assert [client.response(s).status for s in streams] == [200] * 5
        assert client.response(client.request("/")).status == 200
        assert client.terminated is None
    finally:
        client.close()


def test_stop_sends_goaway_and_finishes_streams(
    backends: list[BackendProcess], balancer: BalancerFactory
) -> None:
    lb = balancer(_config(backends, 100))
    client = RawH2(lb.port)
    try:
        streams = _in_flight(client, 20)
        lb.proc.send_signal(15)
        answers = [client.response(stream_id) for stream_id in streams]
        assert [answer.status for answer in answers] == [200] * 20
        assert client.terminated is not None
        assert client.terminated.error_code == h2.errors.ErrorCodes.NO_ERROR
        client.wait_closed()
    finally:
        client.close()
    assert lb.proc.wait(20) == 0
