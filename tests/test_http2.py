"""HTTP/2 for clients end to end: h2 over TLS (ALPN) and h2c, through a real
maitred process to real HTTP/1.1 backends.

One balancer serves every test of this module on several listeners; the abuse
cases, reload and stop live in test_http2_abuse.py and test_http2_lifecycle.py.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import trustme

from maitred.demo.backend import pattern_bytes
from tests.support.backends import BackendProcess
from tests.support.balancer import BalancerProcess
from tests.support.h2client import RawH2
from tests.support.tls import client_context, tls_connect, write_pair

SECRET = "http2-test-secret-0123456789abcdef"
MB = 1024 * 1024


@dataclass(frozen=True)
class Site:
    lb: BalancerProcess
    ca: trustme.CA
    backends: list[BackendProcess]

    def port(self, listener: str) -> int:
        return self.lb.listeners[listener][1]

    def tls(self) -> ssl.SSLContext:
        return client_context(self.ca)


def site_config(pair_yaml: str, addresses: list[str]) -> str:
    servers = "".join(f"      - {{address: {address}}}\n" for address in addresses)
    return f"""
listeners:
  - name: tls
    bind: 127.0.0.1:0
    pool: web
    tls:
      certificates:
        - {pair_yaml}
  - name: h2c
    bind: 127.0.0.1:0
    pool: web
    http2: {{h2c: true}}
  - name: plain
    bind: 127.0.0.1:0
    pool: web
  - name: tls_http1
    bind: 127.0.0.1:0
    pool: web
    http2: {{enabled: false}}
    tls:
      certificates:
        - {pair_yaml}
  - name: sticky
    bind: 127.0.0.1:0
    pool: sticky
    http2: {{h2c: true}}
  - name: limited
    bind: 127.0.0.1:0
    pool: web
    http2: {{h2c: true}}
    rate_limit: {{rate: 3, per: 1m, burst: 3}}
