"""TLS termination end to end: SNI, the default certificate, ALPN, protocol versions,
client certificates, X-Forwarded-Proto and the redirect from http to https."""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support.backends import BackendProcess, http_request
from tests.support.balancer import BalancerFactory, BalancerProcess
from tests.support.tls import (
    PemPair,
    client_context,
    peer_names,
    request,
    tls_connect,
    write_ca,
    write_pair,
)


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    alpha: PemPair  # alpha.test, the default (first) certificate
    beta: PemPair  # *.beta.test
    gamma: PemPair  # gamma.test, www.gamma.test
    client_ca: trustme.CA
    client_ca_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    client_ca = trustme.CA()
    return Pki(
        ca=ca,
        alpha=write_pair(ca, directory, "alpha", "alpha.test"),
        beta=write_pair(ca, directory, "beta", "*.beta.test"),
        gamma=write_pair(ca, directory, "gamma", "gamma.test", "www.gamma.test"),
        client_ca=client_ca,
        client_ca_file=write_ca(client_ca, directory / "client-ca.pem"),
    )


def https_config(pki: Pki, backend: BackendProcess, tls_extra: str = "") -> str:
    return f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
    tls:
      certificates:
        - {pki.alpha.yaml()}
        - {pki.beta.yaml()}
        - {pki.gamma.yaml()}
{tls_extra}
pools:
  web:
    servers:
      - {{address: {backend.address}}}
"""


@pytest.fixture(scope="module")
def three_certificates(
    pki: Pki, backends: list[BackendProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BalancerProcess]:
    process = BalancerProcess(https_config(pki, backends[0]), tmp_path_factory.mktemp("lb"))
    yield process
    process.kill()


@pytest.mark.parametrize(
    ("server_name", "names"),
    [
        ("alpha.test", ["alpha.test"]),
        ("x.beta.test", ["*.beta.test"]),
        ("gamma.test", ["gamma.test", "www.gamma.test"]),
        ("WWW.Gamma.Test", ["gamma.test", "www.gamma.test"]),
    ],
)
def test_sni_chooses_the_certificate_that_names_the_host(
    three_certificates: BalancerProcess, pki: Pki, server_name: str, names: list[str]
) -> None:
    # Verifying against the CA with the SNI name proves the chosen certificate covers it.
    with tls_connect(three_certificates.port, server_name, client_context(pki.ca)) as sock:
        assert peer_names(sock) == names
        assert request(sock, host=server_name).status == 200


@pytest.mark.parametrize("server_name", ["unknown.test", "a.b.beta.test", "beta.test", None])
def test_unknown_or_missing_sni_gets_the_first_certificate(
    three_certificates: BalancerProcess, server_name: str | None
) -> None:
    # A wildcard covers exactly one label: neither beta.test nor a.b.beta.test.
    with tls_connect(three_certificates.port, server_name) as sock:
        assert peer_names(sock) == ["alpha.test"]
        assert request(sock).status == 200


def test_alpn_offers_h2_then_http11(three_certificates: BalancerProcess) -> None:
    # HTTP/2 is on by default (listeners[].http2.enabled; tests/test_http2.py turns it off).
    port = three_certificates.port
    with tls_connect(port, "alpha.test", client_context(alpn=["h2", "http/1.1"])) as sock:
        assert sock.selected_alpn_protocol() == "h2"
    with tls_connect(port, "alpha.test", client_context(alpn=["http/1.1"])) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"


def _versions_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = client_context()
    # Level 0 lets this client offer the old versions; refusing them is the server's job.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    return context


def _refused_by_the_client(error: ssl.SSLError) -> bool:
    """True when the client itself could not offer the version (a broken test setup)."""
    return error.reason in ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls12_is_accepted_and_tls11_refused_by_default(
    three_certificates: BalancerProcess,
) -> None:
    port = three_certificates.port
    with tls_connect(port, "alpha.test", _versions_client(ssl.TLSVersion.TLSv1_2)) as sock:
        assert sock.version() == "TLSv1.2"
        assert request(sock).status == 200
    with pytest.raises(ssl.SSLError) as refused:
        tls_connect(port, "alpha.test", _versions_client(ssl.TLSVersion.TLSv1_1))
    assert not _refused_by_the_client(refused.value)


def test_min_version_tls13_refuses_tls12(
    balancer: BalancerFactory, pki: Pki, backends: list[BackendProcess]
) -> None:
    lb = balancer(https_config(pki, backends[0], "      min_version: TLSv1.3"))
    with pytest.raises(ssl.SSLError) as refused:
        tls_connect(lb.port, "alpha.test", _versions_client(ssl.TLSVersion.TLSv1_2))
    assert not _refused_by_the_client(refused.value)
    with tls_connect(lb.port, "alpha.test", _versions_client(ssl.TLSVersion.TLSv1_3)) as sock:
        assert request(sock).status == 200


def test_requests_over_tls_carry_x_forwarded_proto_https(
    three_certificates: BalancerProcess,
) -> None:
    with tls_connect(three_certificates.port, "alpha.test") as sock:
        echoed = request(sock, "/echo", host="alpha.test").json()
    headers = {name.lower(): value for name, value in echoed["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "alpha.test"


def test_long_answers_arrive_whole_over_tls(three_certificates: BalancerProcess) -> None:
    """Long bodies are relayed as views of the server's reads; over TLS they are
    joined with the head into one write."""
    with tls_connect(three_certificates.port, "alpha.test") as sock:
        for size in (60_000, 5, 300_000):
            answer = request(sock, f"/bytes?n={size}", host="alpha.test")
            assert answer.status == 200
            assert answer.body == (bytes(range(256)) * (size // 256 + 1))[:size]


def test_client_certificates_are_required_with_client_ca(
    balancer: BalancerFactory, pki: Pki, backends: list[BackendProcess]
) -> None:
    lb = balancer(https_config(pki, backends[0], f"      client_ca: {pki.client_ca_file}"))
    trusted = pki.client_ca.issue_cert("client.test")
    with tls_connect(lb.port, "alpha.test", client_context(client_cert=trusted)) as sock:
        assert request(sock).status == 200

    stranger = trustme.CA().issue_cert("client.test")
    for context in (client_context(), client_context(client_cert=stranger)):
        # TLS 1.3: the server judges the client's certificate after the client thinks
        # the handshake is done, so the refusal shows on the first read at the latest.
        with (
            pytest.raises((ssl.SSLError, ConnectionError)),
            tls_connect(lb.port, "alpha.test", context) as sock,
        ):
            request(sock)


REDIRECT_CONFIG = """
listeners:
  - name: plain
    bind: 127.0.0.1:0
    redirect_https: true
