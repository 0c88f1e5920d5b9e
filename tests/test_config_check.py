"""Configuration problems: each rule's exact `path: message (line N)` text, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from maitred.config import ALGORITHMS, ConfigError, Problem, load_config, parse_config_text


def problems_in(yaml_text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config_text(textwrap.dedent(yaml_text))
    return [str(problem) for problem in caught.value.problems]


def test_unknown_key_suggests_the_closest_field() -> None:
    assert problems_in(
        """\
        listeners:
          - name: public
            bind: 127.0.0.1:8080
            bindd: 127.0.0.1:8081
            pool: web
        pools:
          web: {}
        """
    ) == ["listeners[0].bindd: unknown key; did you mean 'bind'? (line 4)"]


def test_unknown_key_without_a_close_match_lists_the_valid_ones() -> None:
    assert problems_in(
        """\
        listeners: [{name: public, bind: 127.0.0.1:8080, pool: web}]
        pools:
          web: {colour: blue}
        """
    ) == [
        "pools.web.colour: unknown key; expected one of: algorithm, servers, health_check, "
        "sticky, timeouts, connection_pool, send_proxy_protocol, hash_on, balance_factor, "
        "slow_start, outlier_detection, retries, queue, tls (line 3)"
    ]


def test_out_of_range_server_weights() -> None:
    assert problems_in(
        """\
        listeners: [{name: public, bind: 127.0.0.1:8080, pool: web}]
        pools:
          web:
            servers:
              - {address: 127.0.0.1:9001, weight: 5}
              - {address: 127.0.0.1:9002, weight: 0}
              - address: 127.0.0.1:9003
                weight: 1001
        """
    ) == [
        "pools.web.servers[1].weight: must be >= 1 (line 6)",
        "pools.web.servers[2].weight: must be <= 1000 (line 8)",
    ]


def test_unknown_pools_are_named_with_a_suggestion() -> None:
    assert problems_in(
        """\
        listeners:
          - name: public
            bind: 127.0.0.1:8080
            routes:
              - match: {path_prefix: /v1/}
                pool: apii
            pool: wbe
        pools:
          web: {}
          api: {}
        """
    ) == [
        "listeners[0].routes[0].pool: unknown pool 'apii'; did you mean 'api'? Valid: api, web"
        " (line 6)",
        "listeners[0].pool: unknown pool 'wbe'; did you mean 'web'? Valid: api, web (line 7)",
    ]


def test_an_http_listener_needs_a_pool_or_routes() -> None:
    assert problems_in(
        """\
        listeners:
          - name: public
            bind: 127.0.0.1:8080
        pools:
          web: {}
        """
    ) == ["listeners[0]: an http listener needs a 'pool' or 'routes' (line 2)"]


def test_routes_are_refused_on_tcp_listeners() -> None:
    assert problems_in(
        """\
        listeners:
          - name: db
            bind: 127.0.0.1:5432
            protocol: tcp
            pool: web
            routes:
              - {match: {host: example.com}, pool: web}
        pools:
          web: {}
        """
    ) == ["listeners[0].routes: routes are only allowed on http listeners (line 6)"]


def test_duplicate_listener_names_and_binds() -> None:
    assert problems_in(
        """\
        admin: {bind: 127.0.0.1:8081}
        listeners:
          - {name: public, bind: 127.0.0.1:8080, pool: web}
          - {name: public, bind: 127.0.0.1:8080, pool: web}
          - {name: other, bind: 0.0.0.0:8081, pool: web}
        pools:
          web: {}
        """
    ) == [
        "admin.bind: 127.0.0.1:8081 collides with 0.0.0.0:8081 of listeners[2] (line 1)",
        "listeners[1].name: duplicate listener name 'public' (also listeners[0]) (line 4)",
        "listeners[1].bind: 127.0.0.1:8080 collides with 127.0.0.1:8080 of listeners[0] (line 4)",
    ]


def test_binds_on_port_zero_never_collide() -> None:
    config = parse_config_text(
        textwrap.dedent(
            """\
            admin: {bind: 127.0.0.1:0}
            listeners:
              - {name: a, bind: 127.0.0.1:0, pool: web}
              - {name: b, bind: 127.0.0.1:0, pool: web}
            pools:
              web: {}
            """
        )
    )
    assert [listener.name for listener in config.listeners] == ["a", "b"]


def test_duplicate_servers_in_one_pool() -> None:
    assert problems_in(
        """\
        listeners: [{name: public, bind: 127.0.0.1:8080, pool: web}]
        pools:
          web:
            servers:
              - address: 127.0.0.1:9001
              - address: LOCALHOST:9002
              - address: localhost:9002
          other:
            servers:
              - address: 127.0.0.1:9001
        """
    ) == [
        "pools.web.servers[2].address: duplicate server localhost:9002 (also servers[1]) (line 7)"
    ]


def test_duplicate_yaml_keys_are_reported_not_overwritten() -> None:
    assert problems_in(
        """\
        listeners: [{name: public, bind: 127.0.0.1:8080, pool: web}]
        pools:
          web:
            servers: [{address: 127.0.0.1:9001}]
          web:
            servers: [{address: 127.0.0.1:9002}]
            algorithm: random
            algorithm: random
        """
    ) == [
        "pools.web: duplicate key (line 5)",
        "pools.web.algorithm: duplicate key (line 8)",
    ]


def test_problems_after_a_duplicate_key_point_at_the_copy_that_is_used() -> None:
    assert problems_in(
        """\
        listeners: [{name: public, bind: 127.0.0.1:8080, pool: web}]
        pools:
          web:
            algorithm: random
          web:
            algorithm: nope
        """
    ) == [
        "pools.web: duplicate key (line 5)",
        f"pools.web.algorithm: unknown algorithm 'nope'. Valid: {', '.join(ALGORITHMS)} (line 6)",
    ]


def test_workers_must_be_positive_or_auto() -> None:
    listeners_and_pools = "listeners: [{name: a, bind: 127.0.0.1:80, pool: w}]\npools: {w: {}}\n"
    assert problems_in("workers: 0\n" + listeners_and_pools) == ["workers: must be >= 1 (line 1)"]
    assert problems_in("workers: lots\n" + listeners_and_pools) == [
        "workers: must be an integer >= 1 or 'auto' (line 1)"
    ]


def test_unknown_algorithm_lists_the_valid_ones() -> None:
    assert problems_in(
        """\
        listeners: [{name: public, bind: 127.0.0.1:8080, pool: web}]
        pools:
          web:
            algorithm: least_conections
        """
    ) == [
        "pools.web.algorithm: unknown algorithm 'least_conections'; did you mean "
        f"'least_connections'? Valid: {', '.join(ALGORITHMS)} (line 4)"
    ]


def test_missing_and_mistyped_values() -> None:
    assert problems_in(
        """\
        listeners:
          - name: public
            pool: web
            proxy_protocol: perhaps
            limits: {max_header_size: big, max_body_size: -1}
            timeouts: {idle: 0, client_header: soon}
            rate_limit: {rate: 1.5}
        pools:
          web:
            servers: {address: 127.0.0.1:9001}
            health_check: {path: health}
            send_proxy_protocol: v3
            sticky: {mode: "header:"}
        """
    ) == [
        "listeners[0].bind: required (line 2)",
        "listeners[0].proxy_protocol: must be true or false (line 4)",
        "listeners[0].limits.max_header_size: must be an integer (line 5)",
        "listeners[0].limits.max_body_size: must be >= 0 (line 5)",
        "listeners[0].timeouts.client_header: must be a duration like 250ms, 5s, 1m, 1h or a "
        "number of seconds (line 6)",
        "listeners[0].timeouts.idle: must be > 0 (line 6)",
        "listeners[0].rate_limit.rate: must be an integer (line 7)",
        "pools.web.servers: must be a list (line 10)",
        "pools.web.health_check.path: must start with '/' (line 11)",
        "pools.web.send_proxy_protocol: must be 'v1' or 'v2' (line 12)",
        "pools.web.sticky.mode: 'header:' needs a name, e.g. header:X-Session (line 13)",
    ]


def test_required_sections() -> None:
    assert problems_in("workers: 2\n") == ["listeners: required", "pools: required"]
    assert problems_in("listeners: []\npools: {}\n") == [
        "listeners: must have at least 1 item (line 1)",
        "pools: must have at least 1 item (line 2)",
    ]


def test_every_problem_is_reported_at_once_in_file_order() -> None:
    assert problems_in(
        """\
        workers: 0
        listeners:
          - name: public
            bind: 127.0.0.1:99999
            pool: nope
          - name: public
            bindd: 127.0.0.1:8081
            pool: web
        pools:
          web:
            algorithm: round_robbin
            servers:
              - {address: 127.0.0.1:9001, weight: 0}
              - {address: 127.0.0.1:9001}
        """
    ) == [
        "workers: must be >= 1 (line 1)",
        "listeners[0].bind: port must be a number between 0 and 65535, not '99999' (line 4)",
        "listeners[0].pool: unknown pool 'nope'. Valid: web (line 5)",
        "listeners[1].bind: required (line 6)",
        "listeners[1].name: duplicate listener name 'public' (also listeners[0]) (line 6)",
        "listeners[1].bindd: unknown key; did you mean 'bind'? (line 7)",
        "pools.web.algorithm: unknown algorithm 'round_robbin'; did you mean 'round_robin'? "
        f"Valid: {', '.join(ALGORITHMS)} (line 11)",
        "pools.web.servers[0].weight: must be >= 1 (line 13)",
        "pools.web.servers[1].address: duplicate server 127.0.0.1:9001 (also servers[0]) (line 14)",
    ]


def test_invalid_yaml_is_a_single_problem_with_its_line() -> None:
    assert problems_in(
        """\
        listeners:
          - name: public
            bind: [127.0.0.1:8080
        pools: {}
        """
    ) == [
        "<file>: invalid YAML: while parsing a flow sequence: expected ',' or ']', "
        "but got ':' (line 4)"
    ]


def test_a_document_that_is_not_a_mapping() -> None:
    assert problems_in("- listeners\n") == [
        "<file>: must be a mapping of settings (key: value) (line 1)"
    ]
    assert problems_in("# nothing yet\n") == [
        "<file>: is empty; it needs at least 'listeners' and 'pools'"
    ]


def test_load_config_names_the_file_for_file_level_problems(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert [str(p) for p in caught.value.problems] == [
        f"{missing}: cannot read: No such file or directory"
    ]

    broken = tmp_path / "broken.yaml"
    broken.write_text("pools: {web: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(broken)
    (problem,) = caught.value.problems
    assert problem.path == str(broken)
    assert problem.message.startswith("invalid YAML: ")
    assert problem.line == 2


def test_load_config_reports_lines_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "maitred.yaml"
    path.write_text("listeners:\n  - {name: a, bind: 127.0.0.1:80, pool: w}\npools:\n  w: {x: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == "pools.w.x: unknown key; expected one of: " + (
        "algorithm, servers, health_check, sticky, timeouts, connection_pool, "
        "send_proxy_protocol, hash_on, balance_factor, slow_start, outlier_detection, retries, "
        "queue, tls (line 4)"
    )


def test_config_error_text_is_one_problem_per_line() -> None:
    error = ConfigError([Problem("workers", "must be >= 1", 1), Problem("pools", "required", None)])
    assert str(error) == "workers: must be >= 1 (line 1)\npools: required"
    assert error.problems[1].line is None
