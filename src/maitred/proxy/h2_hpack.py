"""A stateless HPACK encoder for answer headers, cached per field.

The ``hpack`` library's encoder indexes every field in the dynamic table, which
means a linear table search and a pure-Python Huffman pass per field and
answer. This one never inserts into the dynamic table (as HAProxy's encoder
does): a field is a static-table index, or a literal "without indexing" naming
a static-table name when there is one. Then a field's encoding depends on
nothing but the field, so it is computed once and looked up afterwards; an
answer's header block costs a dictionary lookup per field. The price is a few
bytes per answer on the wire (``server: nginx`` spelled out instead of one
index byte), far below a TLS record's overhead.

Credentials (``authorization``, ``cookie``, ``set-cookie``...) are sent "never
indexed" (RFC 7541 section 7.1.3) so that intermediaries do not index them
either, and they are not kept in the cache.

The decoder (the client) may lower SETTINGS_HEADER_TABLE_SIZE at any time; some
(nghttp2) then insist on a dynamic table size update at the start of the next
block. The table here is always empty, so after any change of the setting the
next block starts with an update to size 0, which is within every limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

__all__ = ["StatelessEncoder"]

#: Fields whose values are secrets: never indexed anywhere, never cached.
SENSITIVE: Final = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"proxy-authenticate"}
)
#: Cached encodings kept at most (answers vary in date, etag, content-length).
CACHE_LIMIT: Final = 4096

_STATIC_FIELDS: Final[dict[tuple[bytes, bytes], int]] = {}
_STATIC_NAMES: Final[dict[bytes, int]] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode
#: A dynamic table size update to 0 (pattern 001, 5-bit prefix).
TABLE_SIZE_ZERO: Final = b"\x20"


def encode_integer(value: int, prefix_bits: int, first_byte: int) -> bytes:
    """RFC 7541 section 5.1: ``value`` on a ``prefix_bits`` prefix, ORed into
    ``first_byte``'s pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string(data: bytes) -> bytes:
    """RFC 7541 section 5.2: Huffman-coded when that is shorter."""
    coded = _huffman(data)
    if len(coded) < len(data):
        return encode_integer(len(coded), 7, 0x80) + coded
    return encode_integer(len(data), 7, 0x00) + data


def encode_field(name: bytes, value: bytes) -> bytes:
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        return encode_integer(index, 7, 0x80)  # indexed field
    # Literal without indexing (0000) or never indexed (0001), 4-bit name index.
    pattern = 0x10 if name in SENSITIVE else 0x00
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        head = encode_integer(name_index, 4, pattern)
    else:
        head = bytes((pattern,)) + encode_string(name)
    return head + encode_string(value)


_cache: dict[tuple[bytes, bytes], bytes] = {}


class StatelessEncoder:
    """Drop-in for ``h2.connection.H2Connection.encoder``: h2 only calls
    ``encode`` and sets ``header_table_size``."""

    __slots__ = ("_size_update_due", "_table_size")

    def __init__(self) -> None:
        self._size_update_due = False
        self._table_size = 4096

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._table_size = value
        self._size_update_due = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        cache = _cache
        parts: list[bytes] = []
        if self._size_update_due:
            self._size_update_due = False
            parts.append(TABLE_SIZE_ZERO)
        for field in headers:
            encoded = cache.get(field)
            if encoded is None:
                name, value = field
                encoded = encode_field(name, value)
                if name not in SENSITIVE:
                    if len(cache) >= CACHE_LIMIT:
                        cache.clear()
                    cache[(name, value)] = encoded
            parts.append(encoded)
        return b"".join(parts)
