"""The configuration model: parsing the contract's YAML, values, immutability, flags."""

from __future__ import annotations

import ipaddress
import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from maitred.config import (
    ALGORITHMS,
    Address,
    Config,
    ConfigError,
    Listener,
    Pool,
    RateLimit,
    ServerConfig,
    config_from_flags,
    format_duration,
    load_config,
    parse_config_text,
    parse_duration,
)

# The example of CONTRACT.md, plus the `api` pool its route names.
CONTRACT_EXAMPLE = textwrap.dedent(
    """\
    workers: 1                         # integer or "auto" (one per core)
    admin:
      bind: 127.0.0.1:9090
      token: change-me                 # optional
    rate_limit_store:                  # optional; default is in-process memory
      redis: redis://127.0.0.1:6379/0
    listeners:
      - name: public
        bind: 127.0.0.1:8080
        protocol: http                 # http (default) | tcp
        tls:                           # present => this listener speaks HTTPS
          certificates:                # chosen by SNI; the first is the default
            - {cert: site-a.pem, key: site-a.key}
        routes:                        # first match wins; http only
          - match: {host: API.example.com, path_prefix: /v1/}
            pool: api
        pool: web                      # used when no route matches
        rate_limit: {key: client_ip, rate: 100, per: 1s, burst: 50}
        timeouts: {client_header: 10s, idle: 60s}
        proxy_protocol: false
    pools:
      web:
        algorithm: round_robin
        servers:
          - {address: 127.0.0.1:9001, weight: 5}
          - {address: 127.0.0.1:9002, weight: 1, backup: true}
        health_check: {path: /health, interval: 5s, timeout: 3s,
                       healthy_threshold: 2, unhealthy_threshold: 3}
        sticky: {mode: cookie, cookie: LB_SESSION, max_age: 1h}
        timeouts: {connect: 3s, response: 30s}
        send_proxy_protocol: v2
      api:
        servers:
          - address: "[::1]:9003"
    """
)

MINIMAL = textwrap.dedent(
    """\
    listeners:
      - {name: main, bind: 127.0.0.1:0, pool: web}
    pools:
      web: {}
    """
)


def test_contract_example_parses_into_the_model(tmp_path: Path) -> None:
    path = tmp_path / "maitred.yaml"
    path.write_text(CONTRACT_EXAMPLE)

    config = load_config(path)

    assert config.workers == 1
    assert config.admin is not None
    assert config.admin.bind == Address("127.0.0.1", 9090)
    assert config.admin.token == "change-me"
    assert config.rate_limit_store is not None
    assert config.rate_limit_store.redis == "redis://127.0.0.1:6379/0"
    (listener,) = config.listeners
    assert listener.name == "public"
    assert str(listener.bind) == "127.0.0.1:8080"
    assert listener.protocol == "http"
    assert listener.tls is not None
    assert [(c.cert, c.key) for c in listener.tls.certificates] == [("site-a.pem", "site-a.key")]
    (route,) = listener.routes
    assert route.match.host == "api.example.com"  # stored lowercased
    assert route.match.path_prefix == "/v1/"
    assert route.pool == "api"
    assert listener.pool == "web"
    assert listener.rate_limit == RateLimit(key="client_ip", rate=100, per=1.0, burst=50)
    assert (listener.timeouts.client_header, listener.timeouts.idle) == (10.0, 60.0)
    assert listener.proxy_protocol is False

    web = config.pools["web"]
    assert web.algorithm == "round_robin"
    assert web.servers == (
        ServerConfig(address=Address("127.0.0.1", 9001), weight=5),
        ServerConfig(address=Address("127.0.0.1", 9002), weight=1, backup=True),
    )
    assert web.health_check is not None
    assert web.health_check.path == "/health"
    assert (web.health_check.interval, web.health_check.timeout) == (5.0, 3.0)
    assert (web.health_check.healthy_threshold, web.health_check.unhealthy_threshold) == (2, 3)
    assert web.sticky is not None
    assert (web.sticky.mode, web.sticky.cookie, web.sticky.max_age) == (
        "cookie",
        "LB_SESSION",
        3600,
    )
    assert (web.timeouts.connect, web.timeouts.response) == (3.0, 30.0)
    assert web.send_proxy_protocol == "v2"
    assert config.pools["api"].servers[0].address == Address("::1", 9003)


def test_omitted_settings_take_their_documented_defaults() -> None:
    config = parse_config_text(MINIMAL)

    assert (config.workers, config.admin, config.rate_limit_store) == (1, None, None)
    assert (config.drain_timeout, config.state_dir) == (30.0, None)
    listener = config.listeners[0]
    assert listener.protocol == "http" and listener.routes == () and listener.tls is None
    assert (listener.timeouts.client_header, listener.timeouts.idle) == (10.0, 60.0)
    assert listener.limits.max_header_size == 16384
    assert listener.limits.max_uri_length == 8192
    assert listener.limits.max_body_size is None
    assert listener.proxy_protocol is False
    pool = config.pools["web"]
    assert pool.algorithm == "round_robin" and pool.servers == ()
    assert (pool.health_check, pool.sticky, pool.send_proxy_protocol) == (None, None, None)
    assert (pool.timeouts.connect, pool.timeouts.response) == (3.0, 30.0)
    assert (pool.connection_pool.max_idle, pool.connection_pool.idle_timeout) == (64, 60.0)
    assert (pool.hash_on, pool.balance_factor, pool.slow_start) == (None, 0.25, None)


