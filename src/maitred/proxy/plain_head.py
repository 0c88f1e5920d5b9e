"""Plain heads, read without llhttp.

Most heads come in one plain form: ``GET /path HTTP/1.1`` or ``HTTP/1.1 200
OK``, then ``Name: value`` lines with one space after each colon. Through
llhttp, each field costs a Python callback and two new bytes objects (about
160 ns a field, see bench/hotpath_bench.py), each request or answer a few more
callbacks and calls to read its method, version and keep-alive. Read here, a
head costs one byte loop in compiled code; an answer's runs of fields that pass
through unchanged are kept as slices of the server's bytes.

Anything else is left to llhttp and the checks around it: another version or
method, an interim answer, a target that is not a plain path, a field with other
whitespace or an empty value, a control character or HTAB, a transfer coding or
a body length on a request, Upgrade, a Connection that says anything but close
or keep-alive, an answer's other hop-by-hop fields, a repeated Content-Length.
The readers then return None and the same bytes take the slow path. What they
accept, llhttp accepts and reads the same way: tests/fuzz/test_plain_head.py
holds the two readings side by side.

Offsets are native 64-bit integers (``i64``): the byte loops then compile to
plain C arithmetic, without the tagged-integer checks of ``int``.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import i64

from maitred.proxy.framing import (
    CONNECTION,
    CONTENT_LENGTH,
    CR,
    LF,
    ORDINARY,
    PREFILTER_LENGTH,
    REQUEST_HEADER_KINDS,
    REQUEST_ID,
    REQUEST_PREFILTER,
    RESPONSE_HEADER_KINDS,
    RESPONSE_PREFILTER,
    TRANSFER_ENCODING,
    UPGRADE,
    header_kind,
)


def _table(allowed: bytes) -> bytes:
    """256 bytes: 1 at each byte value in ``allowed``."""
    table = bytearray(256)
    for byte in allowed:
        table[byte] = 1
    return bytes(table)


_ALPHANUMERIC: Final = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: Bytes of a field name (RFC 9110 5.6.2 tchar).
TOKEN: Final = _table(b"!#$%&'*+-.^_`|~" + _ALPHANUMERIC)
#: Bytes of a field value or a reason phrase read here: SP, VCHAR and obs-text.
#: HTAB is allowed in both (RFC 9110 5.5) but left to llhttp.
TEXT: Final = _table(bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)))
#: Bytes of an origin-form target read here (RFC 3986 pchar, "/", "?"; no "#").
TARGET: Final = _table(b"-._~!$&'()*+,;=:@/?%" + _ALPHANUMERIC)
#: Methods read here; others (CONNECT above all) are llhttp's.
PLAIN_METHODS: Final = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"}
)

_GET: Final = b"GET"

SP: Final = 32
COLON: Final = 58
SLASH: Final = 47
#: A longer Content-Length is left to llhttp (which refuses what overflows 64 bits).
MAX_LENGTH_DIGITS: Final = 15
#: The shortest head: "GET / HTTP/1.1" or "HTTP/1.1 200 X", then CRLFCRLF.
_SHORTEST: Final = 18


def _field_line(data: bytes, start: i64) -> tuple[i64, i64]:
    """The ends of the name and the value of the plain field line at ``start``:
    ``name: value`` and its CRLF, in a head that ends with an empty line. (-1, -1):
    the line is not plain."""
    i = start
    while TOKEN[data[i]]:
        i += 1
    name_end = i
    if name_end == start or data[i] != COLON or data[i + 1] != SP:
        return -1, -1
    i += 2
    value_start = i
    while TEXT[data[i]]:
        i += 1
    if i == value_start or data[value_start] == SP or data[i - 1] == SP:
        return -1, -1
    if data[i] != CR or data[i + 1] != LF:
        return -1, -1
    return name_end, i


def _connection_says_close(value: bytes) -> int:
    """1: ``close``; 0: ``keep-alive``; -1: anything else (llhttp reads lists)."""
    if value == b"keep-alive":  # the usual spelling: no lower(), a generic call
        return 0
    value = value.lower()
    if value == b"close":
        return 1
    return 0 if value == b"keep-alive" else -1


class RequestHead:
    """What the client side needs of a plain request head without a body."""

    __slots__ = ("method", "target", "http11", "line", "close", "fields", "kinds")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http11: bool,
        line: bytes,
        close: bool,
        fields: list[bytes],
        kinds: list[int],
    ) -> None:
        self.method = method
        self.target = target
        self.http11 = http11
        #: HTTP/1.1: the request line as the client sent it, CRLF included, to forward
        #: as it is; HTTP/1.0: b"" (the line to the server says HTTP/1.1).
        self.line = line
        #: The connection closes after this request (llhttp's ``should_keep_alive``).
        self.close = close
        #: Names and values in turn: [name, value, name, value, ...].
        self.fields = fields
        #: Each field's header_kind, in the same order (one per field, not per name
        #: and value).
        self.kinds = kinds


def read_request_head(data: bytes) -> RequestHead | None:
    """Read ``data``, a whole request head and nothing after it, if it is a request
    without a body in the plain form (see the module's docstring); None otherwise."""
    stop: i64 = len(data)
    if stop < _SHORTEST or data[stop - 4 : stop] != b"\r\n\r\n":
        return None
    i: i64 = 0
    if data[0] == 71 and data[1] == 69 and data[2] == 84 and data[3] == SP:
        method = _GET  # most requests: no new bytes object, no set lookup
        i = 4
    else:
        while 65 <= data[i] <= 90:  # A-Z
            i += 1
        if data[i] != SP:
            return None
        method = data[:i]
        if method not in PLAIN_METHODS:
            return None
        i += 1
    target_start = i
    if data[i] != SLASH:
        return None
    while TARGET[data[i]]:
        i += 1
    target_end = i
    if stop - i < 15 or data[i : i + 8] != b" HTTP/1." or data[i + 9] != CR or data[i + 10] != LF:
        return None
    minor = data[i + 8]
    if minor != 49 and minor != 48:  # 1, 0
        return None
    http11 = minor == 49
    i += 11
    end: i64 = stop - 2  # the empty line
    fields: list[bytes] = []
    kinds: list[int] = []
    close = False
    keep_alive = False
    while i < end:
        name_end, value_end = _field_line(data, i)
        if name_end < 0:
            return None
        size = name_end - i
        name = data[i:name_end]
        value = data[name_end + 2 : value_end]
        kind = ORDINARY
        if size < PREFILTER_LENGTH and REQUEST_PREFILTER[size << 7 | (data[i] & 0x7F)]:
            kind = header_kind(name, REQUEST_HEADER_KINDS, REQUEST_PREFILTER)
            if kind in (CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE):
                return None
            if kind == CONNECTION:
                says_close = _connection_says_close(value)
                if says_close < 0:
                    return None
                close = close or says_close == 1
                keep_alive = keep_alive or says_close == 0
        fields.append(name)
        fields.append(value)
        kinds.append(kind)
        i = value_end + 2
    if i != end:
        return None
    # As llhttp decides: HTTP/1.1 closes on "close", HTTP/1.0 keeps alive on "keep-alive".
    close = close if http11 else not keep_alive
    line = data[: target_end + 11] if http11 else b""
    return RequestHead(method, data[target_start:target_end], http11, line, close, fields, kinds)


class AnswerHead:
    """What the relay needs of a plain final answer's head."""

    __slots__ = ("status", "fields", "length_value", "length", "close", "has_request_id")

    def __init__(
        self,
        status: int,
        fields: list[bytes],
        length_value: bytes | None,
        length: int,
        close: bool,
        has_request_id: bool,
    ) -> None:
        self.status = status
        #: The fields relayed unchanged, as runs of the server's lines (CRLFs included).
        self.fields = fields
        #: Content-Length as the server wrote it, and its value (-1: none).
        self.length_value = length_value
        self.length = length
        #: ``Connection: close``: the server closes after this answer.
        self.close = close
        self.has_request_id = has_request_id


def read_answer_head(data: bytes, pos: i64, stop: i64) -> AnswerHead | None:
    """Read the head ``data[pos:stop]``, which ends with its empty line, if it is a
    final answer in the plain form (see the module's docstring); None otherwise."""
    if stop - pos < _SHORTEST or stop > len(data) or data[stop - 4 : stop] != b"\r\n\r\n":
        return None
    if data[pos : pos + 9] != b"HTTP/1.1 " or data[pos + 12] != SP:
        return None
    hundreds: i64 = data[pos + 9] - 48
    tens: i64 = data[pos + 10] - 48
    units: i64 = data[pos + 11] - 48
    if not (2 <= hundreds <= 5 and 0 <= tens <= 9 and 0 <= units <= 9):
        return None
    i: i64 = pos + 13
    while TEXT[data[i]]:
        i += 1
    if data[i] != CR or data[i + 1] != LF:
        return None
    i += 2
    end: i64 = stop - 2  # the empty line
    fields: list[bytes] = []
    run: i64 = i  # where the current run of unchanged fields began
    length_value: bytes | None = None
    length: i64 = -1
    close = False
    has_request_id = False
    while i < end:
        name_end, value_end = _field_line(data, i)
        if name_end < 0:
            return None
        size = name_end - i
        if size < PREFILTER_LENGTH and RESPONSE_PREFILTER[size << 7 | (data[i] & 0x7F)]:
            kind = header_kind(data[i:name_end], RESPONSE_HEADER_KINDS, RESPONSE_PREFILTER)
            if kind == REQUEST_ID:
                has_request_id = True
            elif kind != ORDINARY:
                value_start = name_end + 2
                if kind == CONTENT_LENGTH:
                    if length_value is not None or value_end - value_start > MAX_LENGTH_DIGITS:
                        return None
                    length = 0
                    for k in range(value_start, value_end):
                        digit: i64 = data[k] - 48
                        if not 0 <= digit <= 9:
                            return None
                        length = length * 10 + digit
                    length_value = data[value_start:value_end]
                elif kind == CONNECTION:
                    says_close = _connection_says_close(data[value_start:value_end])
                    if says_close < 0:
                        return None
                    close = close or says_close == 1
                else:
                    return None
                # This field is re-declared (or dropped): the run before it is kept.
                if i > run:
                    fields.append(data[run:i])
                run = value_end + 2
        i = value_end + 2
    if i != end:
        return None
    if end > run:
        fields.append(data[run:end])
    return AnswerHead(
        hundreds * 100 + tens * 10 + units, fields, length_value, length, close, has_request_id
    )
