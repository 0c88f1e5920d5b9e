"""The TLS parts of the configuration: listener termination and TLS to the servers.

File paths are kept as written; a relative path is read relative to the
directory of the configuration file (see :func:`maitred.tls.files.resolve`).
"""

from __future__ import annotations

import ssl
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_CIPHERS", "CertificateFiles", "PoolTls", "TlsSettings"]

#: TLS 1.2 suites with forward secrecy and AEAD only (Mozilla's "intermediate"
#: list without DHE). TLS 1.3 suites are always OpenSSL's own, all modern.
DEFAULT_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _cipher_list(value: str) -> str:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(value)
    except ssl.SSLError:
        raise ValueError(f"OpenSSL selects no cipher from {value!r}") from None
    return value


def _file_path(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a file path")
    return value


FilePath = Annotated[str, AfterValidator(_file_path)]


class CertificateFiles(_Frozen):
    """A certificate chain and its private key, as PEM file paths."""

    cert: FilePath
    key: FilePath


class TlsSettings(_Frozen):
    """TLS termination; the certificate is chosen by SNI, the first is the default."""

    certificates: tuple[CertificateFiles, ...] = Field(min_length=1)
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    #: OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are not configurable).
    ciphers: Annotated[str, AfterValidator(_cipher_list)] = DEFAULT_CIPHERS
    #: Offered by ALPN, in order of preference; maitred speaks HTTP/1.x only.
    alpn: tuple[Literal["http/1.1", "http/1.0"], ...] = Field(default=("http/1.1",), min_length=1)
    #: PEM file of the CAs whose client certificates are accepted; set, a client
    #: without a valid certificate fails the handshake.
    client_ca: FilePath | None = None


class PoolTls(_Frozen):
    """TLS from the balancer to a pool's servers."""

    #: Check the server's certificate (chain and name); off only for tests and labs.
    verify: bool = True
    #: PEM file of the CAs trusted for the servers (default: the system's store).
    ca: FilePath | None = None
    #: Name sent as SNI and checked in the server's certificate (default: its address).
    sni: str | None = Field(default=None, min_length=1)
    #: A client certificate and key presented to the servers (mTLS).
    cert: FilePath | None = None
    key: FilePath | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> PoolTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("'cert' and 'key' go together (a client certificate needs its key)")
        return self
