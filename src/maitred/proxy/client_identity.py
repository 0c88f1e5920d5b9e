"""What a client connection (HTTP/1.1 or HTTP/2) tells servers about its client.

With ``send_proxy_protocol`` on a pool, a server connection announces one client
(a PROXY header first), so it may only serve that client again: such connections
are kept by the client connection, not in the pool, and closed with it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Final

from maitred.proxy import proxy_protocol

if TYPE_CHECKING:
    from maitred.proxy.upstream import ServerConnections, UpstreamConnection


class ClientIdentity:
    """Mixed into the client-side protocols, which hold these attributes in their own
    slots (an empty ``__slots__`` here keeps them free of a ``__dict__``; mypy cannot
    see the subclasses' slots, hence the ignores)."""

    __slots__ = ()

    transport: asyncio.Transport | None
    client_ip: str
    #: ``client_ip`` encoded (X-Forwarded-For).
    client_ip_bytes: bytes
    #: 0 until known from a PROXY header; then the socket's peer port is used.
    client_port: int
    local_address: tuple[str, int]
    #: Idle server connections that announced this client (send_proxy_protocol).
    private_upstreams: list[UpstreamConnection] | None

    def identify_peer(self, transport: asyncio.BaseTransport) -> None:
        """The client's address from the socket, interned and with its bytes shared by
        the connections from one address. ``client_port`` stays 0 (read from the
        socket when a PROXY header needs it): a port is an int object of its own, and
        most connections never need it."""
        peer = transport.get_extra_info("peername")
        self.client_ip = sys.intern(peer[0]) if peer else ""  # type: ignore[misc]
        self.client_ip_bytes = address_bytes(self.client_ip)  # type: ignore[misc]

    def proxy_header(self, version: str) -> bytes:
        """The PROXY protocol header announcing this client to a server."""
        if not self.local_address[0] and self.transport is not None:
            local = self.transport.get_extra_info("sockname")
            self.local_address = (local[0], local[1]) if local else ("0.0.0.0", 0)  # type: ignore[misc]
        port = self.client_port
        if not port and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            port = peer[1] if peer else 0
        build = proxy_protocol.header_v2 if version == "v2" else proxy_protocol.header_v1
        return build((self.client_ip, port), self.local_address)

    def take_private(self, servers: ServerConnections) -> UpstreamConnection | None:
        """One of this client's own idle connections to ``servers``, if alive."""
        mine = self.private_upstreams
        if not mine:
            return None
        for conn in [c for c in mine if c.servers is servers]:
            mine.remove(conn)
            if conn.transport is not None:
                return conn
        return None

    def keep_private(self, conn: UpstreamConnection) -> None:
        if self.transport is None:
            conn.close()
            return
        conn.exchange = None
        conn.resume_reading()
        if self.private_upstreams is None:
            self.private_upstreams = []  # type: ignore[misc]
        self.private_upstreams.append(conn)


#: Per client address: its bytes and its X-Forwarded-For field, shared by the
#: connections from one address; cleared when it grows past _ADDRESS_CACHE_SIZE
#: (many distinct clients).
_ADDRESSES: Final[dict[str, tuple[bytes, bytes]]] = {}
_ADDRESS_CACHE_SIZE: Final = 4096


def _address(ip: str) -> tuple[bytes, bytes]:
    entry = _ADDRESSES.get(ip)
    if entry is None:
        if len(_ADDRESSES) >= _ADDRESS_CACHE_SIZE:
            _ADDRESSES.clear()
        encoded = ip.encode()
        entry = _ADDRESSES[ip] = (encoded, b"X-Forwarded-For: " + encoded)
    return entry


def address_bytes(ip: str) -> bytes:
    return _address(ip)[0]


def forwarded_for_field(ip: str) -> bytes:
    """``X-Forwarded-For: `` and the address: the field as a client connection adds it."""
    return _address(ip)[1]
