"""TLS from the balancer to the servers: verification on, a wrong CA refused (502),
and client certificates presented to servers that demand them (mTLS)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support.backends import http_request
from tests.support.balancer import BalancerFactory
from tests.support.tls import PemPair, TlsBackend, write_ca, write_pair


@dataclass(frozen=True)
class Files:
    server_ca: Path  # signed the backends' certificates
    other_ca: Path  # signed nothing the backends use
    client: PemPair  # issued by client_ca, which the mTLS backend trusts
    stranger: PemPair  # issued by a CA nobody trusts


@dataclass(frozen=True)
class Backends:
    plain_tls: TlsBackend  # certificate for backend.test and 127.0.0.1
    mutual_tls: TlsBackend  # the same, and demands a client certificate


@pytest.fixture(scope="module")
def files_and_backends(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Files, Backends]]:
    directory = tmp_path_factory.mktemp("backend-pki")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = write_pair(server_ca, directory, "server", "backend.test", "127.0.0.1")
    files = Files(
        server_ca=write_ca(server_ca, directory / "server-ca.pem"),
        other_ca=write_ca(trustme.CA(), directory / "other-ca.pem"),
        client=write_pair(client_ca, directory, "client", "lb.test"),
        stranger=write_pair(trustme.CA(), directory, "stranger", "lb.test"),
    )
    client_ca_file = write_ca(client_ca, directory / "client-ca.pem")
    plain_tls = TlsBackend("tls1", server)
    try:
        mutual_tls = TlsBackend("mtls1", server, client_ca=client_ca_file)
    except BaseException:
        plain_tls.kill()
        raise
    yield files, Backends(plain_tls, mutual_tls)
    plain_tls.kill()
    mutual_tls.kill()


def config(backend: TlsBackend, tls: str) -> str:
    return f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
pools:
  web:
    retries: {{attempts: 0}}
    tls: {tls}
    servers:
      - {{address: {backend.address}}}
"""


def get(balancer: BalancerFactory, backend: TlsBackend, tls: str) -> tuple[int, bytes]:
    lb = balancer(config(backend, tls))
    response = http_request("127.0.0.1", lb.port, "GET", "/")
    return response.status, response.body


def test_verified_tls_to_the_servers(
    balancer: BalancerFactory, files_and_backends: tuple[Files, Backends]
) -> None:
    files, backends = files_and_backends
    tls = f"{{verify: true, ca: {files.server_ca}, sni: backend.test}}"
    assert get(balancer, backends.plain_tls, tls) == (200, b"tls1\n")


def test_without_sni_the_server_address_is_verified(
    balancer: BalancerFactory, files_and_backends: tuple[Files, Backends]
) -> None:
    files, backends = files_and_backends
    # The certificate names 127.0.0.1 too, so the address itself verifies.
    assert get(balancer, backends.plain_tls, f"{{ca: {files.server_ca}}}") == (200, b"tls1\n")


@pytest.mark.parametrize(
    "tls",
    ["{{verify: true, ca: {other_ca}}}", "{{ca: {server_ca}, sni: wrong-name.test}}"],
    ids=["wrong CA", "wrong name"],
)
def test_a_server_certificate_that_does_not_verify_gets_502(
    balancer: BalancerFactory, files_and_backends: tuple[Files, Backends], tls: str
) -> None:
    files, backends = files_and_backends
    settings = tls.format(other_ca=files.other_ca, server_ca=files.server_ca)
    status, _ = get(balancer, backends.plain_tls, settings)
    assert status == 502


def test_verify_false_accepts_any_server_certificate(
    balancer: BalancerFactory, files_and_backends: tuple[Files, Backends]
) -> None:
    _, backends = files_and_backends
    assert get(balancer, backends.plain_tls, "{verify: false}") == (200, b"tls1\n")


def test_client_certificate_to_servers_that_demand_one(
    balancer: BalancerFactory, files_and_backends: tuple[Files, Backends]
) -> None:
    files, backends = files_and_backends
    base = f"ca: {files.server_ca}, sni: backend.test"
    with_cert = f"{{{base}, cert: {files.client.cert}, key: {files.client.key}}}"
    assert get(balancer, backends.mutual_tls, with_cert) == (200, b"mtls1\n")

    stranger = f"{{{base}, cert: {files.stranger.cert}, key: {files.stranger.key}}}"
    for refused in (f"{{{base}}}", stranger):
        status, _ = get(balancer, backends.mutual_tls, refused)
        assert status == 502


def test_health_checks_speak_tls_to_tls_pools(
    balancer: BalancerFactory, files_and_backends: tuple[Files, Backends]
) -> None:
    files, backends = files_and_backends
    backend = backends.plain_tls
    lb = balancer(
        config(backend, f"{{verify: true, ca: {files.server_ca}, sni: backend.test}}").replace(
            "    retries: {attempts: 0}\n",
            "    retries: {attempts: 0}\n"
            "    health_check: {path: /health, interval: 200ms, timeout: 1s,"
            " healthy_threshold: 1, unhealthy_threshold: 1, initial_state: unhealthy}\n",
        )
    )
    # Starting unhealthy, the server only takes traffic once a check over TLS passed.
    lb.log.wait_for(r"server web-127\.0\.0\.1-\d+ is now healthy")
    assert http_request("127.0.0.1", lb.port, "GET", "/").status == 200
