"""Header classification and the balancer's own answers.

Both directions rebuild the head from the parser's callbacks: ordinary headers
are copied through byte for byte, hop-by-hop ones are dropped, and framing is
re-declared once (Content-Length or chunked, never both), so what leaves the
balancer is never ambiguous.
"""

from __future__ import annotations

import re
from typing import Final

from mypy_extensions import i64

# What the proxy does with a header, keyed by its lowercased name and its usual
# spelling (see header_kind). Anything not listed is ordinary: copied through
# unchanged, in order.
ORDINARY: Final = 0
HOST: Final = 1
CONNECTION: Final = 2
HOP_BY_HOP: Final = 3
CONTENT_LENGTH: Final = 4
TRANSFER_ENCODING: Final = 5
FORWARDED_FOR: Final = 6
FORWARDED_REPLACED: Final = 7
REQUEST_ID: Final = 8
UPGRADE: Final = 9

_REQUEST_KINDS: Final[dict[bytes, int]] = {
    b"host": HOST,
    b"connection": CONNECTION,
    b"keep-alive": HOP_BY_HOP,
    b"te": HOP_BY_HOP,
    b"trailer": HOP_BY_HOP,
    b"upgrade": UPGRADE,
    b"proxy-connection": HOP_BY_HOP,
    b"proxy-authorization": HOP_BY_HOP,
    b"proxy-authenticate": HOP_BY_HOP,
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"x-forwarded-for": FORWARDED_FOR,
    b"x-forwarded-proto": FORWARDED_REPLACED,
    b"x-forwarded-host": FORWARDED_REPLACED,
    b"x-request-id": REQUEST_ID,
}

_RESPONSE_KINDS: Final[dict[bytes, int]] = {
    b"connection": CONNECTION,
    b"keep-alive": HOP_BY_HOP,
    b"te": HOP_BY_HOP,
    b"trailer": HOP_BY_HOP,
    b"upgrade": UPGRADE,
    b"proxy-connection": HOP_BY_HOP,
    b"proxy-authenticate": HOP_BY_HOP,
    b"proxy-authorization": HOP_BY_HOP,
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"x-request-id": REQUEST_ID,
}


def _with_usual_spellings(kinds: dict[bytes, int]) -> dict[bytes, int]:
    table = dict(kinds)
    for name, kind in kinds.items():
        table[b"-".join(part.capitalize() for part in name.split(b"-"))] = kind
    table[b"TE"] = table[b"te"]
    table[b"X-Request-ID"] = table[b"x-request-id"]
    return table


REQUEST_HEADER_KINDS: Final = _with_usual_spellings(_REQUEST_KINDS)
RESPONSE_HEADER_KINDS: Final = _with_usual_spellings(_RESPONSE_KINDS)

#: Names this long or longer are never one the proxy acts on.
PREFILTER_LENGTH: Final = 32


def _prefilter(kinds: dict[bytes, int]) -> bytes:
    """A byte per (name length, first byte): 1 where a name in ``kinds`` has that
    length and first letter, in either case."""
    table = bytearray(PREFILTER_LENGTH << 7)
    for name in kinds:
        assert 0 < len(name) < PREFILTER_LENGTH and name.isascii()
        for first in (name[:1].lower(), name[:1].upper()):
            table[len(name) << 7 | first[0]] = 1
    return bytes(table)


REQUEST_PREFILTER: Final = _prefilter(_REQUEST_KINDS)
RESPONSE_PREFILTER: Final = _prefilter(_RESPONSE_KINDS)


def header_kind(name: bytes, kinds: dict[bytes, int], prefilter: bytes) -> int:
    """What the proxy does with a header called ``name``, whatever its case: its kind
    in ``kinds`` (``REQUEST_HEADER_KINDS`` or ``RESPONSE_HEADER_KINDS``), else ORDINARY.

    Most headers are ordinary, and their length and first letter show it (``prefilter``,
    the matching ``*_PREFILTER``): only a name that could be one of ``kinds`` is hashed,
    and lowercased when it is not in a usual spelling. A first byte above 127 is never
    a listed name's; masked, it may cost a lookup, never a wrong answer.
    """
    size = len(name)
    if size >= PREFILTER_LENGTH or (size and not prefilter[size << 7 | (name[0] & 0x7F)]):
        return ORDINARY
    kind = kinds.get(name)
    if kind is None:
        kind = kinds.get(name.lower(), ORDINARY)
    return kind


#: 1 at each byte a Host may hold: not a space, path, userinfo, query or fragment
#: delimiter (RFC 9110 7.2: uri-host [":" port]).
_HOST_BYTES: Final = bytes(0 if byte in b" \t/\\@?#" else 1 for byte in range(256))


def valid_host(host: bytes) -> bool:
    """No byte a Host may not hold (see _HOST_BYTES). A byte loop: compiled, it costs
    a tenth of a generic call to ``bytes.translate``."""
    i: i64 = 0
    end: i64 = len(host)
    while i < end:
        if not _HOST_BYTES[host[i]]:
            return False
        i += 1
    return True


# Connection options that name no header (RFC 9110 section 7.6.1).
CONNECTION_OPTIONS_WITHOUT_HEADER: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Connection header values that need no parsing.
PLAIN_CONNECTION_VALUES: Final = frozenset(
    {b"close", b"keep-alive", b"Keep-Alive", b"Close", b"upgrade", b"Upgrade"}
)

