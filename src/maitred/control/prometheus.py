"""/metrics: Prometheus text exposition of the balancer's own counters.

A custom collector builds the metric families at scrape time from the plain
integers the data plane keeps (``LiveServer``, ``PoolRuntime``), so the hot path
never touches a prometheus_client object. Other parts of maitred can add
families without editing this module: append a callable returning metric
families to ``BalancerCollector.sources``.

Names (labels in braces):

- ``maitred_server_requests_total{pool,server,address}`` requests sent to a server
  (retries included)
- ``maitred_server_responses_total{pool,server,code}`` answers relayed from a
  server by status class (``code`` is 1xx..5xx)
- ``maitred_server_active_requests{pool,server}`` requests in flight
- ``maitred_server_weight{pool,server}``
- ``maitred_server_up{pool,server}`` 1 while the server takes new requests
- ``maitred_server_health_state{pool,server,state}`` 1 for the current active-check
  state (healthy, failing, unhealthy, recovering, unchecked)
- ``maitred_server_admin_state{pool,server,state}`` 1 for the operator state (ready,
  drain, maint)
- ``maitred_server_ejections_total{pool,server}`` passive-check ejections
- ``maitred_server_health_transitions_total{pool,server,state}`` entries into a state
- ``maitred_server_consecutive_failures{pool,server}``
- ``maitred_pool_requests_total{pool}``, ``maitred_pool_responses_total{pool,code}``,
  ``maitred_pool_retries_total{pool}``, ``maitred_pool_queued_requests{pool}``,
  ``maitred_pool_servers_available{pool}``
- ``maitred_request_duration_seconds{pool}`` histogram of request durations (from
  dispatch to the end of the answer)
- ``maitred_client_connections`` open client connections
- ``maitred_build_info{version}``; plus ``process_*`` from prometheus_client
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from maitred import __version__
from maitred.control.admin_views import STATUS_CLASSES
from maitred.health import HealthState
from maitred.proxy.routing import LATENCY_BUCKETS

if TYPE_CHECKING:
    from maitred.control.supervisor import Supervisor

#: The classic text format every Prometheus version scrapes (our names are all legacy-safe).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEALTH_STATES = (*(str(state) for state in HealthState), "unchecked")
ADMIN_STATES = ("ready", "drain", "maint")

MetricSource = Callable[[], Iterable[Metric]]


class BalancerCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        #: More families, from other parts of maitred (TLS, rate limits...).
        self.sources: list[MetricSource] = []

    def collect(self) -> Iterator[Metric]:
        worker = self.supervisor.worker
        health = self.supervisor.health
        if worker is None or health is None:
            return
        server_labels = ["pool", "server"]
        requests = CounterMetricFamily(
            "maitred_server_requests",
            "Requests sent to the server (retries included).",
            labels=[*server_labels, "address"],
        )
        responses = CounterMetricFamily(
            "maitred_server_responses",
            "Answers relayed from the server, by status class.",
            labels=[*server_labels, "code"],
        )
        active = GaugeMetricFamily(
            "maitred_server_active_requests", "Requests in flight.", labels=server_labels
        )
        weight = GaugeMetricFamily("maitred_server_weight", "Weight.", labels=server_labels)
        up = GaugeMetricFamily(
            "maitred_server_up", "1 while the server takes new requests.", labels=server_labels
        )
        health_state = GaugeMetricFamily(
            "maitred_server_health_state",
            "1 for the server's active-check state.",
            labels=[*server_labels, "state"],
        )
        admin_state = GaugeMetricFamily(
            "maitred_server_admin_state",
            "1 for the operator state set through the admin API.",
            labels=[*server_labels, "state"],
        )
        ejections = CounterMetricFamily(
            "maitred_server_ejections",
            "Ejections by passive outlier detection.",
            labels=server_labels,
        )
        transitions = CounterMetricFamily(
            "maitred_server_health_transitions",
            "Active-check state changes, by the state entered.",
            labels=[*server_labels, "state"],
        )
        failures = GaugeMetricFamily(
            "maitred_server_consecutive_failures",
            "Failures on real traffic in a row.",
            labels=server_labels,
        )
        pool_requests = CounterMetricFamily(
            "maitred_pool_requests", "Requests sent to the pool's servers.", labels=["pool"]
        )
        pool_responses = CounterMetricFamily(
            "maitred_pool_responses",
            "Answers relayed from the pool's servers, by status class.",
            labels=["pool", "code"],
        )
        retries = CounterMetricFamily(
            "maitred_pool_retries", "Requests retried on another server.", labels=["pool"]
        )
        queued = GaugeMetricFamily(
            "maitred_pool_queued_requests",
            "Requests waiting for a server below its max_connections.",
            labels=["pool"],
        )
        available = GaugeMetricFamily(
            "maitred_pool_servers_available", "Servers taking new requests.", labels=["pool"]
        )
        pool_own = CounterMetricFamily(
            "maitred_pool_balancer_responses",
            "Answers the balancer gave itself for the pool (502, 503, 504...), by status class.",
            labels=["pool", "code"],
        )
        listener_own = CounterMetricFamily(
            "maitred_listener_balancer_responses",
            "Answers the balancer gave itself on the listener (4xx, 5xx), by status class.",
            labels=["listener", "code"],
        )
        duration = HistogramMetricFamily(
            "maitred_request_duration_seconds",
            "Request durations, from dispatch to a server to the end of its answer.",
            labels=["pool"],
        )
        transition_counts = health.monitor.transitions
        for pool_name, pool in worker.pools.items():
            pool_answers = [0] * 6
            for server in pool.balancer.servers:
                labels = [pool_name, server.id]
                requests.add_metric([*labels, server.address], server.requests)
                _add_by_status_class(responses, labels, server.answers)
                for index in range(1, len(STATUS_CLASSES) + 1):
                    pool_answers[index] += server.answers[index]
                active.add_metric(labels, server.active)
                weight.add_metric(labels, server.weight)
                up.add_metric(labels, 1 if server.available else 0)
                current = health.monitor.state(server.id)
                current_name = str(current) if current is not None else "unchecked"
                for state in HEALTH_STATES:
                    health_state.add_metric([*labels, state], 1 if state == current_name else 0)
                operator_state = health.admin_states.get(server.id, "ready")
                for state in ADMIN_STATES:
                    admin_state.add_metric([*labels, state], 1 if state == operator_state else 0)
                ejections.add_metric(labels, health.ejections.get(server.id, 0))
                for entered in HealthState:
                    count = transition_counts.get((server.id, entered), 0)
                    transitions.add_metric([*labels, str(entered)], count)
                failures.add_metric(labels, server.consecutive_failures)
            pool_requests.add_metric([pool_name], pool.requests)
            _add_by_status_class(pool_responses, [pool_name], pool_answers)
            _add_by_status_class(pool_own, [pool_name], pool.own_answers)
            retries.add_metric([pool_name], pool.retries)
            queued.add_metric([pool_name], len(pool.waiting))
            available.add_metric([pool_name], len(pool.balancer.eligible))
            duration.add_metric(
                [pool_name], _cumulative_buckets(pool.latency_counts), pool.latency_sum
            )
        yield from (requests, responses, active, weight, up, health_state, admin_state)
        yield from (ejections, transitions, failures)
        yield from (pool_requests, pool_responses, retries, queued, available, duration)
        bytes_in = CounterMetricFamily(
            "maitred_listener_received_bytes", "Bytes read from clients.", labels=["listener"]
        )
        bytes_out = CounterMetricFamily(
            "maitred_listener_sent_bytes",
            "Bytes of servers' answers relayed to clients.",
            labels=["listener"],
        )
        handshakes = CounterMetricFamily(
            "maitred_listener_tls_handshakes", "Completed TLS handshakes.", labels=["listener"]
        )
        rate_limited = CounterMetricFamily(
            "maitred_listener_rate_limited_requests",
            "Requests refused with 429 by a rate limit.",
            labels=["listener"],
        )
        for listener_name, slot in _listener_counters(self.supervisor):
            _add_by_status_class(listener_own, [listener_name], slot.own_answers)
            bytes_in.add_metric([listener_name], slot.bytes_in)
            bytes_out.add_metric([listener_name], slot.bytes_out)
            handshakes.add_metric([listener_name], slot.tls_handshakes)
            rate_limited.add_metric([listener_name], slot.rate_limited)
        yield from (pool_own, listener_own, bytes_in, bytes_out, handshakes, rate_limited)
        yield GaugeMetricFamily(
            "maitred_client_connections",
            "Open client connections.",
            value=len(worker.plane.connections),
        )
        info = GaugeMetricFamily("maitred_build_info", "maitred's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        for source in self.sources:
            yield from source()


class ListenerFigures(Protocol):
    """A listener's counters: a ``ListenerSlot``, or their sum over worker processes."""

    own_answers: list[int]
    bytes_in: int
    bytes_out: int
    tls_handshakes: int
    rate_limited: int


def _listener_counters(supervisor: Supervisor) -> Iterator[tuple[str, ListenerFigures]]:
    """Each listener's counters: this process's, or summed over worker processes."""
    if supervisor.processes is not None:
        yield from supervisor.processes.listener_counters.items()
        return
    assert supervisor.worker is not None
    for name, bound in supervisor.worker.listeners.items():
        yield name, bound.slot


def _add_by_status_class(family: CounterMetricFamily, labels: list[str], counts: list[int]) -> None:
    """One sample per status class ("1xx".."5xx"); ``counts`` is indexed by status // 100."""
    for index, code in enumerate(STATUS_CLASSES, start=1):
        family.add_metric([*labels, code], counts[index])


def _cumulative_buckets(counts: list[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(LATENCY_BUCKETS, counts, strict=False):
        running += count
        buckets.append((_bound_text(bound), running))
    running += counts[len(LATENCY_BUCKETS)] if len(counts) > len(LATENCY_BUCKETS) else 0
    buckets.append(("+Inf", running))
    return buckets


def _bound_text(bound: float) -> str:
    return repr(float(bound))


def build_registry(collector: BalancerCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
