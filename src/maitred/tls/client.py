"""TLS from the balancer to a pool's servers (optionally with a client certificate)."""

from __future__ import annotations

import ssl
from pathlib import Path

from maitred.config.tls_settings import PoolTls
from maitred.tls.files import load_cert_chain, resolve


def client_context(settings: PoolTls, base_dir: Path) -> ssl.SSLContext:
    """The context new connections to the servers use; raises OSError or ssl.SSLError
    when a file cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    if settings.verify:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if settings.ca is not None:
            context.load_verify_locations(cafile=resolve(settings.ca, base_dir))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.cert is not None and settings.key is not None:
        load_cert_chain(context, resolve(settings.cert, base_dir), resolve(settings.key, base_dir))
    return context


def server_hostname(settings: PoolTls, host: str) -> str:
    """The name sent as SNI and checked against the server's certificate."""
    return settings.sni if settings.sni is not None else host


def files(settings: PoolTls, base_dir: Path) -> list[Path]:
    return [resolve(path, base_dir) for path in (settings.ca, settings.cert, settings.key) if path]
