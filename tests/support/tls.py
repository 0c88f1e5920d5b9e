"""TLS helpers for tests: certificates on disk (trustme), TLS clients, a TLS backend."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509

from tests.support.backends import DEFAULT_TIMEOUT, BackendProcess, Response, build_request
from tests.support.backends import read_response as read_plain_response


@dataclass(frozen=True)
class PemPair:
    cert: Path
    key: Path
    #: Of the certificate as written (the file may have been replaced since).
    serial: int

    def yaml(self) -> str:
        return f"{{cert: {self.cert}, key: {self.key}}}"


def write_pair(
    ca: trustme.CA,
    directory: Path,
    stem: str,
    *names: str,
    common_name: str | None = None,
    not_after: datetime.datetime | None = None,
) -> PemPair:
    """Issue a certificate for ``names`` and write ``stem.pem`` / ``stem.key``."""
    leaf = ca.issue_cert(*names, common_name=common_name, not_after=not_after)
    serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
    pair = PemPair(directory / f"{stem}.pem", directory / f"{stem}.key", serial)
    replace_file(pair.key, leaf.private_key_pem.bytes())
    replace_file(pair.cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return pair


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


def replace_file(path: Path, data: bytes) -> None:
    """Write atomically (rename over), as certificate renewal tools do."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def client_context(
    ca: trustme.CA | None = None,
    *,
    alpn: list[str] | None = None,
    client_cert: trustme.LeafCert | None = None,
) -> ssl.SSLContext:
    """A client context trusting ``ca``; without a CA it verifies nothing (to inspect
    whatever certificate the server picks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        ca.configure_trust(context)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    if client_cert is not None:
        client_cert.configure_cert(context)
    return context


def tls_connect(
    port: int,
    server_name: str | None,
    context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> ssl.SSLSocket:
    """A TLS connection to host:port that sends ``server_name`` as SNI (None: no SNI)."""
    context = context or client_context()
    raw = socket.create_connection((host, port), timeout=DEFAULT_TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def peer_serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def peer_names(sock: ssl.SSLSocket) -> list[str]:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return list(san.value.get_values_for_type(x509.DNSName))


def request(sock: ssl.SSLSocket, path: str = "/", host: str = "example.test") -> Response:
    """One keep-alive GET on an open TLS connection."""
    sock.sendall(build_request("GET", path, host=host))
    return read_response(sock)


def read_response(sock: ssl.SSLSocket, method: str = "GET") -> Response:
    # The plain reader peeks (MSG_PEEK), which TLS sockets do not support: read into a
    # buffer-backed socket-like object instead.
    return read_plain_response(_Buffered(sock), method)  # type: ignore[arg-type]


class _Buffered:
    """Just enough of a socket (recv with MSG_PEEK) over a TLS socket."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""

    def recv(self, size: int, flags: int = 0) -> bytes:
        if not self.buffer:
            self.buffer = self.sock.recv(max(size, 65536))
        data = self.buffer[:size]
        if not flags & socket.MSG_PEEK:
            self.buffer = self.buffer[size:]
        return data


class TlsBackend(BackendProcess):
    """A demo backend serving HTTPS (``--tls-cert``), optionally demanding client certs."""

    def __init__(self, name: str, pair: PemPair, client_ca: Path | None = None) -> None:
        self.name = name
        self.host = "127.0.0.1"
        self.port = 0
        self.paused = False
        self._ready = False
        command = [
            sys.executable,
            "-m",
            "maitred.demo.backend",
            "--name",
            name,
            "--tls-cert",
            str(pair.cert),
            "--tls-key",
            str(pair.key),
            "--exit-on-stdin-close",
        ]
        if client_ca is not None:
            command += ["--tls-client-ca", str(client_ca)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.wait_ready()