def test_nested_defaults_apply_when_a_section_is_given_partially() -> None:
    config = parse_config_text(
        MINIMAL.replace("web: {}", "web: {health_check: {path: /ping}, sticky: {mode: ip}}")
    )
    health_check = config.pools["web"].health_check
    assert health_check is not None
    assert (health_check.path, health_check.interval, health_check.timeout) == ("/ping", 5.0, 3.0)
    assert (health_check.healthy_threshold, health_check.unhealthy_threshold) == (2, 3)
    sticky = config.pools["web"].sticky
    assert sticky is not None
    assert (sticky.mode, sticky.cookie, sticky.max_age) == ("ip", "LB_SESSION", 3600.0)


def test_workers_accepts_auto() -> None:
    assert parse_config_text("workers: auto\n" + MINIMAL).workers == "auto"
    assert parse_config_text("workers: 4\n" + MINIMAL).workers == 4


def test_every_algorithm_name_of_the_contract_is_accepted() -> None:
    for algorithm in ALGORITHMS:
        config = parse_config_text(MINIMAL.replace("web: {}", f"web: {{algorithm: {algorithm}}}"))
        assert config.pools["web"].algorithm == algorithm


def test_rate_limit_burst_defaults_to_the_rate() -> None:
    assert RateLimit(rate=7).burst == 7
    assert RateLimit(rate=7, burst=20).burst == 20


def test_header_names_in_key_specs_are_lowercased() -> None:
    config = parse_config_text(
        MINIMAL.replace(
            "web: {}", "web: {sticky: {mode: 'header:X-Session'}, hash_on: 'cookie:Sid'}"
        )
    )
    pool = config.pools["web"]
    assert pool.sticky is not None and pool.sticky.mode == "header:x-session"
    assert pool.hash_on == "cookie:Sid"  # cookie names are case-sensitive


def test_to_dict_is_plain_json_with_seconds_and_address_strings() -> None:
    config = parse_config_text(CONTRACT_EXAMPLE)

    data = config.to_dict()

    assert json.loads(json.dumps(data)) == data
    assert data["admin"]["bind"] == "127.0.0.1:9090"
    assert data["listeners"][0]["timeouts"] == {
        "client_header": 10.0,
        "client_body": 30.0,
        "client_body_min_rate": None,
        "client_body_min_rate_grace": 10.0,
        "idle": 60.0,
        "tunnel": 3600.0,
    }
    assert data["pools"]["web"]["servers"][0] == {
        "address": "127.0.0.1:9001",
        "weight": 5,
        "backup": False,
        "max_connections": None,
        "health_check_path": None,
    }
    assert data["pools"]["web"]["sticky"]["max_age"] == 3600.0
    assert data["pools"]["api"]["servers"][0]["address"] == "[::1]:9003"
    assert data["drain_timeout"] == 30.0
    assert Config.model_validate(data) == config


def test_config_is_immutable_all_the_way_down() -> None:
    config = parse_config_text(CONTRACT_EXAMPLE)

    with pytest.raises(ValidationError):
        config.workers = 2
    with pytest.raises(ValidationError):
        config.listeners[0].timeouts.idle = 1.0
    with pytest.raises(ValidationError):
        config.pools["web"].servers[0].weight = 9
    with pytest.raises(TypeError):
        config.pools["new"] = Pool()  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.listeners.append(config.listeners[0])  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        config.listeners[0].bind.port = 1  # type: ignore[misc]


def test_building_a_config_in_code_applies_the_cross_field_rules() -> None:
    listener = Listener(name="main", bind=Address("127.0.0.1", 0), pool="missing")
    with pytest.raises(ValidationError, match="listeners\\[0\\].pool: unknown pool 'missing'"):
        Config(listeners=(listener,), pools={"web": Pool()})


# --- durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("100ms", 0.1),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("0s", 0.0),
        (" 2s ", 2.0),
        ("3", 3.0),
        (7, 7.0),
        (0.5, 0.5),
    ],
)
def test_durations_become_seconds(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "s", "ms5", "5 s 3", "1d", "five", "nan", True, None])
def test_unreadable_durations_are_rejected(text: object) -> None:
    with pytest.raises(ValueError, match="must be a duration like 250ms"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**7), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_units_scale_exactly(count: int, unit: str) -> None:
    size = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{count}{unit}") == pytest.approx(count * size, rel=1e-12)


