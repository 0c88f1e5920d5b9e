"""deploy/prometheus and deploy/grafana checked without a Prometheus server: the
alert rules pass promtool, rules and dashboard use names maitred exposes, and
the dashboard is well formed (tests/test_ops_prometheus.py runs its queries).

``promtool check rules`` validates the file; ``promtool test rules`` runs the
unit tests of alerts_test.yml (series fed minute by minute, the alerts expected
to fire or stay quiet). promtool comes with Debian's ``prometheus`` package;
without it those tests skip. The name check scrapes a real maitred: every metric
name in the rules, their tests and the Grafana dashboard must be one maitred
actually exposes — promtool alone would pass rules and tests that agree on a
misspelt name.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trustme

from tests.support.backends import BackendProcess, http_request
from tests.support.balancer import BalancerFactory
from tests.support.tls import write_pair

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "maitred.json"
PROMTOOL = shutil.which("promtool")
#: Metric names in PromQL and in the text exposition.
METRIC_NAME = re.compile(r"\b((?:maitred|process)_[a-z_]+)\b")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="needs promtool: apt-get install prometheus (Debian's package; .ci/run installs it)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60
    )


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


@needs_promtool
def test_example_prometheus_configuration_is_valid(tmp_path: Path) -> None:
    # prometheus.yml names the rules as installed: /etc/prometheus/maitred-alerts.yml.
    shutil.copy(PROMETHEUS_DIR / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "maitred-alerts.yml")
    result = subprocess.run(
        [str(PROMTOOL), "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_rule_unit_tests_catch_a_wrong_threshold(tmp_path: Path) -> None:
    """The unit tests pin the thresholds: the seed's 3 servers, 5% and 500 ms."""
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    for seed, wrong in (
        ("maitred_pool_servers_available < 3", "maitred_pool_servers_available < 2"),
        ("> 0.05\n", "> 0.10\n"),
        (") > 0.5\n", ") > 1.0\n"),
    ):
        assert rules.count(seed) == 1, seed
        (tmp_path / "alerts.yml").write_text(rules.replace(seed, wrong))
        shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path / "alerts_test.yml")
        result = subprocess.run(
            [str(PROMTOOL), "test", "rules", "alerts_test.yml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0, f"the unit tests missed {wrong!r}"


def test_rules_and_dashboard_use_only_exposed_metric_names(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    # A TLS listener, so the certificate expiry metric is exposed too.
    pair = write_pair(trustme.CA(), tmp_path, "site", "site.example")
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends)
    lb = balancer(
        f"""
admin: {{bind: 127.0.0.1:0}}
state_dir: {tmp_path}
listeners:
  - name: secure
    bind: 127.0.0.1:0
    pool: web
    tls: {{certificates: [{pair.yaml()}]}}
pools:
  web:
    servers:
{servers}
"""
    )
    answer = http_request(*lb.admin, "GET", "/metrics")
    assert answer.status == 200
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in answer.body.decode().splitlines()
        if line and not line.startswith("#")
    }
    used = set()
    for path in (
        PROMETHEUS_DIR / "alerts.yml",
        PROMETHEUS_DIR / "alerts_test.yml",
        DASHBOARD,
    ):
        used |= {(path.name, name) for name in METRIC_NAME.findall(path.read_text())}
    unknown = sorted((file, name) for file, name in used if name not in exposed)
    assert not unknown, unknown
    # Sanity: the check looked at the metrics the alerts are about.
    names = {name for _, name in used}
    assert "maitred_pool_servers_available" in names
    assert "maitred_tls_certificate_expiry_timestamp_seconds" in names


def test_dashboard_is_importable_and_covers_what_operators_watch() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, (panel["title"], taken.get((x, y)))
                taken[(x, y)] = panel["title"]
        for target in panel.get("targets", []):
            # Imported into any Grafana: the data source is the dashboard's variable.
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    expressions = " ".join(
        target["expr"] for panel in panels for target in panel.get("targets", [])
    )
    for wanted in (
        "rate(maitred_pool_requests_total",  # rates
        'maitred_pool_responses_total{job=~"$job", instance=~"$instance", pool=~"$pool", '
        'code="5xx"}',  # errors
        "histogram_quantile(0.5, sum by (pool, le)",
        "histogram_quantile(0.95, sum by (pool, le)",
        "histogram_quantile(0.99, sum by (pool, le)",
        "maitred_server_up",  # server health
        "maitred_server_health_state",
        "maitred_client_connections",  # connections
        'maitred_listener_balancer_responses_total{job=~"$job", instance=~"$instance", '
        'code="4xx"}',  # rate-limit rejections
        "maitred_tls_certificate_expiry_timestamp_seconds",
    ):
        assert wanted in expressions, wanted
