"""Client address behind trusted proxies, header reading, answer headers, settings."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maitred.config import ConfigError, load_config
from maitred.config.model import Config, Listener, RateLimit, RateLimitStore, Route
from maitred.policies.gcra import GcraRate
from maitred.policies.rate_limit import RateLimitPolicy, build_policies
from maitred.policies.rate_limit_client import (
    TrustedProxies,
    client_address,
    header_values,
    parse_hop,
)
from maitred.policies.rate_limit_headers import policy_item, ratelimit_item, retry_after

TRUSTED = TrustedProxies([ip_network("10.0.0.0/8"), ip_network("fd00::/8")])


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"X-Forwarded-For", value.encode()) for value in values]


# -- client_address ------------------------------------------------------------------


def test_an_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert client_address("203.0.113.9", xff("1.2.3.4"), TRUSTED) == "203.0.113.9"
    assert client_address("203.0.113.9", xff("10.0.0.1"), TRUSTED) == "203.0.113.9"
    assert client_address("10.0.0.1", xff("1.2.3.4"), TrustedProxies()) == "10.0.0.1"


def test_behind_trusted_proxies_the_last_untrusted_hop_is_the_client() -> None:
    # client 198.51.100.7 -> proxy 10.1.1.1 -> proxy 10.2.2.2 (peer); the client forged 1.1.1.1
    headers = xff("1.1.1.1, 198.51.100.7", "10.1.1.1")
    assert client_address("10.2.2.2", headers, TRUSTED) == "198.51.100.7"


def test_a_trusted_peer_without_the_header_is_the_client() -> None:
    assert client_address("10.2.2.2", [], TRUSTED) == "10.2.2.2"
    assert client_address("10.2.2.2", [(b"X-Other", b"1.2.3.4")], TRUSTED) == "10.2.2.2"


def test_when_every_hop_is_trusted_the_leftmost_is_the_client() -> None:
    assert client_address("10.2.2.2", xff("10.9.9.9, 10.1.1.1"), TRUSTED) == "10.9.9.9"


def test_a_hop_that_is_not_an_address_stops_at_the_last_verified_one() -> None:
    assert client_address("10.2.2.2", xff("1.2.3.4, garbage, 10.1.1.1"), TRUSTED) == "10.1.1.1"
    assert client_address("10.2.2.2", xff("unknown"), TRUSTED) == "10.2.2.2"


def test_ports_brackets_and_ipv4_mapped_addresses() -> None:
    assert client_address("10.2.2.2", xff("198.51.100.7:5555"), TRUSTED) == "198.51.100.7"
    assert client_address("fd00::1", xff("[2001:db8::1]:443"), TRUSTED) == "2001:db8::1"
    assert client_address("::ffff:10.2.2.2", xff("::ffff:198.51.100.7"), TRUSTED) == (
        "198.51.100.7"
    )
    assert parse_hop("not an address") is None


@given(
    st.lists(st.ip_addresses(v=4).map(str), max_size=6),
    st.ip_addresses(v=4).map(str),
)
def test_the_client_never_comes_from_left_of_an_untrusted_hop(forged: list[str], real: str) -> None:
    """Whatever a client puts in X-Forwarded-For, a trusted chain yields its real address."""
    if real in TRUSTED:
        return
    headers = xff(", ".join([*forged, real]), "10.1.1.1")
    assert client_address("10.2.2.2", headers, TRUSTED) == real


def test_header_values_reads_every_occurrence_case_insensitively() -> None:
    head = (
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key: one\r\nx-api-key:  two \r\nX-Api-Keys: no\r\n\r\n"
    )
    assert header_values(head, b"x-api-key") == [b"one", b"two"]
    assert header_values(head, b"x-missing") == []


# -- answer headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "per", "burst", "expected"),
    [
        (100, 1.0, 100, b'"listener";q=100;w=1'),
        (100, 1.0, 10, b'"listener";q=100;w=1'),
        (1, 1.0, 20, b'"listener";q=20;w=20'),
        (10, 60.0, 10, b'"listener";q=10;w=60'),
        (3, 1.0, 1, b'"listener";q=3;w=1'),
    ],
)
def test_policy_states_the_sustained_rate_over_the_refill_time(
    rate: int, per: float, burst: int, expected: bytes
) -> None:
    assert policy_item("listener", GcraRate.of(rate, per, burst)) == expected


def test_ratelimit_item_and_retry_after_round_up_to_whole_seconds() -> None:
    assert ratelimit_item("route", 42, 0.2) == b'"route";r=42;t=1'
    assert ratelimit_item("route", 0, 0.0) == b'"route";r=0;t=0'
    assert retry_after(0.001) == b"1"
    assert retry_after(1.0) == b"1"
    assert retry_after(1.000001) == b"2"
    assert policy_item('a"b\\', GcraRate.of(1, 1.0, 1)).startswith(b'"a\\"b\\\\"')


# -- settings ------------------------------------------------------------------------


def test_rate_limit_settings_and_their_defaults() -> None:
    config = Config.model_validate(
        {
            "rate_limit_store": {"redis": "redis://127.0.0.1:6379/0"},
            "listeners": [
                {
                    "name": "public",
                    "bind": "127.0.0.1:0",
                    "pool": "web",
                    "trusted_proxies": ["10.0.0.0/8", "192.168.1.1"],
                    "rate_limit": {"rate": 5, "key": "header:X-Api-Key", "headers": False},
                    "routes": [
                        {
                            "match": {"path_prefix": "/api/"},
                            "pool": "web",
                            "rate_limit": {"rate": 1, "per": "2s", "max_keys": 10},
                        }
                    ],
                }
            ],
            "pools": {"web": {"servers": [{"address": "127.0.0.1:9001"}]}},
        }
    )
    store = config.rate_limit_store
    assert store == RateLimitStore(redis="redis://127.0.0.1:6379/0")
    assert (store.on_store_failure, store.timeout) == ("local", 0.1)
    listener = config.listeners[0]
    assert listener.rate_limit == RateLimit(key="header:x-api-key", rate=5, burst=5, headers=False)
    assert listener.rate_limit.max_keys == 1_000_000
    assert listener.trusted_proxies == (ip_network("10.0.0.0/8"), ip_network("192.168.1.1/32"))
    route = listener.routes[0]
    assert route.rate_limit == RateLimit(rate=1, per=2.0, burst=1, max_keys=10)
    assert config.to_dict()["listeners"][0]["trusted_proxies"] == [
        "10.0.0.0/8",
        "192.168.1.1/32",
    ]


def test_bad_rate_limit_settings_are_reported_at_their_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """
rate_limit_store: {redis: "http://x", on_store_failure: maybe, timeout: 0s}
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
    trusted_proxies: [10.0.0.0/33]
    routes:
      - {match: {path_prefix: /}, pool: web, rate_limit: {rate: 1, max_keys: 0}}