REASONS: Final[dict[int, bytes]] = {
    308: b"Permanent Redirect",
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


# Fields a Connection header may not remove: the balancer needs them end to end.
PROTECTED_FROM_CONNECTION: Final = frozenset({b"host", b"x-request-id"})


def append_field(parts: list[bytes], name: bytes, value: bytes) -> None:
    """Add ``name: value`` and its CRLF to a head kept flat as [name, b": ", value, CRLF,
    ...]: four appends, where ``parts += (...)`` would build and drop a tuple."""
    parts.append(name)
    parts.append(b": ")
    parts.append(value)
    parts.append(b"\r\n")


def connection_named_headers(value: bytes) -> list[bytes]:
    """The header names a Connection header lists besides its plain options."""
    names = []
    for token in value.split(b","):
        token = token.strip().lower()
        if (
            token
            and token not in CONNECTION_OPTIONS_WITHOUT_HEADER
            and token not in PROTECTED_FROM_CONNECTION
        ):
            names.append(token)
    return names


def drop_named_headers(parts: list[bytes], names: list[bytes]) -> list[bytes]:
    """Remove headers from a flat ``[name, b": ", value, b"\\r\\n", ...]`` list."""
    kept: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in names:
            kept += parts[i : i + 4]
    return kept


def error_body(status: int, reason_text: str) -> bytes:
    """The body of an answer from the balancer itself (HTTP/1.1 and HTTP/2 alike)."""
    return f"{status} {REASONS.get(status, b'').decode()}: {reason_text}\n".encode()


def error_response(
    status: int,
    reason_text: str,
    *,
    close: bool,
    request_id: bytes | None = None,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A small plain-text answer from the balancer itself, naming why."""
    body = error_body(status, reason_text)
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Cache-Control: no-store\r\n",
    ]
    if request_id is not None:
        lines.append(b"X-Request-Id: " + request_id + b"\r\n")
    for name, value in extra_headers:
        lines.append(name + b": " + value + b"\r\n")
    lines.append(b"Connection: close\r\n\r\n" if close else b"\r\n")
    lines.append(body)
    return b"".join(lines)


# -- checks where llhttp is more lenient than the policy (docs/http-policy.md) ----------

CR: Final = 13
LF: Final = 10
#: A chunk-size line (size and extensions) or a trailer line longer than this is refused.
MAX_CHUNK_LINE: Final = 4096
#: Spaces in a request line: one after the method, one after the target.
REQUEST_LINE_SPACES: Final = 2
#: Enough of a request line to read its method back (the longest llhttp knows has 11 bytes).
METHOD_PREFIX: Final = 32

_TOKEN_BYTES: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# Trailing whitespace of a Transfer-Encoding field: llhttp takes "chunked<HTAB>" for
# another coding, while RFC 9110 5.5 says the whitespace is not part of the value.
_TRANSFER_ENCODING_TRAILING_WS: Final = re.compile(
    rb"(?i)((?:^|\n)transfer-encoding:[^\r\n]*?)[ \t]+(?=\r\n)"
)
# Control characters a reason phrase may not hold (RFC 9112 4: HTAB, SP, VCHAR, obs-text).
_REASON_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def end_of_blank_line(tail: bytes, data: bytes, pos: int) -> int:
    """Where the first CRLFCRLF from ``data[pos]`` on ends (the offset after it), one
    begun in ``tail`` included (the last bytes read before, at most 3); -1: none."""
    if tail:
        found = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
        if found >= 0:
            return pos + found + 4 - len(tail)
    found = data.find(b"\r\n\r\n", pos)
    return found + 4 if found >= 0 else -1


def last_three(tail: bytes, data: bytes, pos: int, stop: int) -> bytes:
    """The last 3 bytes of ``tail`` followed by ``data[pos:stop]`` (the next tail)."""
    piece = data[max(pos, stop - 3) : stop]
    return piece if stop - pos >= 3 else (tail + piece)[-3:]


def skip_empty_lines(data: bytes, pos: int, pending_cr: bool) -> tuple[int, bool]:
    """Skip the empty lines (CRLF) that may come before a message (RFC 9112 2.2).

    llhttp also skips a lone CR or LF there; the policy refuses them. Returns the
    offset of the message's first byte (``len(data)`` if only empty lines came)
    and whether a CR at the very end still waits for its LF; the offset is -1
    when a lone CR or LF was found.
    """
    end = len(data)
    if pending_cr:
        if data[pos] != LF:
            return -1, False
        pos += 1
    while pos < end:
        byte = data[pos]
        if byte == CR:
            if pos + 1 == end:
                return end, True
            if data[pos + 1] != LF:
                return -1, False
            pos += 2
        elif byte == LF:
            return -1, False
        else:
            break
    return pos, False


def unknown_method_status(line_start: bytes) -> int:
    """The answer to a method llhttp refused: 501 for a well-formed method it does not
    know (``FROB``, ``get``: methods are case-sensitive, RFC 9110 9.1), 400 otherwise."""
    method = line_start.split(b" ", 1)[0]
    return 501 if method and _TOKEN_BYTES.issuperset(method) else 400


def normalize_transfer_encoding(head: bytes) -> bytes:
    """``head`` with the trailing whitespace of its Transfer-Encoding fields removed."""
    return _TRANSFER_ENCODING_TRAILING_WS.sub(rb"\1", head)


def reason_is_valid(reason: bytes) -> bool:
    # Most answers say "OK": no regex for them.
    return reason == b"OK" or _REASON_CONTROL.search(reason) is None
