"""The PROXY protocol codec, v1 and v2, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.proxy.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    header_v1,
    header_v2,
    parse,
)

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(min_value=0, max_value=65535)


@given(st.one_of(ipv4, ipv6), st.one_of(ipv4, ipv6), ports, ports, st.binary(max_size=50))
def test_both_versions_round_trip(
    source: str, destination: str, source_port: int, destination_port: int, rest: bytes
) -> None:
    if (":" in source) != (":" in destination):
        destination = source
    for build in (header_v1, header_v2):
        header = build((source, source_port), (destination, destination_port))
        parsed = parse(header + rest)
        assert parsed == ProxyHeader(
            (source, source_port), (destination, destination_port), len(header)
        )


def test_v1_example_from_the_spec() -> None:
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"
    parsed = parse(data)
    assert parsed is not None
    assert parsed.source == ("192.168.0.1", 56324)
    assert parsed.destination == ("192.168.0.11", 443)
    assert data[parsed.length :] == b"GET / HTTP/1.1\r\n"


def test_incomplete_headers_ask_for_more() -> None:
    full = header_v2(("10.0.0.1", 1), ("10.0.0.2", 2))
    for cut in range(1, len(full)):
        assert parse(full[:cut]) is None
    assert parse(b"PROXY TCP4 1.2.3.4") is None


def test_unknown_and_local_carry_no_address() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(None, None, 15)
    local = V2_SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
    assert parse(local) == ProxyHeader(None, None, 16)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 200,
        V2_SIGNATURE + bytes([0x31, 0x11, 0x00, 0x0C]) + bytes(12),
        V2_SIGNATURE + bytes([0x21, 0x11, 0x00, 0x04]) + bytes(4),
        V2_SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]),
    ],
)
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)


@given(st.binary(max_size=120))
def test_parse_never_fails_otherwise(data: bytes) -> None:
    try:
        parsed = parse(data)
    except ProxyProtocolError:
        return
    assert parsed is None or 0 < parsed.length <= len(data)
