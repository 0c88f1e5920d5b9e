"""The client connection of a TLS listener: one TLS record per relayed batch.

The relay hands the client side a list of pieces per read event (head, body,
chunk framing...). A plain TCP transport sends them with one ``writev``; a TLS
transport (uvloop's and asyncio's alike) encrypts each piece as a record of its
own, so a small answer would cost two or more records, each with its own
encryption call and 22 bytes of framing. Joining the pieces first makes it one:
the relay does so for a client side with ``joins_writes``.
"""

from __future__ import annotations

import asyncio

from maitred.proxy.http1 import ClientConnection
from maitred.proxy.http2 import switch_to_http2


class TlsClientConnection(ClientConnection):
    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # With asyncio's TLS, the protocol hears of a connection once its handshake is done.
        self.slot.tls_handshakes += 1
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            switch_to_http2(transport, self.plane, self.slot, b"")
            return
        super().connection_made(transport)

    joins_writes = True
