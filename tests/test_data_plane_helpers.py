"""The data plane's small compiled helpers, checked against their plain definitions:
Host validation (RFC 9110 7.2), the request IDs maitred generates, the latency
histogram's buckets, and the per-address bytes a request head reuses."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from maitred.proxy.client_identity import address_bytes, forwarded_for_field
from maitred.proxy.framing import valid_host
from maitred.proxy.http1 import DataPlane
from maitred.proxy.routing import LATENCY_BUCKETS, latency_bucket

#: What uri-host [":" port] never holds: spaces, path, userinfo, query, fragment.
NOT_IN_HOST = b" \t/\\@?#"


@given(st.binary(max_size=40) | st.text(max_size=40).map(str.encode))
def test_a_host_is_valid_when_it_holds_no_delimiter(host: bytes) -> None:
    assert valid_host(host) == (not any(byte in NOT_IN_HOST for byte in host))


@pytest.mark.parametrize("delimiter", list(NOT_IN_HOST))
def test_each_delimiter_makes_a_host_invalid_wherever_it_is(delimiter: int) -> None:
    for host in (b"%ca", b"a%cb", b"ab:80%c"):
        assert not valid_host(host.replace(b"%c", bytes([delimiter])))


def test_ordinary_hosts_are_valid() -> None:
    for host in (b"", b"example.com", b"example.com:8080", b"[::1]:80", "bücher.de".encode()):
        assert valid_host(host)


@pytest.fixture
def plane() -> Iterator[DataPlane]:
    loop = uvloop.new_event_loop()
    yield DataPlane(loop)
    loop.close()


def test_request_ids_count_up_in_hex_from_one_across_every_carry(plane: DataPlane) -> None:
    prefix = plane.id_prefix
    assert prefix.endswith(b"-")
    for count in range(1, 0x1002):  # through 0xf, 0xff and 0xfff
        assert plane.new_request_id() == prefix + b"%x" % count


def test_request_ids_of_two_processes_differ(plane: DataPlane) -> None:
    other = DataPlane(uvloop.new_event_loop())
    other.loop.close()
    assert plane.new_request_id() != other.new_request_id()


@given(st.floats(min_value=0, max_value=100, allow_nan=False))
def test_a_latency_falls_in_the_bucket_bisect_finds(seconds: float) -> None:
    assert latency_bucket(seconds) == bisect.bisect_left(LATENCY_BUCKETS, seconds)


@pytest.mark.parametrize("bound", LATENCY_BUCKETS)
def test_a_latency_on_a_bound_counts_in_that_bound_s_bucket(bound: float) -> None:
    assert latency_bucket(bound) == LATENCY_BUCKETS.index(bound)
    assert latency_bucket(bound * 1.0001) == LATENCY_BUCKETS.index(bound) + 1


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "2001:db8::7"])
def test_an_address_s_bytes_and_field_are_made_once_and_shared(ip: str) -> None:
    assert address_bytes(ip) == ip.encode()
    assert forwarded_for_field(ip) == b"X-Forwarded-For: " + ip.encode()
    # Shared by every connection from the address, not made per connection or request.
    assert address_bytes(ip) is address_bytes(ip)
    assert forwarded_for_field(ip) is forwarded_for_field(ip)