pools:
  web:
    servers:
{servers}  sticky:
    sticky: {{mode: cookie, cookie: LB_SESSION, secret: {SECRET}}}
    servers:
{servers}"""


@pytest.fixture(scope="module")
def site(
    backends: list[BackendProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("h2")
    ca = trustme.CA()
    pair = write_pair(ca, directory, "site", "example.test")
    lb = BalancerProcess(site_config(pair.yaml(), [b.address for b in backends]), directory)
    yield Site(lb, ca, backends)
    lb.kill()


def _client(site: Site, listener: str) -> RawH2:
    if listener in ("tls",):
        return RawH2(site.port(listener), tls=site.tls())
    return RawH2(site.port(listener))


# -- negotiation --------------------------------------------------------------------------


def test_alpn_chooses_h2_when_enabled_and_http11_when_disabled(site: Site) -> None:
    alpn = ["h2", "http/1.1"]
    with tls_connect(site.port("tls"), "example.test", client_context(site.ca, alpn=alpn)) as sock:
        assert sock.selected_alpn_protocol() == "h2"
    port = site.port("tls_http1")
    with tls_connect(port, "example.test", client_context(site.ca, alpn=alpn)) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"


@pytest.mark.parametrize("listener", ["tls", "h2c"])
def test_httpx_speaks_http2_and_http11_stays_available(site: Site, listener: str) -> None:
    scheme = "https" if listener == "tls" else "http"
    url = f"{scheme}://example.test:{site.port(listener)}/echo"
    transport = httpx.HTTPTransport(http2=True, http1=listener == "tls", verify=site.tls())
    with httpx.Client(transport=transport) as client:
        answer = client.get(url, extensions={"sni_hostname": "example.test"})
        assert answer.http_version == "HTTP/2"
        assert answer.status_code == 200
    # The same listener still serves HTTP/1.1 clients.
    with httpx.Client(verify=site.tls()) as client:
        answer = client.get(url, extensions={"sni_hostname": "example.test"})
        assert answer.http_version == "HTTP/1.1"
        assert answer.status_code == 200


def _resolve_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
        return real("127.0.0.1" if host == "example.test" else host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(autouse=True)
def _loopback_names(monkeypatch: pytest.MonkeyPatch) -> None:
    _resolve_to_loopback(monkeypatch)


def test_h2c_preface_on_a_listener_without_h2c_is_refused_clearly(site: Site) -> None:
    with socket.create_connection(("127.0.0.1", site.port("plain")), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 505 "), answer[:80]
    assert b"Connection: close" in answer
    assert b"h2c" in answer


# -- requests and answers ---------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["tls", "h2c"])
def test_many_concurrent_streams_are_answered_each_by_its_own_server_in_turn(
    site: Site, listener: str
) -> None:
    client = _client(site, listener)
    try:
        streams = {client.request(f"/echo?n={n}"): n for n in range(60)}
        served = Counter()
        for stream_id, n in streams.items():
            answer = client.response(stream_id)
            assert answer.status == 200
            echo = json.loads(answer.body)
            assert echo["path"] == f"/echo?n={n}"  # this stream's own answer
            assert answer.header(b"x-backend") == echo["backend"].encode()
            served[echo["backend"]] += 1
        # Round robin over three servers: each took a third of the streams.
        assert sorted(served.values()) == [20, 20, 20], served
    finally:
        client.close()


def test_the_server_gets_an_http11_request_with_forwarded_headers(site: Site) -> None:
    client = _client(site, "tls")
    try:
        stream_id = client.request(
            "/echo?x=1",
            headers=[("cookie", "a=1"), ("cookie", "b=2"), ("x-forwarded-for", "10.9.8.7")],
        )
        answer = client.response(stream_id)
    finally:
        client.close()
    echo = json.loads(answer.body)
    headers = {name.lower(): value for name, value in echo["headers"]}
    assert echo["method"] == "GET" and echo["http_version"] == "1.1"
    assert headers["host"] == "example.test"
    assert headers["cookie"] == "a=1; b=2"  # HTTP/2 splits cookies; HTTP/1.1 joins them
    assert headers["x-forwarded-for"] == "10.9.8.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "example.test"
    assert headers["x-request-id"] == answer.header(b"x-request-id").decode()  # type: ignore[union-attr]


def test_head_and_error_answers(site: Site) -> None:
    client = _client(site, "h2c")
    try:
        head = client.response(client.request("/bytes?n=1000", method="HEAD"))
        assert head.status == 200 and head.header(b"content-length") == b"1000"
        assert head.body == b""
        gone = client.response(client.request("/reset"))  # the server aborts: 502
        assert gone.status == 502
        again = client.response(client.request("/"))  # the connection keeps serving
        assert again.status == 200
    finally:
        client.close()


def test_large_download_and_upload_are_streamed(site: Site) -> None:
    size = 8 * MB
    with httpx.Client(http2=True, verify=site.tls(), timeout=30) as client:
        url = f"https://example.test:{site.port('tls')}"
        with client.stream("GET", f"{url}/bytes?n={size}") as answer:
            assert answer.http_version == "HTTP/2"
            digest = hashlib.sha256()
            received = 0
            for piece in answer.iter_bytes():
                digest.update(piece)
                received += len(piece)
        assert received == size
        assert digest.hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()

        body = pattern_bytes(size)

        def pieces() -> Iterator[bytes]:  # no length: sent to the server chunked
            for start in range(0, size, 256 * 1024):
                yield body[start : start + 256 * 1024]

        answer = client.post(f"{url}/upload", content=pieces())
        assert answer.http_version == "HTTP/2"
        assert answer.json()["body_length"] == size
        assert answer.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        answer = client.post(f"{url}/upload", content=body)  # with a content-length
        assert answer.json()["body_length"] == size


def test_answers_wait_for_the_clients_window(site: Site) -> None:
    """maitred sends no more than the client's window, and the rest once it opens."""
    client = RawH2(site.port("h2c"), auto_ack=False)
    try:
        size = 2 * MB
        stream_id = client.request(f"/bytes?n={size}")
        # The connection window is 65535 bytes and nothing is acknowledged.
        client.wait(lambda: len(client.streams[stream_id].body) >= 65535)
        with pytest.raises(AssertionError, match="timed out"):
            client.wait(lambda: len(client.streams[stream_id].body) > 65535, timeout=0.5)
        client.auto_ack = True
        client.acknowledge(stream_id)
        answer = client.response(stream_id, timeout=30)
        assert bytes(answer.body) == pattern_bytes(size)
    finally:
        client.close()


# -- policies: the HTTP/1.1 ones --------------------------------------------------------------


def test_sticky_cookie_keeps_streams_on_one_server(site: Site) -> None:
    client = _client(site, "sticky")
    try:
        first = client.response(client.request("/"))
        cookie = first.header(b"set-cookie")
        assert cookie is not None and cookie.startswith(b"LB_SESSION=")
        pair = cookie.split(b";")[0].decode()
        streams = [client.request("/", headers=[("cookie", pair)]) for _ in range(9)]
        servers = {client.response(stream_id).header(b"x-backend") for stream_id in streams}
        assert servers == {first.header(b"x-backend")}
    finally:
        client.close()


def test_rate_limit_answers_429_on_streams_past_the_burst(site: Site) -> None:
    client = _client(site, "limited")
    try:
        streams = [client.request("/") for _ in range(5)]
        answers = [client.response(stream_id) for stream_id in streams]
    finally:
        client.close()
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200, 200, 200, 429, 429]
    refused = next(answer for answer in answers if answer.status == 429)
    assert refused.header(b"retry-after") is not None
