"""The HTTP/2 settings of an HTTP listener (``listeners[].http2``).

On a TLS listener HTTP/2 is offered by ALPN (``h2`` before ``http/1.1``) unless
``enabled: false``; on a plain listener clients may speak h2c with prior
knowledge only when ``h2c: true``. Browsers never use h2c, so it stays off unless
asked for (a load balancer or service mesh in front talking cleartext h2).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from maitred.config.scalars import PositiveDuration

__all__ = ["Http2Settings"]

#: The largest flow-control window HTTP/2 allows (RFC 9113 section 6.9.1).
MAX_WINDOW = 2**31 - 1


class Http2Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Offer ``h2`` by ALPN on a TLS listener.
    enabled: bool = True
    #: Accept cleartext HTTP/2 with prior knowledge on a plain listener.
    h2c: bool = False
    #: Streams a client may have open at once; more are refused (REFUSED_STREAM).
    max_concurrent_streams: int = Field(default=100, ge=1, le=MAX_WINDOW)
    #: Decoded size of a request's header list (names + values + 32 per field);
    #: a larger block (an HPACK bomb) closes the connection (ENHANCE_YOUR_CALM).
    max_header_list_size: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    #: Request body bytes a client may send on one stream before maitred's server
    #: side has taken them (the stream's flow-control window).
    initial_window_size: int = Field(default=262144, ge=65535, le=MAX_WINDOW)
    #: Client resets (RST_STREAM) and refused streams allowed per ``flood_window``
    #: before the connection is closed: the rapid-reset attack (CVE-2023-44487).
    max_resets: int = Field(default=200, ge=1)
    #: PING, SETTINGS, PRIORITY and empty DATA frames allowed per ``flood_window``.
    max_control_frames: int = Field(default=500, ge=1)
    flood_window: PositiveDuration = 10.0
