"""/metrics source: when each TLS certificate maitred uses expires.

``maitred_tls_certificate_expiry_timestamp_seconds{listener,pool,cert,subject}``
is the certificate's notAfter as a Unix timestamp, one series per certificate:
a listener's serving certificates (``listener`` set, ``pool`` empty) and the
client certificates presented to a pool's servers (``pool`` set, ``listener``
empty). ``cert`` is the file, ``subject`` the first name the certificate
covers. Alert on ``... - time() < 14 * 86400``.

A listener's figure follows the certificates in service: the files are read
again only after maitred loaded them successfully, so a renewed file that
failed to load (and left the old certificate serving) does not hide the old
certificate's expiry. Where this process does not terminate TLS itself (the
supervisor of several worker processes) and for client certificates, the
figure is the file's, re-read whenever the file changes.

Register with ``admin.collector.sources.append(CertificateExpiry(...).collect)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from maitred.config import Config
from maitred.tls.certificates import read_certificate
from maitred.tls.files import resolve
from maitred.tls.runtime import TlsRuntime

log = logging.getLogger("maitred.tls")

METRIC = "maitred_tls_certificate_expiry_timestamp_seconds"
LABELS = ["listener", "pool", "cert", "subject"]


@dataclass(frozen=True, slots=True)
class Expiry:
    #: What the figure was read for: the certificates in service, or the file's stat.
    version: object
    not_after: float
    subject: str


class CertificateExpiry:
    def __init__(self, tls: TlsRuntime, config: Callable[[], Config]) -> None:
        self.tls = tls
        #: The configuration in effect (it changes on reload).
        self.config = config
        self._read: dict[Path, Expiry] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            METRIC,
            "When the certificate expires (notAfter), as a Unix timestamp.",
            labels=LABELS,
        )
        config = self.config()
        base_dir = self.tls.base_dir
        kept: dict[Path, Expiry] = {}
        for listener in config.listeners:
            if listener.tls is None:
                continue
            in_service = self.tls.listeners.get(listener.name)
            files = in_service.settings if in_service is not None else listener.tls
            for pair in files.certificates:
                path = resolve(pair.cert, base_dir)
                version = in_service.certificates if in_service is not None else _file_version(path)
                expiry = self._expiry(path, version)
                if expiry is not None:
                    kept[path] = expiry
                    family.add_metric(
                        [listener.name, "", str(path), expiry.subject], expiry.not_after
                    )
        for name, pool in config.pools.items():
            if pool.tls is None or pool.tls.cert is None:
                continue
            path = resolve(pool.tls.cert, base_dir)
            expiry = self._expiry(path, _file_version(path))
            if expiry is not None:
                kept[path] = expiry
                family.add_metric(["", name, str(path), expiry.subject], expiry.not_after)
        self._read = kept  # files no longer configured are forgotten
        yield family

    def _expiry(self, path: Path, version: object) -> Expiry | None:
        if version is None:
            return None
        known = self._read.get(path)
        if known is not None and known.version == version:
            return known
        try:
            info = read_certificate(path)
        except (OSError, ValueError) as error:
            # Loading it failed loudly already; a scrape every few seconds need not repeat it.
            log.debug("certificate expiry metric: cannot read %s: %s", path, error)
            return None
        subject = info.names[0] if info.names else ""
        return Expiry(version, info.not_after.timestamp(), subject)


def _file_version(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the file is rewritten or replaced (renewal tools rename over it)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)
