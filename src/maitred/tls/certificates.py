"""What a certificate file says: the names it serves and when it expires."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    #: DNS names from the subjectAltName, or the subject's CN when there is none;
    #: lowercased, wildcards kept as ``*.example.com``.
    names: tuple[str, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime


def read_certificate(path: Path) -> CertificateInfo:
    """The first (leaf) certificate of a PEM file; ValueError when there is none."""
    data = path.read_bytes()
    try:
        leaf = x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise ValueError("holds no PEM certificate") from None
    return CertificateInfo(_names(leaf), leaf.not_valid_before_utc, leaf.not_valid_after_utc)


def _names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        dns_names: list[str] = []
    else:
        dns_names = san.value.get_values_for_type(x509.DNSName)
    if not dns_names:
        # Browsers ignore the CN when a SAN exists; without one it is all there is.
        dns_names = [
            str(attribute.value)
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return tuple(dict.fromkeys(name.strip().lower().rstrip(".") for name in dns_names if name))


def wildcard_suffix(name: str) -> str | None:
    """``*.example.com`` -> ``.example.com``; None for a name that is not a wildcard."""
    if name.startswith("*.") and name.count(".") >= 2:
        return name[1:]
    return None


def parent_suffix(server_name: str) -> str | None:
    """The suffix a wildcard must have to cover ``server_name`` (one label only):
    ``a.example.com`` -> ``.example.com``."""
    dot = server_name.find(".")
    return server_name[dot:] if dot > 0 else None
