"""Demo backends as real processes, and a raw-socket HTTP client that shows exact bytes.

``BackendProcess`` runs ``python -m maitred.demo.backend`` and waits for its
``listening on HOST:PORT`` line (no sleeps). ``read_response`` reads exactly one
response off a socket and never consumes a byte of the next one, so pipelined
answers can be read one after the other from the same plain socket.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, NamedTuple

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 10.0
_MAX_HEAD_BYTES = 1 << 20
_READY_PREFIX = "listening on "

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]] | None


class Response(NamedTuple):
    status: int
    headers: list[tuple[str, str]]  # in received order, names as sent
    body: bytes  # chunked bodies are decoded

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def json(self) -> Any:
        return json.loads(self.body)


# -- raw HTTP client ------------------------------------------------------------


def connect(host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> socket.socket:
    """A plain TCP socket to host:port with a timeout, so a broken test cannot hang."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def build_request(
    method: str,
    path: str,
    headers: HeaderInput = None,
    body: bytes = b"",
    host: str = "127.0.0.1",
) -> bytes:
    """The bytes of one HTTP/1.1 request; adds Host and Content-Length unless given."""
    header_list = _header_list(headers)
    names = {name.lower() for name, _ in header_list}
    if "host" not in names:
        header_list.insert(0, ("Host", host))
    framed = "content-length" in names or "transfer-encoding" in names
    if not framed and (body or method.upper() in ("POST", "PUT", "PATCH")):
        header_list.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in header_list)
    return head.encode("latin-1") + b"\r\n" + body


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: HeaderInput = None,
    body: bytes = b"",
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> Response:
    """Send one request on a fresh connection (``Connection: close``) and read the answer."""
    header_list = _header_list(headers)
    if not any(name.lower() == "connection" for name, _ in header_list):
        header_list.append(("Connection", "close"))
    with connect(host, port, timeout) as sock:
        sock.sendall(build_request(method, path, header_list, body, host=f"{host}:{port}"))
        return read_response(sock, method)


def read_response(sock: socket.socket, method: str = "GET", skip_interim: bool = True) -> Response:
    """Read exactly one response (Content-Length, chunked, or until close) from ``sock``.

    Interim 1xx answers other than 101 are skipped unless ``skip_interim`` is false.
    """
    while True:
        status, headers = _read_head(sock)
        if not (skip_interim and 100 <= status < 200 and status != 101):
            break
    return Response(status, headers, _read_body(sock, method, status, headers))


def _header_list(headers: HeaderInput) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _read_head(sock: socket.socket) -> tuple[int, list[tuple[str, str]]]:
    head = _recv_through(sock, b"\r\n\r\n", _MAX_HEAD_BYTES).decode("latin-1")
    status_line, *header_lines = head[:-4].split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {status_line!r}")
    status = int(rest.split(" ", 1)[0])
    headers = []
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return status, headers


def _read_body(
    sock: socket.socket, method: str, status: int, headers: list[tuple[str, str]]
) -> bytes:
    if method.upper() == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return b""
    lowered = {name.lower(): value for name, value in headers}
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        return _read_chunked(sock)
    if "content-length" in lowered:
        return _recv_exact(sock, int(lowered["content-length"]))
    return _recv_until_close(sock)


def _read_chunked(sock: socket.socket) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = _recv_through(sock, b"\r\n", 4096)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while _recv_through(sock, b"\r\n", _MAX_HEAD_BYTES) != b"\r\n":
                pass  # trailer fields, ignored
            return b"".join(parts)
        chunk = _recv_exact(sock, size + 2)
        if chunk[-2:] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        parts.append(chunk[:-2])


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    parts = []
    remaining = count
    while remaining:
        data = sock.recv(min(remaining, 1 << 20))
        if not data:
            raise ConnectionError(f"connection closed {remaining} bytes short of {count}")
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def _recv_through(sock: socket.socket, delimiter: bytes, limit: int) -> bytes:
    """Consume bytes up to and including ``delimiter`` and not one byte more."""
    consumed = bytearray()
    while True:
        peeked = sock.recv(65536, socket.MSG_PEEK)
        if not peeked:
            raise ConnectionError(f"connection closed before {delimiter!r}")
        search_from = max(0, len(consumed) - len(delimiter) + 1)
        index = (bytes(consumed) + peeked).find(delimiter, search_from)
        if index >= 0:
            consumed += _recv_exact(sock, index + len(delimiter) - len(consumed))
            return bytes(consumed)
        consumed += _recv_exact(sock, len(peeked))
        if len(consumed) > limit:
            raise ValueError(f"no {delimiter!r} within {limit} bytes")


def _recv_until_close(sock: socket.socket) -> bytes:
    parts = []
    while data := sock.recv(1 << 20):
        parts.append(data)
    return b"".join(parts)


# -- backend processes ----------------------------------------------------------


class BackendProcess:
    """One demo backend in its own process; usable as a context manager."""

    def __init__(
        self, name: str = "b1", host: str = "127.0.0.1", port: int = 0, *, wait: bool = True
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.paused = False
        self._ready = False
        command = [
            sys.executable,
            "-m",
            "maitred.demo.backend",
            "--host",
            host,
            "--port",
            str(port),
            "--name",
            name,
            "--exit-on-stdin-close",  # no orphans if the test run dies
        ]
        # stderr is inherited so pytest shows whatever the backend complains about.
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if wait:
            self.wait_ready()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Block until the backend printed its ``listening on`` line."""
        if self._ready:
            return
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        received = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in received:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self.kill()
                    raise TimeoutError(f"backend {self.name} did not start within {timeout}s")
                data = os.read(self.proc.stdout.fileno(), 4096)
                if not data:
                    code = self.proc.wait()
                    raise RuntimeError(f"backend {self.name} exited with {code} before listening")
                received += data
        line = received.split(b"\n", 1)[0].decode()
        if not line.startswith(_READY_PREFIX):
            self.kill()
            raise RuntimeError(f"backend {self.name} printed {line!r}")
        host, _, port = line[len(_READY_PREFIX) :].rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._ready = True

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; falls back to SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            if self.paused:
                self.resume()  # a stopped process would not act on SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipes()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_pipes()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it accepts nothing and answers nothing."""
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def set_health(self, ok: bool) -> None:
        """Make ``GET /health`` answer 200 (ok) or 503."""
        state = "ok" if ok else "fail"
        response = http_request(self.host, self.port, "POST", f"/admin/health?state={state}")
        if response.status != 200:
            raise RuntimeError(f"backend {self.name} refused health change: {response}")

    def set_slow(self, ms: int) -> None:
        """Delay every identity answer (GET /) of this backend by ``ms``."""
        response = http_request(self.host, self.port, "POST", f"/admin/slow?ms={ms}")
        assert response.status == 200, response

    def stats(self) -> dict[str, Any]:
        """``connections_accepted``, ``connections_open`` and ``requests`` so far."""
        response = http_request(self.host, self.port, "GET", "/stats")
        result: dict[str, Any] = response.json()
        return result

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def __enter__(self) -> BackendProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BackendProcess(name={self.name!r}, address={self.address!r})"


def start_backends(n: int, prefix: str = "b") -> list[BackendProcess]:
    """Start ``prefix1`` .. ``prefixN`` side by side and wait until all listen."""
    backends = [BackendProcess(f"{prefix}{index}", wait=False) for index in range(1, n + 1)]
    try:
        for backend in backends:
            backend.wait_ready()
    except BaseException:
        for backend in backends:
            backend.kill()
        raise
    return backends
