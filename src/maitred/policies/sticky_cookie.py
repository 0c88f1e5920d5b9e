"""The sticky-session cookie: an opaque, signed, expiring name for one server.

Sans-I/O: no clock, no sockets. ``now`` is wall-clock seconds (``time.time()``),
passed in by the caller, because the expiry travels inside the cookie and must
mean the same on every balancer instance and after a restart.

Layout of a cookie value, before unpadded base64url (29 bytes, 39 characters)::

    version (1) | expires_at, unix seconds, big-endian (4) | server token (8) | tag (16)

- The *server token* is ``HMAC-SHA256(token_key, server_key)`` truncated to 8
  bytes. Without the secret nobody can tell which server a cookie names, nor
  compute the token of a server they know the address of.
- The *tag* is ``HMAC-SHA256(tag_key, version | expires_at | token)`` truncated
  to 16 bytes (128 bits): a client cannot forge a cookie, extend its expiry or
  point it at another server.
- Both keys are derived from the secret and a *scope* (the pool's name), so a
  cookie minted for one pool is garbage to another pool sharing the secret.

There is no server-side table: any instance holding the secret decodes a cookie.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
from hashlib import sha256
from typing import NamedTuple

VERSION = 1
TOKEN_SIZE = 8
TAG_SIZE = 16
_EXPIRY_SIZE = 4
_PAYLOAD_SIZE = 1 + _EXPIRY_SIZE + TOKEN_SIZE
_RAW_SIZE = _PAYLOAD_SIZE + TAG_SIZE
#: Length of every cookie value this codec produces (unpadded base64url).
ENCODED_LENGTH = math.ceil(_RAW_SIZE * 4 / 3)
_PADDING = b"=" * (-ENCODED_LENGTH % 4)
_MAX_EXPIRY = (1 << (8 * _EXPIRY_SIZE)) - 1
_UNUSED_BITS = ENCODED_LENGTH * 6 - _RAW_SIZE * 8
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: Characters (as byte values) that may end a value: their unused low bits are zero.
_CANONICAL_LAST = frozenset(_ALPHABET[:: 1 << _UNUSED_BITS])


class StickyCookie(NamedTuple):
    """What a valid cookie says: which server (by token) and until when."""

    token: bytes
    expires_at: int


class StickyCookieCodec:
    """Encodes and checks the cookies of one scope (one pool) under one secret."""

    __slots__ = ("_token_key", "_tag_key")

    def __init__(self, secret: bytes, scope: str = "") -> None:
        if not secret:
            raise ValueError("the sticky-session secret must not be empty")
        scope_bytes = scope.encode("utf-8")
        # Separate keys for separate jobs: a token can never double as a tag.
        self._token_key = _derive(secret, b"maitred sticky server token\x00" + scope_bytes)
        self._tag_key = _derive(secret, b"maitred sticky cookie tag\x00" + scope_bytes)

    def server_token(self, server_key: str) -> bytes:
        """The opaque token naming the server ``server_key`` (e.g. its address)."""
        digest = hmac.digest(self._token_key, server_key.encode("utf-8"), "sha256")
        return digest[:TOKEN_SIZE]

    def encode(self, token: bytes, expires_at: float) -> str:
        """A cookie value naming ``token`` and valid until ``expires_at`` (unix seconds)."""
        if len(token) != TOKEN_SIZE:
            raise ValueError(f"a server token is {TOKEN_SIZE} bytes, not {len(token)}")
        expiry = min(max(math.ceil(expires_at), 0), _MAX_EXPIRY)
        payload = bytes((VERSION,)) + expiry.to_bytes(_EXPIRY_SIZE, "big") + token
        raw = payload + self._tag(payload)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def decode(self, value: str | bytes, now: float) -> StickyCookie | None:
        """The cookie's server token and expiry; None when forged, expired or garbage.

        Never raises, whatever ``value`` holds.
        """
        if isinstance(value, str):
            try:
                value = value.encode("ascii")
            except UnicodeEncodeError:
                return None
        # Several encodings differ only in the unused low bits of the last
        # character; accept just the canonical one, so each cookie has one spelling.
        if len(value) != ENCODED_LENGTH or value[-1] not in _CANONICAL_LAST:
            return None
        try:
            raw = base64.b64decode(value + _PADDING, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _RAW_SIZE or raw[0] != VERSION:
            return None
        payload, tag = raw[:_PAYLOAD_SIZE], raw[_PAYLOAD_SIZE:]
        if not hmac.compare_digest(tag, self._tag(payload)):
            return None
        expires_at = int.from_bytes(payload[1 : 1 + _EXPIRY_SIZE], "big")
        if expires_at <= now:
            return None
        return StickyCookie(payload[1 + _EXPIRY_SIZE :], expires_at)

    def _tag(self, payload: bytes) -> bytes:
        return hmac.digest(self._tag_key, payload, "sha256")[:TAG_SIZE]


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return hmac.new(secret, purpose, sha256).digest()
