"""The common answer head, read without llhttp.

Most servers answer in one plain form: ``HTTP/1.1 200 OK``, then ``Name: value``
lines with one space after each colon, a Content-Length and perhaps
``Connection: keep-alive``. Through llhttp, each field of such a head costs a
Python callback and two new bytes objects (about 160 ns a field, see
bench/hotpath_bench.py); read here, the head costs one byte loop in compiled
code, and the runs of fields that pass through unchanged are kept as slices of
the server's bytes.

Anything else is left to llhttp and the checks around it: another version, an
interim answer, a field with other whitespace or an empty value, a control
character or HTAB, a transfer coding, Upgrade, a Connection that names fields or
says anything but close or keep-alive, another hop-by-hop field, a repeated
Content-Length. ``read_answer_head`` then returns None and the same bytes take
the slow path. What it accepts, llhttp accepts and reads the same way:
tests/test_answer_head.py holds the two readings side by side.
"""

from __future__ import annotations

from typing import Final

from mypy_extensions import i64

from maitred.proxy.framing import (
    CONNECTION,
    CONTENT_LENGTH,
    ORDINARY,
    PREFILTER_LENGTH,
    REQUEST_ID,
    RESPONSE_HEADER_KINDS,
    RESPONSE_PREFILTER,
    header_kind,
)


def _table(allowed: bytes) -> bytes:
    """256 bytes: 1 at each byte value in ``allowed``."""
    table = bytearray(256)
    for byte in allowed:
        table[byte] = 1
    return bytes(table)


#: Bytes of a field name (RFC 9110 5.6.2 tchar).
TOKEN: Final = _table(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
#: Bytes of a field value or a reason phrase read here: SP, VCHAR and obs-text.
#: HTAB is allowed in both (RFC 9110 5.5) but left to llhttp.
TEXT: Final = _table(bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)))

CR: Final = 13
LF: Final = 10
SP: Final = 32
COLON: Final = 58
#: A longer Content-Length is left to llhttp (which refuses what overflows 64 bits).
MAX_LENGTH_DIGITS: Final = 15


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
    final answer in the plain form (see the module's docstring); None otherwise.

    Offsets are native 64-bit integers (``i64``): the byte loops then compile to
    plain C arithmetic, without the tagged-integer checks of ``int``.
    """
    if stop - pos < 17 or stop > len(data) or data[stop - 4 : stop] != b"\r\n\r\n":
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
        start: i64 = i
        while TOKEN[data[i]]:
            i += 1
        name_end: i64 = i
        if name_end == start or data[i] != COLON or data[i + 1] != SP:
            return None
        i += 2
        value_start: i64 = i
        while TEXT[data[i]]:
            i += 1
        if i == value_start or data[value_start] == SP or data[i - 1] == SP:
            return None
        if data[i] != CR or data[i + 1] != LF:
            return None
        size: i64 = name_end - start
        if size < PREFILTER_LENGTH and RESPONSE_PREFILTER[size << 7 | (data[start] & 0x7F)]:
            kind = header_kind(data[start:name_end], RESPONSE_HEADER_KINDS, RESPONSE_PREFILTER)
            if kind == REQUEST_ID:
                has_request_id = True
            elif kind != ORDINARY:
                if kind == CONTENT_LENGTH:
                    if length_value is not None or i - value_start > MAX_LENGTH_DIGITS:
                        return None
                    length = 0
                    for k in range(value_start, i):
                        digit: i64 = data[k] - 48
                        if not 0 <= digit <= 9:
                            return None
                        length = length * 10 + digit
                    length_value = data[value_start:i]
                elif kind == CONNECTION:
                    value = data[value_start:i].lower()
                    if value == b"close":
                        close = True
                    elif value != b"keep-alive":
                        return None
                else:
                    return None
                # This field is re-declared (or dropped): the run before it is kept.
                if start > run:
                    fields.append(data[run:start])
                run = i + 2
        i += 2
    if i != end:
        return None
    if end > run:
        fields.append(data[run:end])
    return AnswerHead(
        hundreds * 100 + tens * 10 + units, fields, length_value, length, close, has_request_id
    )