pools:
  web: {}
"""


@pytest.mark.parametrize(
    ("method", "target", "host", "location"),
    [
        ("GET", "/some/path?q=1", "example.test:8080", "https://example.test/some/path?q=1"),
        ("POST", "/form", "example.test", "https://example.test/form"),
        ("GET", "http://example.test:81/abs", "example.test:81", "https://example.test/abs"),
        ("GET", "/", "[::1]:8080", "https://[::1]/"),
    ],
)
def test_redirect_https_answers_308_with_the_same_host_and_path(
    balancer: BalancerFactory, method: str, target: str, host: str, location: str
) -> None:
    lb = balancer(REDIRECT_CONFIG)
    response = http_request("127.0.0.1", lb.port, method, target, headers={"Host": host})
    assert response.status == 308
    assert response.header("Location") == location


def test_plain_listeners_without_redirect_are_not_redirected(
    balancer: BalancerFactory, backends: list[BackendProcess]
) -> None:
    lb = balancer(
        REDIRECT_CONFIG.replace("redirect_https: true", "pool: web").replace(
            "web: {}", f"web: {{servers: [{{address: {backends[0].address}}}]}}"
        )
    )
    echoed = http_request("127.0.0.1", lb.port, "GET", "/echo").json()
    headers = {name.lower(): value for name, value in echoed["headers"]}
    assert headers["x-forwarded-proto"] == "http"


def _whole_answer(plain: bytes) -> bool:
    head, found, body = plain.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return len(body) >= int(value)
    raise AssertionError("an answer without Content-Length")


def _tls12_records_of_one_answer(port: int, ca: trustme.CA) -> tuple[int, bytes]:
    """Send one GET over TLS 1.2 (no post-handshake messages) on a raw socket driven
    through a MemoryBIO; count the application-data records the whole answer took."""
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="alpha.test")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        sock.sendall(outgoing.read())
        tls.write(b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n")
        sock.sendall(outgoing.read())
        raw = b""
        plain = b""
        while not _whole_answer(plain):
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the answer"
            raw += chunk
            incoming.write(chunk)
            with contextlib.suppress(ssl.SSLWantReadError):
                while True:
                    plain += tls.read(65536)
    records = 0
    offset = 0
    while offset + 5 <= len(raw):
        content_type, length = raw[offset], int.from_bytes(raw[offset + 3 : offset + 5])
        records += content_type == 23
        offset += 5 + length
    return records, plain


def test_a_small_answer_is_one_tls_record(
    three_certificates: BalancerProcess, pki: Pki, backends: list[BackendProcess]
) -> None:
    """The relay joins an answer's pieces (head, body) before TLS encrypts them: one
    record and one encryption per delivery, not one per piece."""
    records, plain = _tls12_records_of_one_answer(three_certificates.port, pki.ca)
    assert plain.startswith(b"HTTP/1.1 200") and plain.endswith(f"{backends[0].name}\n".encode())
    assert records == 1