@given(st.integers(min_value=0, max_value=10**9))
def test_formatted_durations_parse_back_to_the_same_seconds(milliseconds: int) -> None:
    seconds = milliseconds / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_numbers_of_seconds_are_taken_as_is(seconds: float) -> None:
    assert parse_duration(seconds) == seconds


def test_format_duration_picks_the_largest_exact_unit() -> None:
    assert [format_duration(s) for s in (0, 0.25, 5, 60, 90, 3600)] == [
        "0s",
        "250ms",
        "5s",
        "1m",
        "90s",
        "1h",
    ]


# --- addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
        ("LocalHost:80", "localhost", 80, "localhost:80"),
        ("[::1]:8080", "::1", 8080, "[::1]:8080"),
        ("[0:0::1]:1", "::1", 1, "[::1]:1"),
        ("0.0.0.0:0", "0.0.0.0", 0, "0.0.0.0:0"),
        ("backend-1.internal:65535", "backend-1.internal", 65535, "backend-1.internal:65535"),
    ],
)
def test_addresses_parse_and_print(text: str, host: str, port: int, shown: str) -> None:
    address = Address.parse(text)
    assert (address.host, address.port, str(address)) == (host, port, shown)


@pytest.mark.parametrize(
    "text",
    ["", "host", ":80", "host:", "host:-1", "host:65536", "host:8o", "::1:80", "[::1]80",
     "[::1]", "[zz::1]:80", "a b:80", "[]:80"],
)  # fmt: skip
def test_malformed_addresses_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        Address.parse(text)


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=65535))
def test_ipv4_addresses_round_trip(ip: ipaddress.IPv4Address, port: int) -> None:
    address = Address.parse(f"{ip}:{port}")
    assert address == Address(str(ip), port)
    assert Address.parse(str(address)) == address


@given(st.ip_addresses(v=6), st.integers(min_value=0, max_value=65535))
def test_ipv6_addresses_round_trip(ip: ipaddress.IPv6Address, port: int) -> None:
    address = Address.parse(f"[{ip.exploded}]:{port}")
    assert address == Address(str(ip), port)
    assert str(address) == f"[{ip}]:{port}"
    assert Address.parse(str(address)) == address


@given(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,40}", fullmatch=True),
    st.integers(min_value=0, max_value=65535),
)
def test_host_names_round_trip(host: str, port: int) -> None:
    address = Address.parse(f"{host}:{port}")
    assert (address.host, address.port) == (host, port)
    assert str(address) == f"{host}:{port}"


def test_binds_may_use_port_zero_but_servers_may_not() -> None:
    assert parse_config_text(MINIMAL).listeners[0].bind.port == 0
    with pytest.raises(ValidationError, match="port must be between 1 and 65535"):
        ServerConfig(address="127.0.0.1:0")  # type: ignore[arg-type]


# --- flags ----------------------------------------------------------------------


def test_flags_build_one_default_listener_and_pool() -> None:
    config = config_from_flags(
        "127.0.0.1:8080",
        ["127.0.0.1:9001", "[::1]:9002"],
        algorithm="least_connections",
        admin="127.0.0.1:9090",
    )

    (listener,) = config.listeners
    assert (listener.name, str(listener.bind), listener.pool) == (
        "default",
        "127.0.0.1:8080",
        "default",
    )
    assert list(config.pools) == ["default"]
    pool = config.pools["default"]
    assert pool.algorithm == "least_connections"
    assert [str(server.address) for server in pool.servers] == ["127.0.0.1:9001", "[::1]:9002"]
    assert config.admin is not None and str(config.admin.bind) == "127.0.0.1:9090"


def test_flags_without_admin_have_no_admin_api() -> None:
    config = config_from_flags("127.0.0.1:0", ["127.0.0.1:9001"])
    assert config.admin is None
    assert config.pools["default"].algorithm == "round_robin"


def test_flag_problems_are_named_after_the_flags() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_flags(
            "127.0.0.1:8080",
            ["127.0.0.1:9001", "127.0.0.1:9001", "nowhere", "127.0.0.1:0"],
            algorithm="round_robbin",
            admin="127.0.0.1:8080",
        )

    assert sorted(str(problem) for problem in caught.value.problems) == [
        "--admin: 127.0.0.1:8080 collides with 127.0.0.1:8080 of --listen",
        "--algorithm: unknown algorithm 'round_robbin'; did you mean 'round_robin'? Valid: "
        + ", ".join(ALGORITHMS),
        "--backend[1]: duplicate server 127.0.0.1:9001 (also --backend[0])",
        "--backend[2]: must be HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080",
        "--backend[3]: port must be between 1 and 65535",
    ]
    assert all(problem.line is None for problem in caught.value.problems)


def test_bad_listen_flag_is_reported_as_listen() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_flags("8080", ["127.0.0.1:9001"])
    assert [str(p) for p in caught.value.problems] == [
        "--listen: must be HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
    ]
