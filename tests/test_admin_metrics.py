"""/metrics in Prometheus text format, and the arithmetic behind the JSON figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from maitred.control.stats import error_share, percentile, percentiles_ms
from maitred.proxy.routing import LATENCY_BUCKETS
from tests.support.admin import admin_config, api, sid, spread
from tests.support.backends import BackendProcess, http_request
from tests.support.balancer import BalancerFactory, BalancerProcess


def scrape(lb: BalancerProcess) -> dict[str, list[Sample]]:
    response = api(lb, "GET", "/metrics")
    assert response.status == 200
    assert response.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    families = text_string_to_metric_families(response.body.decode())
    return {family.name: family.samples for family in families}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    matches = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_prometheus_output_parses_and_counts_the_traffic(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    lb = balancer(admin_config(backends[:2], tmp_path / "state"))
    b1, b2 = sid(backends[0]), sid(backends[1])
    spread(lb, 10)
    spread(lb, 2, path="/status?code=503")
    api(lb, "PATCH", f"/api/v1/servers/{b2}", {"state": "maint", "weight": 3})
    metrics = scrape(lb)

    requests = metrics["maitred_server_requests"]
    assert value(requests, "maitred_server_requests_total", server=b1, pool="web") == 6
    assert value(requests, "maitred_server_requests_total", server=b2) == 6
    responses = metrics["maitred_server_responses"]
    assert value(responses, "maitred_server_responses_total", server=b1, code="2xx") == 5
    assert value(responses, "maitred_server_responses_total", server=b1, code="5xx") == 1
    pool_responses = metrics["maitred_pool_responses"]
    assert value(pool_responses, "maitred_pool_responses_total", pool="web", code="2xx") == 10
    assert value(metrics["maitred_pool_requests"], "maitred_pool_requests_total", pool="web") == 12
    assert value(metrics["maitred_pool_retries"], "maitred_pool_retries_total", pool="web") == 0

    assert value(metrics["maitred_server_up"], "maitred_server_up", server=b1) == 1
    assert value(metrics["maitred_server_up"], "maitred_server_up", server=b2) == 0
    assert value(metrics["maitred_server_weight"], "maitred_server_weight", server=b2) == 3
    admin_state = metrics["maitred_server_admin_state"]
    assert value(admin_state, "maitred_server_admin_state", server=b2, state="maint") == 1
    assert value(admin_state, "maitred_server_admin_state", server=b2, state="ready") == 0
    health = metrics["maitred_server_health_state"]
    assert value(health, "maitred_server_health_state", server=b1, state="unchecked") == 1
    assert (
        value(metrics["maitred_server_ejections"], "maitred_server_ejections_total", server=b1) == 0
    )
    assert (
        value(
            metrics["maitred_server_active_requests"], "maitred_server_active_requests", server=b1
        )
        == 0
    )
    assert value(metrics["maitred_pool_servers_available"], "maitred_pool_servers_available") == 1
    assert value(metrics["maitred_client_connections"], "maitred_client_connections") == 0
    assert value(metrics["maitred_build_info"], "maitred_build_info") == 1
    assert "process_cpu_seconds" in metrics

    histogram = metrics["maitred_request_duration_seconds"]
    buckets = [s for s in histogram if s.name.endswith("_bucket") and s.labels["pool"] == "web"]
    assert [s.labels["le"] for s in buckets] == [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 12
    assert value(histogram, "maitred_request_duration_seconds_count", pool="web") == 12
    assert value(histogram, "maitred_request_duration_seconds_sum", pool="web") > 0


# -- the arithmetic -------------------------------------------------------------------


def counts_with(**by_bound: int) -> list[int]:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for bound, count in by_bound.items():
        index = (
            len(LATENCY_BUCKETS)
            if bound == "inf"
            else LATENCY_BUCKETS.index(float(bound.replace("_", ".")))
        )
        counts[index] = count
    return counts


def test_percentiles_interpolate_inside_buckets() -> None:
    # 100 requests between 5 ms and 10 ms: the median lies halfway.
    counts = counts_with(**{"0_01": 100})
    assert percentile(counts, 0.5) == pytest.approx(0.0075)
    assert percentile(counts, 0.99) == pytest.approx(0.00995)
    # 90 fast (<= 1 ms), 10 slow (0.5-1 s): p95 lands in the slow bucket.
    counts = counts_with(**{"0_001": 90, "1_0": 10})
    assert percentile(counts, 0.5) == pytest.approx(0.0005 * 50 / 45 * 0.9, rel=0.2)
    assert 0.5 <= (percentile(counts, 0.95) or 0) <= 1.0
    assert percentile([0] * (len(LATENCY_BUCKETS) + 1), 0.5) is None
    # Beyond the last bound all we know is the last bound.
    assert percentile(counts_with(inf=3), 0.5) == LATENCY_BUCKETS[-1]
    assert percentiles_ms(counts_with(**{"0_01": 100})) == {"p50": 7.5, "p95": 9.75, "p99": 9.95}


def test_error_share_is_taken_between_two_samples() -> None:
    old = [0, 0, 90, 0, 0, 10]
    new = [0, 0, 180, 0, 5, 15]
    assert error_share(new, old) == pytest.approx(5 / 100)
    assert error_share(old, old) == 0.0
    assert error_share(new, None) == pytest.approx(15 / 200)


def test_listener_counters_bytes_and_rate_limit_rejections(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    config = admin_config(backends[:1], tmp_path / "state").replace(
        "    pool: web\n", "    pool: web\n    rate_limit: {rate: 1, per: 1m, burst: 2}\n", 1
    )
    lb = balancer(config)
    statuses = [http_request("127.0.0.1", lb.port, "GET", "/").status for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    samples = scrape(lb)
    rejected = samples["maitred_listener_rate_limited_requests"]
    assert value(rejected, "maitred_listener_rate_limited_requests_total", listener="public") == 3
    received = samples["maitred_listener_received_bytes"]
    sent = samples["maitred_listener_sent_bytes"]
    assert value(received, "maitred_listener_received_bytes_total", listener="public") > 5 * 30
    # Two answers relayed from the server ("b1\n" bodies with their heads).
    assert value(sent, "maitred_listener_sent_bytes_total", listener="public") > 2 * 40
    handshakes = samples["maitred_listener_tls_handshakes"]
    assert value(handshakes, "maitred_listener_tls_handshakes_total", listener="public") == 0
