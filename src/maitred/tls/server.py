"""TLS termination for one listener: a certificate per SNI name, swappable at any time.

The listening server is created once with the listener's *front* context. The
front context holds no certificate: its SNI callback hands every handshake to
the context of the certificate the client asked for (``ssl_obj.context = ...``),
before OpenSSL picks a certificate. A reload builds a whole new set of
certificate contexts and swaps one reference, so a handshake sees either the old
set or the new one, and established connections keep the session they have.
Every context carries the listener's settings (versions, ciphers, ALPN, client
CAs): after the swap OpenSSL reads some of them from the front context and some
from the chosen one.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from maitred.config.tls_settings import CertificateFiles, TlsSettings
from maitred.tls.certificates import parent_suffix, read_certificate, wildcard_suffix
from maitred.tls.files import load_cert_chain, resolve

log = logging.getLogger("maitred.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def configure(
    context: ssl.SSLContext, settings: TlsSettings, base_dir: Path, offer_h2: bool = False
) -> None:
    """Apply a listener's protocol settings to a server-side context; ``offer_h2``
    puts HTTP/2 first in ALPN (the listener's ``http2.enabled``)."""
    context.minimum_version = _VERSIONS[settings.min_version]
    context.set_ciphers(settings.ciphers)
    context.set_alpn_protocols((["h2"] if offer_h2 else []) + list(settings.alpn))
    # Client-initiated renegotiation only costs the server CPU.
    context.options |= ssl.OP_NO_RENEGOTIATION
    if settings.client_ca is not None:
        context.load_verify_locations(cafile=resolve(settings.client_ca, base_dir))
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE


def certificate_context(
    files: CertificateFiles, settings: TlsSettings, base_dir: Path, offer_h2: bool = False
) -> tuple[ssl.SSLContext, tuple[str, ...]]:
    """A server context serving one certificate, and the names the certificate covers;
    an expired certificate is refused like a broken one."""
    cert, key = resolve(files.cert, base_dir), resolve(files.key, base_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    configure(context, settings, base_dir, offer_h2)
    load_cert_chain(context, cert, key)
    info = read_certificate(cert)
    if info.not_after <= datetime.datetime.now(datetime.UTC):
        raise ValueError(f"the certificate expired on {info.not_after:%Y-%m-%d %H:%M} UTC")
    return context, info.names


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """One generation of a listener's certificates, indexed by the names they serve."""

    default: ssl.SSLContext
    exact: dict[str, ssl.SSLContext] = field(default_factory=dict)
    #: ``.example.com`` -> the context of the first ``*.example.com`` certificate.
    wildcard: dict[str, ssl.SSLContext] = field(default_factory=dict)

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        """Exact names first, then wildcards (one label deep), else the first certificate."""
        if server_name is None:
            return self.default
        name = server_name.lower().rstrip(".")
        chosen = self.exact.get(name)
        if chosen is not None:
            return chosen
        suffix = parent_suffix(name)
        if suffix is not None:
            chosen = self.wildcard.get(suffix)
            if chosen is not None:
                return chosen
        return self.default


def load_certificate_set(
    settings: TlsSettings, base_dir: Path, offer_h2: bool = False
) -> CertificateSet:
    """Load every certificate of ``settings``; raises (OSError, ssl.SSLError, ValueError)
    naming the file at fault."""
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    default: ssl.SSLContext | None = None
    for files in settings.certificates:
        try:
            context, names = certificate_context(files, settings, base_dir, offer_h2)
        except (OSError, ssl.SSLError, ValueError) as error:
            raise TlsLoadError(f"{files.cert} / {files.key}: {error}") from error
        default = default or context
        for name in names:
            suffix = wildcard_suffix(name)
            if suffix is not None:
                wildcard.setdefault(suffix, context)
            else:
                exact.setdefault(name, context)
    assert default is not None  # TlsSettings has at least one certificate
    return CertificateSet(default, exact, wildcard)


class TlsLoadError(OSError):
    """A certificate, key or CA file could not be loaded.

    An OSError, like a port already in use: a listener that cannot start.
    """


class ListenerTls:
    """The TLS side of one listener: the front context its server uses, and the
    current certificates, reloadable while the server runs."""

    def __init__(
        self, name: str, settings: TlsSettings, base_dir: Path, offer_h2: bool = False
    ) -> None:
        self.name = name
        self.settings = settings
        self.base_dir = base_dir
        #: ALPN offers h2 first (the listener's http2.enabled).
        self.offer_h2 = offer_h2
        #: Raises when the certificates cannot be loaded: there is nothing to keep.
        self.certificates = load_certificate_set(settings, base_dir, offer_h2)
        self.front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        configure(self.front, settings, base_dir, offer_h2)
        self.front.sni_callback = self._on_client_hello

    def _on_client_hello(
        self, ssl_object: ssl.SSLObject, server_name: str | None, front: ssl.SSLContext
    ) -> None:
        ssl_object.context = self.certificates.choose(server_name)

    def reload(self, settings: TlsSettings | None = None, offer_h2: bool | None = None) -> bool:
        """Re-read the files (with new ``settings`` if given); on failure keep serving
        the previous certificates and log why. True when the new ones are in service."""
        settings = settings or self.settings
        offer_h2 = self.offer_h2 if offer_h2 is None else offer_h2
        try:
            certificates = load_certificate_set(settings, self.base_dir, offer_h2)
            if settings != self.settings or offer_h2 != self.offer_h2:
                front = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                # fails here, not half-way below
                configure(front, settings, self.base_dir, offer_h2)
                configure(self.front, settings, self.base_dir, offer_h2)
        except (TlsLoadError, OSError, ssl.SSLError) as error:
            log.error(
                "listener %s: keeping the previous certificates, the new ones failed: %s",
                self.name,
                error,
            )
            return False
        self.certificates = certificates
        self.settings = settings
        self.offer_h2 = offer_h2
        log.info("listener %s: certificates reloaded", self.name)
        return True

    def files(self) -> list[Path]:
        """Every file this listener reads, for the change watcher."""
        paths = [
            resolve(path, self.base_dir)
            for files in self.settings.certificates
            for path in (files.cert, files.key)
        ]
        if self.settings.client_ca is not None:
            paths.append(resolve(self.settings.client_ca, self.base_dir))
        return paths
