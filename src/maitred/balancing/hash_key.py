"""What a hashing strategy hashes: the client address, a header or a cookie.

``hash_on`` is ``client_ip`` (the default), ``header:NAME`` or ``cookie:NAME``.
A request without that header or cookie (or with an empty one) falls back to
its client address, so it is still placed consistently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

Headers = Sequence[tuple[bytes, bytes]]
#: (client_ip, headers) -> the key to hash.
KeyFunction = Callable[[str, Headers], str]

CLIENT_IP: Final = "client_ip"


def key_function(hash_on: str | None) -> KeyFunction:
    """The key extractor for a ``hash_on`` setting; ValueError when it is not one."""
    if hash_on is None or hash_on in (CLIENT_IP, "ip"):
        return _client_ip
    kind, _, name = hash_on.partition(":")
    name = name.strip()
    if kind == "header" and name:
        return _header_key(name.lower().encode("latin-1"))
    if kind == "cookie" and name:
        return _cookie_key(name.encode("latin-1"))
    raise ValueError(f"hash_on must be client_ip, header:NAME or cookie:NAME, not {hash_on!r}")


def _client_ip(client_ip: str, headers: Headers) -> str:
    return client_ip


def _header_key(lowered_name: bytes) -> KeyFunction:
    def header_key(client_ip: str, headers: Headers) -> str:
        for name, value in headers:
            if name.lower() == lowered_name and value:
                return value.decode("latin-1")
        return client_ip

    return header_key


def _cookie_key(cookie_name: bytes) -> KeyFunction:
    def cookie_key(client_ip: str, headers: Headers) -> str:
        for name, value in headers:
            if name.lower() == b"cookie" and (found := cookie_value(value, cookie_name)):
                return found.decode("latin-1")
        return client_ip

    return cookie_key


def cookie_value(cookie_header: bytes, cookie_name: bytes) -> bytes | None:
    """The value of ``cookie_name`` in one ``Cookie:`` header (``a=1; b=2``), else None."""
    for pair in cookie_header.split(b";"):
        name, equals, value = pair.strip().partition(b"=")
        if equals and name == cookie_name:
            return value.strip().strip(b'"')
    return None
