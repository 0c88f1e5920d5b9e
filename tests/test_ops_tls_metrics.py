"""maitred_tls_certificate_expiry_timestamp_seconds: when the certificates in use end.

Through a real maitred: the listener's certificate, a renewal picked up from
disk, and a broken renewal that leaves the old certificate serving (the metric
must keep showing the old one's end: that is the certificate clients get). In
process: the figures read from the files when this process terminates no TLS
itself (the supervisor of several workers), and pools' client certificates.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import trustme
from prometheus_client.parser import text_string_to_metric_families

from maitred.config import parse_config_text
from maitred.control.tls_metrics import METRIC, CertificateExpiry
from maitred.tls.runtime import TlsRuntime
from tests.support.backends import BackendProcess, http_request
from tests.support.balancer import BalancerFactory, BalancerProcess
from tests.support.tls import replace_file, write_pair

Series = dict[tuple[tuple[str, str], ...], float]


def in_days(days: int) -> datetime.datetime:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    return moment.replace(microsecond=0)


def scrape(lb: BalancerProcess) -> Series:
    answer = http_request(*lb.admin, "GET", "/metrics")
    assert answer.status == 200
    return as_series(answer.body.decode())


def as_series(text: str) -> Series:
    found: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == METRIC:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_listener_certificate_expiry_follows_the_certificate_in_service(
    backends: list[BackendProcess], balancer: BalancerFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    first_end = in_days(40)
    pair = write_pair(ca, tmp_path, "site", "site.example", "www.site.example", not_after=first_end)
    lb = balancer(
        f"""
admin: {{bind: 127.0.0.1:0}}
state_dir: {tmp_path}
listeners:
  - name: secure
    bind: 127.0.0.1:0
    pool: web
    tls: {{certificates: [{pair.yaml()}]}}
  - {{name: plain, bind: 127.0.0.1:0, pool: web}}
pools:
  web:
    servers: [{{address: {backends[0].address}}}]
"""
    )
    labels = (
        ("cert", str(pair.cert)),
        ("listener", "secure"),
        ("pool", ""),
        ("subject", "site.example"),
    )
    assert scrape(lb) == {labels: first_end.timestamp()}

    # Renewed on disk: maitred loads it by itself, and the figure follows.
    renewed_end = in_days(90)
    start = len(lb.log.lines)
    write_pair(ca, tmp_path, "site", "site.example", not_after=renewed_end)
    lb.log.wait_for(r"listener secure: certificates reloaded", start=start)
    assert scrape(lb) == {labels: renewed_end.timestamp()}

    # A broken renewal: the previous certificate keeps serving, and so its end shows.
    start = len(lb.log.lines)
    replace_file(pair.cert, b"not a certificate\n")
    lb.log.wait_for(r"listener secure: keeping the previous certificates", start=start)
    assert scrape(lb) == {labels: renewed_end.timestamp()}


def test_files_are_read_where_no_listener_is_served_and_for_pool_client_certs(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    site_end, client_end, renewed_end = in_days(20), in_days(5), in_days(60)
    site = write_pair(ca, tmp_path, "site", "site.example", not_after=site_end)
    client = write_pair(ca, tmp_path, "client", "lb.example", not_after=client_end)
    config = parse_config_text(
        """
listeners:
  - name: secure
    bind: 127.0.0.1:0
    pool: api
    tls: {certificates: [{cert: site.pem, key: site.key}]}
pools:
  api:
    tls: {cert: client.pem, key: client.key, verify: false}
    servers: [{address: 127.0.0.1:9}]
  plain:
    servers: [{address: 127.0.0.1:9}]
"""
    )
    # Nothing loaded in this TlsRuntime: relative paths resolve from base_dir.
    expiry = CertificateExpiry(TlsRuntime(tmp_path), lambda: config)

    def collected() -> Series:
        found: Series = {}
        for family in expiry.collect():
            for sample in family.samples:
                found[tuple(sorted(sample.labels.items()))] = sample.value
        return found

    listener_labels = (
        ("cert", str(site.cert)),
        ("listener", "secure"),
        ("pool", ""),
        ("subject", "site.example"),
    )
    pool_labels = (
        ("cert", str(client.cert)),
        ("listener", ""),
        ("pool", "api"),
        ("subject", "lb.example"),
    )
    assert collected() == {
        listener_labels: site_end.timestamp(),
        pool_labels: client_end.timestamp(),
    }
    # A file replaced (renewal tools rename over it) is read again.
    write_pair(ca, tmp_path, "client", "lb.example", not_after=renewed_end)
    assert collected()[pool_labels] == renewed_end.timestamp()
    # A file gone: no figure rather than a stale one.
    client.cert.unlink()
    assert set(collected()) == {listener_labels}
