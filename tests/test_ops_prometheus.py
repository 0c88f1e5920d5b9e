"""The operations kit against a real Prometheus server scraping a real maitred.

Debian's ``prometheus`` runs on a free 127.0.0.1 port with a throwaway storage
directory, scrapes maitred's ``/metrics`` every second and evaluates
deploy/prometheus/alerts.yml (unchanged) every second. A client thread sends
steady traffic through maitred to three demo backends that answer in 20 ms.

Checked through the Prometheus HTTP API: the per-pool request rate matches what
the client sent, the p95 latency lands in the 20 ms bucket, every rule
evaluates without error and only the expected ones are active, every PromQL
expression of deploy/grafana/maitred.json parses and returns data, and
TooFewHealthyBackends goes pending when a server fails its health checks.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.backends import BackendProcess, build_request, connect, read_response
from tests.support.balancer import BalancerProcess
from tests.support.tls import write_pair

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "maitred.json"
PROMETHEUS = shutil.which("prometheus")
SERVER_DELAY_MS = 20
#: Grafana's template variables, as the test evaluates them: every job, instance, pool.
GRAFANA_VARIABLES = {
    "$__rate_interval": "10s",
    "$job": ".*",
    "$instance": ".*",
    "$pool": ".*",
}

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs Prometheus: apt-get install prometheus (Debian's package; .ci/run installs it)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll(what: str, probe: Callable[[], Any], timeout: float = 15.0, every: float = 0.25) -> Any:
    """Ask an outside system until ``probe`` returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {result!r})")
        time.sleep(every)