pools:
  web: {servers: [{address: 127.0.0.1:9001}]}
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = "\n".join(str(problem) for problem in caught.value.problems)
    assert "rate_limit_store.redis: must be a redis://, rediss:// or unix:// URL" in problems
    assert "rate_limit_store.on_store_failure" in problems
    assert "rate_limit_store.timeout" in problems
    assert "listeners[0].trusted_proxies[0]: '10.0.0.0/33' is not an address or a CIDR" in problems
    assert "listeners[0].routes[0].rate_limit.max_keys: must be >= 1" in problems


# -- building policies ---------------------------------------------------------------


def listener_with(rate_limit: dict[str, object] | None, routes: tuple[Route, ...] = ()) -> Listener:
    return Listener.model_validate(
        {
            "name": "public",
            "bind": "127.0.0.1:0",
            "pool": "web",
            "rate_limit": rate_limit,
            "routes": [route.model_dump() for route in routes],
        }
    )


def test_no_limit_means_no_policy() -> None:
    assert build_policies(listener_with(None), None) == ()


def built(listener: Listener, route: Route | None) -> RateLimitPolicy:
    (policy,) = build_policies(listener, route)
    assert isinstance(policy, RateLimitPolicy)
    return policy


def test_limits_keep_their_counts_across_reloads_unless_their_settings_change() -> None:
    route = Route.model_validate(
        {"match": {"host": "api.example"}, "pool": "web", "rate_limit": {"rate": 7}}
    )
    first = built(listener_with({"rate": 5}, (route,)), route).limits
    again = built(listener_with({"rate": 5}, (route,)), route).limits
    changed = built(listener_with({"rate": 6}, (route,)), route).limits
    default = built(listener_with({"rate": 5}, (route,)), None).limits
    assert [limit.name for limit in first] == ["listener", "route"]
    assert first[0].local is again[0].local
    assert first[1].local is again[1].local
    assert first[0].local is not changed[0].local
    assert first[1].local is changed[1].local
    # The listener's limit is one table for the default route and every route.
    assert default[0].local is first[0].local
    assert first[0].redis_prefix == again[0].redis_prefix
    assert first[0].redis_prefix != changed[0].redis_prefix
