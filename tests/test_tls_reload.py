"""Live certificate reload: on SIGHUP and when the files change on disk, new handshakes
get the new certificate while open connections keep working; a broken replacement
keeps the old certificate in service."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import trustme

from tests.support.backends import BackendProcess
from tests.support.balancer import BalancerFactory, BalancerProcess
from tests.support.tls import (
    PemPair,
    peer_names,
    peer_serial,
    replace_file,
    request,
    tls_connect,
    write_pair,
)

RELOADED = r"listener public: certificates reloaded"
KEPT = r"listener public: keeping the previous certificates"


def config(backend: BackendProcess, *pairs: tuple[str, str]) -> str:
    certificates = "\n".join(f"        - {{cert: {cert}, key: {key}}}" for cert, key in pairs)
    return f"""
listeners:
  - name: public
    bind: 127.0.0.1:0
    pool: web
    tls:
      certificates:
{certificates}
pools:
  web:
    servers:
      - {{address: {backend.address}}}
"""


def absolute(pair: PemPair) -> tuple[str, str]:
    return (str(pair.cert), str(pair.key))


def new_connection_serial(lb: BalancerProcess, server_name: str = "site.test") -> int:
    with tls_connect(lb.port, server_name) as sock:
        assert request(sock).status == 200
        return peer_serial(sock)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    directory.mkdir()
    return directory


def test_sighup_serves_the_renewed_certificate_and_keeps_open_connections(
    balancer: BalancerFactory, backends: list[BackendProcess], certs: Path
) -> None:
    ca = trustme.CA()
    first = write_pair(ca, certs, "site", "site.test")
    # Relative paths are read from the configuration file's directory.
    text = config(backends[0], ("../certs/site.pem", "../certs/site.key"))
    lb = balancer(text)
    with tls_connect(lb.port, "site.test") as old:
        assert request(old).status == 200
        assert peer_serial(old) == first.serial

        renewed = write_pair(ca, certs, "site", "site.test")
        lb.reload(text)

        assert new_connection_serial(lb) == renewed.serial != first.serial
        assert request(old).status == 200  # the open connection goes on, old certificate
        assert peer_serial(old) == first.serial


def test_sighup_with_a_new_certificate_list_serves_the_added_name(
    balancer: BalancerFactory, backends: list[BackendProcess], certs: Path
) -> None:
    ca = trustme.CA()
    site = write_pair(ca, certs, "site", "site.test")
    other = write_pair(ca, certs, "other", "other.test")
    lb = balancer(config(backends[0], absolute(site)))
    with tls_connect(lb.port, "other.test") as sock:
        assert peer_names(sock) == ["site.test"]  # not served yet: the default

    lb.reload(config(backends[0], absolute(site), absolute(other)))

    with tls_connect(lb.port, "other.test") as sock:
        assert peer_names(sock) == ["other.test"]


def test_changed_files_are_reloaded_without_a_signal(
    balancer: BalancerFactory, backends: list[BackendProcess], certs: Path
) -> None:
    ca = trustme.CA()
    first = write_pair(ca, certs, "site", "site.test")
    lb = balancer(config(backends[0], absolute(first)))
    with tls_connect(lb.port, "site.test") as old:
        assert request(old).status == 200
        mark = len(lb.log.lines)

        renewed = write_pair(ca, certs, "site", "site.test")
        lb.log.wait_for(RELOADED, start=mark)

        assert new_connection_serial(lb) == renewed.serial
        assert request(old).status == 200
        assert peer_serial(old) == first.serial


@pytest.mark.parametrize(
    "breakage", ["garbage certificate", "key of another certificate", "expired certificate"]
)
def test_a_broken_replacement_keeps_the_old_certificate(
    balancer: BalancerFactory, backends: list[BackendProcess], certs: Path, breakage: str
) -> None:
    ca = trustme.CA()
    first = write_pair(ca, certs, "site", "site.test")
    text = config(backends[0], absolute(first))
    lb = balancer(text)
    mark = len(lb.log.lines)

    if breakage == "garbage certificate":
        replace_file(first.cert, b"-----BEGIN CERTIFICATE-----\nbroken\n")
    elif breakage == "key of another certificate":
        unrelated = write_pair(ca, certs, "unrelated", "site.test")
        replace_file(first.key, unrelated.key.read_bytes())
    else:
        yesterday = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        write_pair(ca, certs, "site", "site.test", not_after=yesterday)
    lb.log.wait_for(KEPT, start=mark)
    assert new_connection_serial(lb) == first.serial

    # A reload signal refuses the broken files as well, naming the key at fault.
    mark = len(lb.log.lines)
    lb.reload(text, expect=r"reload refused: listeners\[0\]\.tls\.certificates\[0\]")
    assert new_connection_serial(lb) == first.serial
    assert lb.proc.poll() is None
