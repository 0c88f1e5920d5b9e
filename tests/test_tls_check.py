"""`maitred check` on TLS settings and files, and the pieces TLS termination is built
from: certificate names (SAN, CN fallback), SNI choice, the https redirect target."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from maitred.policies.redirect import https_location
from maitred.tls.certificates import read_certificate
from maitred.tls.server import CertificateSet
from tests.support.tls import write_ca, write_pair

NOW = datetime.datetime.now(datetime.UTC)


def check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "maitred.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "maitred", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stdout + result.stderr


def listener_yaml(certificates: str, tls_extra: str = "", listener_extra: str = "") -> str:
    return f"""listeners:
  - name: public
    bind: 127.0.0.1:8443
    pool: web
{listener_extra}    tls:
      certificates:
{certificates}
{tls_extra}pools:
  web:
    servers: [{{address: 127.0.0.1:9001}}]
"""


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_valid_certificates_pass(tmp_path: Path, ca: trustme.CA) -> None:
    pair = write_pair(ca, tmp_path, "site", "site.test")
    code, output = check(tmp_path, listener_yaml(f"        - {pair.yaml()}"))
    assert code == 0, output
    assert "configuration is valid" in output
    assert "warning" not in output


def test_relative_paths_are_read_from_the_configuration_directory(
    tmp_path: Path, ca: trustme.CA
) -> None:
    (tmp_path / "certs").mkdir()
    write_pair(ca, tmp_path / "certs", "site", "site.test")
    code, output = check(
        tmp_path, listener_yaml("        - {cert: certs/site.pem, key: certs/site.key}")
    )
    assert code == 0, output


def test_missing_files_are_named_with_their_key_and_line(tmp_path: Path) -> None:
    code, output = check(
        tmp_path,
        listener_yaml(f"        - {{cert: {tmp_path}/nope.pem, key: {tmp_path}/nope.key}}"),
    )
    assert code == 2
    assert (
        f"listeners[0].tls.certificates[0].cert: cannot read {tmp_path}/nope.pem: "
        "No such file or directory (line 7)" in output
    )
    assert "listeners[0].tls.certificates[0].key: cannot read" in output


def test_a_key_that_does_not_match_its_certificate_is_an_error(
    tmp_path: Path, ca: trustme.CA
) -> None:
    site = write_pair(ca, tmp_path, "site", "site.test")
    other = write_pair(ca, tmp_path, "other", "site.test")
    code, output = check(
        tmp_path, listener_yaml(f"        - {{cert: {site.cert}, key: {other.key}}}")
    )
    assert code == 2
    assert f"listeners[0].tls.certificates[0].key: does not match the certificate {site.cert}" in (
        output
    )


def test_files_that_are_not_pem_are_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    (tmp_path / "junk.key").write_text("not a key\n")
    code, output = check(
        tmp_path,
        listener_yaml(f"        - {{cert: {tmp_path}/junk.pem, key: {tmp_path}/junk.key}}"),
    )
    assert code == 2
    assert "certificates[0].cert: " in output and "holds no PEM certificate" in output
    assert "certificates[0].key: " in output and "holds no PEM private key" in output


def test_an_expired_certificate_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    pair = write_pair(ca, tmp_path, "old", "site.test", not_after=NOW - datetime.timedelta(days=1))
    code, output = check(tmp_path, listener_yaml(f"        - {pair.yaml()}"))
    assert code == 2
    assert "listeners[0].tls.certificates[0].cert: " in output and " expired on " in output


def test_expiry_within_14_days_is_a_warning_only(tmp_path: Path, ca: trustme.CA) -> None:
    pair = write_pair(
        ca, tmp_path, "soon", "site.test", not_after=NOW + datetime.timedelta(days=5, hours=1)
    )
    code, output = check(tmp_path, listener_yaml(f"        - {pair.yaml()}"))
    assert code == 0, output
    assert "listeners[0].tls.certificates[0].cert: warning: " in output
    assert "expires in 5 days" in output
    assert "configuration is valid" in output


def test_tls_settings_are_validated(tmp_path: Path, ca: trustme.CA) -> None:
    pair = write_pair(ca, tmp_path, "site", "site.test")
    extra = (
        "      min_version: TLSv1.1\n"
        "      ciphers: NO-SUCH-CIPHER\n"
        "      alpn: [h2]\n"
        f"      client_ca: {tmp_path}/missing-ca.pem\n"
    )
    code, output = check(tmp_path, listener_yaml(f"        - {pair.yaml()}", extra))
    assert code == 2
    assert "listeners[0].tls.min_version: must be 'TLSv1.2' or 'TLSv1.3'" in output
    assert "listeners[0].tls.ciphers: OpenSSL selects no cipher from 'NO-SUCH-CIPHER'" in output
    assert "listeners[0].tls.alpn[0]: must be 'http/1.1' or 'http/1.0'" in output


def test_a_missing_client_ca_is_an_error(tmp_path: Path, ca: trustme.CA) -> None:
    pair = write_pair(ca, tmp_path, "site", "site.test")
    extra = f"      client_ca: {tmp_path}/missing-ca.pem\n"
    code, output = check(tmp_path, listener_yaml(f"        - {pair.yaml()}", extra))
    assert code == 2
    assert f"listeners[0].tls.client_ca: cannot read {tmp_path}/missing-ca.pem" in output


def test_redirect_https_is_for_plain_listeners(tmp_path: Path, ca: trustme.CA) -> None:
    pair = write_pair(ca, tmp_path, "site", "site.test")
    text = listener_yaml(f"        - {pair.yaml()}", listener_extra="    redirect_https: true\n")
    code, output = check(tmp_path, text)
    assert code == 2
    assert "listeners[0].redirect_https: this listener already speaks https (it has tls)" in output


def test_a_redirect_only_listener_needs_no_pool(tmp_path: Path) -> None:
    text = """listeners:
  - {name: plain, bind: 127.0.0.1:8080, redirect_https: true}