class PrometheusServer:
    """`prometheus` on a free local port, scraping ``targets`` every second."""

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path]) -> None:
        assert PROMETHEUS is not None
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            json.dumps(  # JSON is YAML: no quoting surprises in paths
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(path) for path in rule_files],
                    "scrape_configs": [
                        {"job_name": "maitred", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.log_path = workdir / "prometheus.log"
        self.port = free_port()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            poll("prometheus ready", self._ready, timeout=20.0)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful API answer; AssertionError with the error otherwise."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str) -> dict[str, float]:
        """``expr``'s instant result as {pool or series: value}."""
        return {
            series["metric"].get("pool", json.dumps(series["metric"])): float(series["value"][1])
            for series in self.query(expr)
        }

    def alerts(self, name: str) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return [alert for alert in alerts if alert["labels"]["alertname"] == name]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Traffic:
    """Sequential keep-alive GETs through maitred until stopped; when each one ended."""

    port: int
    done: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                with connect("127.0.0.1", self.port) as sock:
                    while not self.stopping.is_set():
                        sock.sendall(build_request("GET", "/"))
                        status = read_response(sock).status
                        if status != 200:
                            self.failures.append(str(status))
                        self.done.append(time.monotonic())
            except OSError as error:
                self.failures.append(repr(error))

    def rate(self, seconds: float) -> float:
        """Requests per second the client completed over the last ``seconds``."""
        since = time.monotonic() - seconds
        return sum(1 for when in list(self.done) if when >= since) / seconds


@dataclass
class Stack:
    lb: BalancerProcess
    prometheus: PrometheusServer
    traffic: Traffic
    backends: list[BackendProcess]


@pytest.fixture(scope="module")
def stack(
    backends: list[BackendProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("ops-prometheus")
    # A certificate 10 days from its end: the expiry metric and its alert have data.
    not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    pair = write_pair(trustme.CA(), workdir, "site", "site.example", not_after=not_after)
    for backend in backends:
        backend.set_slow(SERVER_DELAY_MS)
    servers = "\n".join(f"      - {{address: {b.address}}}" for b in backends)
    lb_dir = workdir / "maitred"
    lb_dir.mkdir()
    lb = BalancerProcess(
        f"""
admin: {{bind: 127.0.0.1:0}}
state_dir: {lb_dir}
listeners:
  - {{name: public, bind: 127.0.0.1:0, pool: web}}
  - name: limited
    bind: 127.0.0.1:0
    pool: web
    rate_limit: {{key: client_ip, rate: 1, per: 1s, burst: 1}}
  - name: secure
    bind: 127.0.0.1:0
    pool: web
    tls: {{certificates: [{pair.yaml()}]}}
pools:
  web:
    health_check: {{path: /health, interval: 200ms, timeout: 1s,
                   healthy_threshold: 1, unhealthy_threshold: 1}}
    servers:
{servers}
""",
        lb_dir,
    )
    prometheus: PrometheusServer | None = None
    traffic = Traffic(lb.listeners["public"][1])
    thread = threading.Thread(target=traffic.run, daemon=True)
    try:
        server = prometheus = PrometheusServer(workdir, ["{}:{}".format(*lb.admin)], [ALERTS])
        thread.start()
        _refuse_some(lb.listeners["limited"][1])
        # Two scrapes after the traffic began: rates exist.
        poll(
            "a request rate in Prometheus",
            lambda: server.values("rate(maitred_pool_requests_total[5s]) > 0"),
        )
        yield Stack(lb, server, traffic, backends)
    finally:
        traffic.stopping.set()
        thread.join(10)
        if prometheus is not None:
            prometheus.stop()
        lb.kill()
        for backend in backends:
            backend.set_slow(0)


def _refuse_some(port: int) -> None:
    """Requests above the limited listener's rate: maitred answers 429 to most."""
    statuses = []
    with connect("127.0.0.1", port) as sock:
        for _ in range(10):
            sock.sendall(build_request("GET", "/"))
            statuses.append(read_response(sock).status)
    assert statuses.count(429) >= 5, statuses


def test_pool_request_rate_matches_the_traffic_sent(stack: Stack) -> None:
    prometheus = stack.prometheus
    window = 5.0
    seen: list[tuple[dict[str, float], float]] = []

    def close_to_the_client() -> bool:
        # Until the window holds only traffic (the first scrapes saw none), it reads low.
        measured = prometheus.values(
            f"sum by (pool) (rate(maitred_pool_requests_total[{window:.0f}s]))"
        )
        sent = stack.traffic.rate(window)
        seen.append((measured, sent))
        return set(measured) == {"web"} and 0.75 * sent < measured["web"] < 1.25 * sent

    poll("the pool's request rate", close_to_the_client, every=0.5)
    # Sequential requests to servers answering in 20 ms: a few dozen a second.
    assert 10 < seen[-1][1] < 60, seen
    assert not stack.traffic.failures, stack.traffic.failures[:5]


def test_p95_latency_reflects_the_servers_delay(stack: Stack) -> None:
    def quantile(q: float) -> dict[str, float]:
        return stack.prometheus.values(
            f"histogram_quantile({q}, sum by (pool, le) "
            "(rate(maitred_request_duration_seconds_bucket[5s])))"
        )

    p50, p95 = quantile(0.5), quantile(0.95)
    assert set(p50) == set(p95) == {"web"}
    # Every answer takes 20 ms and a little: the (10 ms, 25 ms] bucket; on a busy
    # machine the slowest few spill into the next one (25 ms, 50 ms].
    assert 0.010 < p50["web"] <= 0.025, p50
    assert 0.010 < p95["web"] <= 0.050, p95
    assert p50["web"] <= p95["web"]


def test_every_rule_evaluates_and_only_the_certificate_alert_is_active(stack: Stack) -> None:
    prometheus = stack.prometheus

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        return rules if all(r["lastEvaluation"] > "2000" for r in rules) else []

    rules = poll("every rule evaluated", evaluated)
    assert {rule["name"] for rule in rules} == set(_alert_names())
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # The listener's certificate ends in 10 days: under 14, the alert waits its 10m.
    expiring = poll(
        "MaitredCertificateExpiringSoon active",
        lambda: prometheus.alerts("MaitredCertificateExpiringSoon"),
    )
    assert [alert["state"] for alert in expiring] == ["pending"]
    assert expiring[0]["labels"]["listener"] == "secure"
    assert expiring[0]["labels"]["subject"] == "site.example"
    active = {alert["labels"]["alertname"] for alert in prometheus.api("alerts")["alerts"]}
    assert active == {"MaitredCertificateExpiringSoon"}, prometheus.api("alerts")


def test_every_dashboard_query_parses_and_returns_data(stack: Stack) -> None:
    prometheus = stack.prometheus
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = list(_dashboard_expressions(dashboard))
    assert len(expressions) >= 20
    empty = []
    for title, expr in expressions:
        if not prometheus.query(_substitute(expr)):
            empty.append((title, expr))
    assert not empty, empty
    # Template variables: label_values(SELECTOR, LABEL) finds that label's values.
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert match, variable["query"]
        selector, label = _substitute(match.group(1)), match.group(2)
        found = {series.get(label) for series in prometheus.api("series", **{"match[]": selector})}
        assert found - {None}, (variable["name"], selector)


def test_too_few_healthy_backends_goes_pending_when_a_server_fails(stack: Stack) -> None:
    prometheus = stack.prometheus
    failing = stack.backends[0]
    assert not prometheus.alerts("TooFewHealthyBackends")
    failing.set_health(False)
    try:
        poll(
            "Prometheus sees 2 available servers",
            lambda: prometheus.values("maitred_pool_servers_available") == {"web": 2.0},
        )
        alerts = poll(
            "TooFewHealthyBackends pending",
            lambda: prometheus.alerts("TooFewHealthyBackends"),
        )
        assert [alert["state"] for alert in alerts] == ["pending"]  # `for: 1m` not over yet
        assert alerts[0]["labels"]["pool"] == "web"
        assert alerts[0]["labels"]["severity"] == "critical"
        assert float(alerts[0]["value"]) == 2.0
    finally:
        failing.set_health(True)
    poll(
        "TooFewHealthyBackends resolved",
        lambda: (
            prometheus.values("maitred_pool_servers_available") == {"web": 3.0}
            and not prometheus.alerts("TooFewHealthyBackends")
        ),
    )


def _dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]
            yield from walk(panel.get("panels", []))  # collapsed rows hold theirs

    yield from walk(dashboard["panels"])


def _substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown variable in {expr}"
    return expr


def _alert_names() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(), re.MULTILINE)
