"""One active check of one server over a connection of its own.

Checks never borrow the data plane's pooled connections: a check must measure
whether a *new* connection gets an answer, and must not queue behind client
traffic. An HTTP check sends one ``GET`` with ``Connection: close`` and reads
only the status line; a TCP check only connects. The whole check, connect
included, has to finish within ``spec.timeout`` — a frozen server accepts the
connection in its kernel backlog and then never answers, so only the deadline
catches it.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from typing import NamedTuple

from maitred.health.spec import CheckSpec

__all__ = ["USER_AGENT", "CheckResult", "probe"]

USER_AGENT = "maitred-health-check"
_MAX_STATUS_LINE = 8192


class CheckResult(NamedTuple):
    ok: bool
    #: Why, in a few words: "status 200", "connect refused", "no answer within 2s", ...
    detail: str


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _request(spec: CheckSpec, host: str, port: int) -> bytes:
    host_header = spec.host if spec.host is not None else _host_header(host, port)
    return (
        f"GET {spec.path} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        f"User-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")


def _status_of(line: bytes) -> int | None:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return None
    if len(parts[1]) != 3:
        return None
    return int(parts[1])


def _connect_failure(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "connect refused"
    return f"connect failed: {exc.strerror or exc}"


async def probe(
    host: str,
    port: int,
    spec: CheckSpec,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> CheckResult:
    """Run one check of ``host:port`` as ``spec`` says (over TLS with ``tls``, as the
    pool's traffic is); never raises for a failed check."""
    connected = False
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(spec.timeout):
            try:
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    limit=_MAX_STATUS_LINE,
                    ssl=tls,
                    server_hostname=server_hostname if tls is not None else None,
                )
            except OSError as exc:
                return CheckResult(False, _connect_failure(exc))
            connected = True
            if spec.type == "tcp":
                return CheckResult(True, "connected")
            writer.write(_request(spec, host, port))
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return CheckResult(False, "closed without answer")
            except asyncio.LimitOverrunError:
                return CheckResult(False, "malformed answer (status line too long)")
            except OSError as exc:
                return CheckResult(False, f"connection lost: {exc.strerror or exc}")
    except TimeoutError:
        if connected:
            return CheckResult(False, f"no answer within {spec.timeout:g}s")
        return CheckResult(False, f"connect timed out after {spec.timeout:g}s")
    finally:
        if writer is not None:
            # Not awaiting wait_closed: the result is known, and a frozen peer must
            # not hold the check (and its schedule) past the deadline.
            writer.close()
    status = _status_of(line)
    if status is None:
        return CheckResult(False, "malformed answer (no HTTP status line)")
    return CheckResult(spec.expects(status), f"status {status}")
