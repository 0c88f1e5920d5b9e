"""Access logs: one line per request, formatted and written off the hot path.

The data plane hands each finished request to ``AccessLogWriter.log`` as an
``AccessEntry`` of raw values (one tuple append, nothing else). A timer on the
event loop formats the buffered entries once a second (sooner when many pile
up) and a single writer thread appends them to the file, so neither
formatting nor disk stalls delay a request.

Formats (``access_log: {format: combined | json, path: - | FILE}`` per listener):

- ``combined``: the Apache/NGINX combined format, readable by the usual tools::

    127.0.0.1 - - [27/Nov/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/8.0"

- ``json``: one object per line with ``time`` (RFC 3339, UTC), ``client``,
  ``method``, ``target``, ``protocol``, ``status``, ``bytes_sent``,
  ``duration_ms``, ``host``, ``referer``, ``user_agent``, ``request_id``,
  ``listener``, ``pool`` and ``server``.

``path: -`` writes to standard output (maitred's own log goes to stderr).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal, NamedTuple

from maitred.config.model import AccessLog
from maitred.proxy.routing import AccessLogSink

if TYPE_CHECKING:
    from maitred.proxy.http1 import Exchange

log = logging.getLogger("maitred.access")

FLUSH_INTERVAL = 1.0
#: Entries buffered before a flush is brought forward.
FLUSH_AT = 4096
#: Entries kept at most while the disk is slower than the traffic; older ones are dropped.
MAX_BUFFERED = 200_000
STDOUT = "-"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Format = Literal["combined", "json"]


class AccessEntry(NamedTuple):
    """What the data plane knows about one finished request (raw bytes, not decoded)."""

    time: float  # Unix time the answer completed
    client_ip: str
    method: bytes
    target: bytes
    version: bytes  # b"1.1"
    status: int
    bytes_sent: int  # body bytes sent to the client
    duration: float  # seconds from the request's first byte to the end of the answer
    host: bytes
    referer: bytes
    user_agent: bytes
    request_id: bytes
    listener: str
    pool: str  # "" when the balancer answered without a pool
    server: str  # HOST:PORT of the server that answered, "" when none


#: What the hot path keeps per request: references it already holds, no decoding.
#: (wall time, client ip, request head, HTTP/1.1?, status, body length, duration,
#: request id, listener, pool, server address)
RawEntry = tuple[float, str, bytes, bool, int, "int | None", float, bytes, str, str, str]

_WANTED_HEADERS = (b"host", b"referer", b"user-agent")


def entry_from_raw(raw: RawEntry) -> AccessEntry:
    """Decode what the hot path kept: request line and headers come from the head."""
    when, client_ip, head, http11, status, length, duration, request_id, listener, pool, server = (
        raw
    )
    request_line, _, rest = head.partition(b"\r\n")
    method, _, remainder = request_line.partition(b" ")
    target = remainder.rpartition(b" ")[0] or remainder
    found: dict[bytes, bytes] = {}
    for line in rest.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        key = name.strip().lower()
        if key in _WANTED_HEADERS and key not in found:
            found[key] = value.strip()
    return AccessEntry(
        time=when,
        client_ip=client_ip,
        method=method,
        target=target,
        version=b"1.1" if http11 else b"1.0",
        status=status,
        bytes_sent=length or 0,
        duration=duration,
        host=found.get(b"host", b""),
        referer=found.get(b"referer", b""),
        user_agent=found.get(b"user-agent", b""),
        request_id=request_id,
        listener=listener,
        pool=pool,
        server=server,
    )


# -- formatting -----------------------------------------------------------------------


def _escape(raw: bytes) -> str:
    """Printable ASCII as is; quotes, backslashes and everything else as \\xHH (as NGINX)."""
    out = []
    for byte in raw:
        if 0x20 <= byte < 0x7F and byte not in (0x22, 0x5C):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02X}")
    return "".join(out)


def _clf_time(when: float) -> str:
    local = time.localtime(when)
    offset = local.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{local.tm_mday:02d}/{_MONTHS[local.tm_mon - 1]}/{local.tm_year}:"
        f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    )


def format_combined(entry: AccessEntry) -> str:
    request = f"{_escape(entry.method)} {_escape(entry.target)} HTTP/{_escape(entry.version)}"
    sent = str(entry.bytes_sent) if entry.bytes_sent else "-"
    referer = _escape(entry.referer) if entry.referer else "-"
    agent = _escape(entry.user_agent) if entry.user_agent else "-"
    return (
        f'{entry.client_ip or "-"} - - [{_clf_time(entry.time)}] "{request}" '
        f'{entry.status} {sent} "{referer}" "{agent}"'
    )


def _rfc3339(when: float) -> str:
    utc = time.gmtime(when)
    millis = int((when % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", utc) + f".{millis:03d}Z"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def format_json(entry: AccessEntry) -> str:
    return json.dumps(
        {
            "time": _rfc3339(entry.time),
            "client": entry.client_ip,
            "method": _text(entry.method),
            "target": _text(entry.target),
            "protocol": f"HTTP/{_text(entry.version)}",
            "status": entry.status,
            "bytes_sent": entry.bytes_sent,
            "duration_ms": round(entry.duration * 1000, 3),
            "host": _text(entry.host),
            "referer": _text(entry.referer) or None,
            "user_agent": _text(entry.user_agent) or None,
            "request_id": _text(entry.request_id),
            "listener": entry.listener,
            "pool": entry.pool or None,
            "server": entry.server or None,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


FORMATTERS: dict[str, Callable[[AccessEntry], str]] = {
    "combined": format_combined,
    "json": format_json,
}


# -- writing --------------------------------------------------------------------------


class AccessLogWriter:
    """Buffers entries and appends them, formatted, to ``path`` (``-``: stdout)."""

    def __init__(
        self,
        path: str,
        format: Format,
        loop: asyncio.AbstractEventLoop,
        *,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.path = path
        self.format = format
        self._formatter = FORMATTERS[format]
        self._loop = loop
        self._flush_interval = flush_interval
        self._pending: list[AccessEntry | RawEntry] = []
        self._timer: asyncio.Handle | None = None
        self.dropped = 0
        # One thread: batches reach the file in the order they were formatted.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="access-log")
        self._last_write: Future[None] | None = None
        self._fd = self._open(path)
        self._closed = False

    @staticmethod
    def _open(path: str) -> int:
        if path == STDOUT:
            return sys.stdout.fileno()
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def sink(self, listener: str) -> AccessLogSink:
        """The callable the data plane calls once per answered request on ``listener``:
        ``(exchange, status, body length or None, now)``, see ``ListenerRuntime.access_log``.
        """
        wall = time.time
        append = self._append

        def record(exchange: Exchange, status: int, length: int | None, now: float) -> None:
            pool = exchange.pool
            server = exchange.server
            append(
                (
                    wall(),
                    exchange.client.client_ip,
                    exchange.head,
                    exchange.client_http11,
                    status,
                    length,
                    now - exchange.received_at,
                    exchange.request_id,
                    listener,
                    pool.name if pool is not None else "",
                    server.address if server is not None else "",
                )
            )

        return record

    def log(self, entry: AccessEntry) -> None:
        """Log one decoded entry (the data plane uses ``sink``, which defers decoding)."""
        self._append(entry)

    def _append(self, entry: AccessEntry | RawEntry) -> None:
        pending = self._pending
        pending.append(entry)
        if self._timer is None:
            self._timer = self._loop.call_later(self._flush_interval, self.flush)
        elif len(pending) == FLUSH_AT:
            self._timer.cancel()
            self._timer = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Format what is buffered and hand it to the writer thread."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        entries, self._pending = self._pending, []
        if not entries or self._closed:
            return
        if self._last_write is not None and not self._last_write.done():
            backlog = len(entries)
            if backlog > MAX_BUFFERED:
                # The disk cannot keep up: keep the newest lines, count the rest.
                self.dropped += backlog - MAX_BUFFERED
                entries = entries[-MAX_BUFFERED:]
        data = "".join(f"{line}\n" for line in self._lines(entries)).encode()
        self._last_write = self._executor.submit(self._write, data)

    def _lines(self, entries: Iterable[AccessEntry | RawEntry]) -> Iterable[str]:
        formatter = self._formatter
        for entry in entries:
            try:
                if not isinstance(entry, AccessEntry):
                    entry = entry_from_raw(entry)
                yield formatter(entry)
            except Exception:  # a bad entry must not cost the whole batch
                log.exception("cannot format an access log entry")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            log.error("access log %s: write failed: %s", self.path, exc)

    async def flushed(self) -> None:
        """Flush now and wait until everything logged so far is written."""
        self.flush()
        last = self._last_write
        if last is not None:
            await asyncio.wrap_future(last)

    async def close(self) -> None:
        """Flush, wait for the writer thread, close the file."""
        await self.flushed()
        self._closed = True
        self._executor.shutdown(wait=True)
        if self.path != STDOUT:
            os.close(self._fd)


class AccessLogs:
    """The open access logs of a process, shared by listeners writing to the same file.

    The worker asks ``get`` for each listener with ``access_log`` set when it
    builds its runtime, then ``keep_only`` with what it used, so a reload that
    drops or changes an access log closes the old file.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._writers: dict[tuple[str, str], AccessLogWriter] = {}

    def get(self, path: str, format: Format) -> AccessLogWriter:
        key = (path, format)
        writer = self._writers.get(key)
        if writer is None:
            writer = AccessLogWriter(path, format, self._loop)
            self._writers[key] = writer
        return writer

    async def keep_only(self, used: Iterable[AccessLogWriter]) -> None:
        keep = {id(writer) for writer in list(used)}
        for key, writer in list(self._writers.items()):
            if id(writer) not in keep:
                del self._writers[key]
                await writer.close()

    async def retain(self, settings: Iterable[AccessLog | None]) -> None:
        """After a (re)configuration: close the files no listener's settings name any more."""
        wanted = {(s.path, s.format) for s in settings if s is not None}
        await self.keep_only(w for key, w in self._writers.items() if key in wanted)

    def sink_for(self, settings: AccessLog | None, listener: str) -> AccessLogSink | None:
        """What ``ListenerRuntime.access_log`` gets for a listener's ``access_log`` setting."""
        if settings is None:
            return None
        return self.get(settings.path, settings.format).sink(listener)

    async def close(self) -> None:
        await self.keep_only(())
