"""What ``maitred check`` (and every start and reload) verifies in the TLS files.

Certificates and keys must be readable PEM, each key must match its certificate,
and a certificate must not have expired; one that expires within
:data:`EXPIRY_WARNING_DAYS` is only a warning. CA files must load.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from maitred.config.checks import Issue, Loc
from maitred.config.model import Config
from maitred.tls.certificates import read_certificate
from maitred.tls.files import load_cert_chain, resolve

EXPIRY_WARNING_DAYS = 14


@dataclass
class TlsFileReport:
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


def tls_file_issues(
    config: Config, base_dir: Path, now: datetime.datetime | None = None
) -> TlsFileReport:
    """Check every TLS file ``config`` names; relative paths are read from ``base_dir``."""
    checker = _Checker(base_dir, now or datetime.datetime.now(datetime.UTC))
    for index, listener in enumerate(config.listeners):
        if listener.tls is None:
            continue
        here: Loc = ("listeners", index, "tls")
        for number, files in enumerate(listener.tls.certificates):
            where = (*here, "certificates", number)
            checker.pair((*where, "cert"), files.cert, (*where, "key"), files.key)
        if listener.tls.client_ca is not None:
            checker.ca((*here, "client_ca"), listener.tls.client_ca)
    for name, pool in config.pools.items():
        if pool.tls is None:
            continue
        here = ("pools", name, "tls")
        if pool.tls.ca is not None and pool.tls.verify:
            checker.ca((*here, "ca"), pool.tls.ca)
        if pool.tls.cert is not None and pool.tls.key is not None:
            checker.pair((*here, "cert"), pool.tls.cert, (*here, "key"), pool.tls.key)
    return checker.report


class _Checker:
    def __init__(self, base_dir: Path, now: datetime.datetime) -> None:
        self.base_dir = base_dir
        self.now = now
        self.report = TlsFileReport()

    def pair(self, cert_loc: Loc, cert: str, key_loc: Loc, key: str) -> None:
        cert_path, key_path = resolve(cert, self.base_dir), resolve(key, self.base_dir)
        cert_errors = list(self._certificate(cert_loc, cert_path))
        key_errors = list(self._key(key_loc, key_path))
        self.report.errors += cert_errors + key_errors
        if cert_errors or key_errors:
            return
        try:
            load_cert_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_path, key_path)
        except ssl.SSLError as error:
            if error.reason == "KEY_VALUES_MISMATCH":
                message = f"does not match the certificate {cert_path}"
            else:
                message = f"cannot be used with the certificate {cert_path}: {_reason(error)}"
            self.report.errors.append(Issue(key_loc, message))
        except ValueError as error:
            self.report.errors.append(Issue(key_loc, str(error)))

    def ca(self, loc: Loc, ca: str) -> None:
        path = resolve(ca, self.base_dir)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except OSError as error:
            self.report.errors.append(Issue(loc, _cannot_read(path, error)))
        except ssl.SSLError as error:
            self.report.errors.append(
                Issue(loc, f"{path} holds no usable CA certificate: {_reason(error)}")
            )

    def _certificate(self, loc: Loc, path: Path) -> Iterator[Issue]:
        try:
            info = read_certificate(path)
        except OSError as error:
            yield Issue(loc, _cannot_read(path, error))
            return
        except ValueError as error:
            yield Issue(loc, f"{path} {error}")
            return
        if info.not_after <= self.now:
            yield Issue(loc, f"{path} expired on {_date(info.not_after)}")
            return
        left = info.not_after - self.now
        if left < datetime.timedelta(days=EXPIRY_WARNING_DAYS):
            days = left.days
            when = "within a day" if days == 0 else f"in {days} day{'s' if days > 1 else ''}"
            self.report.warnings.append(
                Issue(loc, f"{path} expires {when}, on {_date(info.not_after)}; renew it")
            )
        if info.not_before > self.now:
            self.report.warnings.append(
                Issue(loc, f"{path} is not valid before {_date(info.not_before)}")
            )

    def _key(self, loc: Loc, path: Path) -> Iterator[Issue]:
        try:
            text = path.read_bytes()
        except OSError as error:
            yield Issue(loc, _cannot_read(path, error))
            return
        if b"PRIVATE KEY-----" not in text:
            yield Issue(loc, f"{path} holds no PEM private key")
        elif b"ENCRYPTED" in text:
            yield Issue(loc, f"{path} is encrypted; maitred needs an unencrypted key")


def _cannot_read(path: Path, error: OSError) -> str:
    return f"cannot read {path}: {error.strerror or error}"


def _reason(error: ssl.SSLError) -> str:
    return str(error.reason or error).replace("_", " ").lower()


def _date(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