pools:
  web: {}
"""
    code, output = check(tmp_path, text)
    assert code == 0, output


def pool_yaml(tls: str) -> str:
    return f"""listeners:
  - {{name: public, bind: 127.0.0.1:8080, pool: web}}
pools:
  web:
    tls: {tls}
    servers: [{{address: 127.0.0.1:9001}}]
"""


def test_pool_tls_files_are_checked(tmp_path: Path, ca: trustme.CA) -> None:
    client = write_pair(ca, tmp_path, "client", "lb.test")
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    good = f"{{verify: true, ca: {ca_file}, sni: api.test, cert: {client.cert}, key: {client.key}}}"
    assert check(tmp_path, pool_yaml(good))[0] == 0

    code, output = check(tmp_path, pool_yaml(f"{{ca: {tmp_path}/none.pem}}"))
    assert code == 2 and "pools.web.tls.ca: cannot read" in output

    code, output = check(tmp_path, pool_yaml(f"{{cert: {client.cert}}}"))
    assert code == 2 and "pools.web.tls: 'cert' and 'key' go together" in output


def test_run_refuses_to_start_with_a_broken_certificate(tmp_path: Path) -> None:
    path = tmp_path / "maitred.yaml"
    path.write_text(
        listener_yaml(f"        - {{cert: {tmp_path}/nope.pem, key: {tmp_path}/nope.key}}")
    )
    result = subprocess.run(
        [sys.executable, "-m", "maitred", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "listeners[0].tls.certificates[0].cert: cannot read" in result.stderr


# -- the pieces ----------------------------------------------------------------


def _self_signed(path: Path, common_name: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_names_come_from_the_san_and_fall_back_to_the_cn(tmp_path: Path, ca: trustme.CA) -> None:
    pair = write_pair(ca, tmp_path, "san", "A.Example.Test", "*.example.test", "127.0.0.1")
    assert read_certificate(pair.cert).names == ("a.example.test", "*.example.test")
    only_cn = _self_signed(tmp_path / "cn.pem", "Legacy.Example.Test")
    assert read_certificate(only_cn).names == ("legacy.example.test",)


def test_exact_names_win_over_wildcards_and_unknown_names_get_the_default() -> None:
    import ssl

    default, exact, wildcard = (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) for _ in range(3))
    choice = CertificateSet(
        default, exact={"api.example.test": exact}, wildcard={".example.test": wildcard}
    )
    assert choice.choose("api.example.test") is exact
    assert choice.choose("API.example.test.") is exact
    assert choice.choose("www.example.test") is wildcard
    assert choice.choose("a.www.example.test") is default
    assert choice.choose("example.test") is default
    assert choice.choose(None) is default


@pytest.mark.parametrize(
    ("head", "location"),
    [
        (b"GET /a?b=c HTTP/1.1\r\nX-Forwarded-Host: h.test:80\r\n\r\n", b"https://h.test/a?b=c"),
        (b"GET * HTTP/1.1\r\nX-Forwarded-Host: h.test\r\n\r\n", b"https://h.test/"),
        (b"GET /x HTTP/1.1\r\nX-Forwarded-Host: \r\n\r\n", None),
        (b"GET http://o.test HTTP/1.1\r\nX-Forwarded-Host: h.test\r\n\r\n", b"https://o.test/"),
    ],
)
def test_https_location(head: bytes, location: bytes | None) -> None:
    assert https_location(head) == location
