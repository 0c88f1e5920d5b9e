"""The PROXY protocol (HAProxy's, versions 1 and 2): who the client really is.

Sans-I/O. ``parse`` reads a header at the start of a connection from a
balancer in front (``proxy_protocol: true`` on a listener); ``header_v1`` and
``header_v2`` build the one maitred sends first on a server connection
(``send_proxy_protocol`` on a pool). Spec: haproxy.org/download/2.6/doc/proxy-protocol.txt.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107  # the spec's bound, CRLF included
V2_HEADER_LENGTH: Final = 16
V2_MAX_PAYLOAD: Final = 1024  # far above any address block plus the usual TLVs

_FAMILY_PROTOCOLS: Final = {0x11: socket.AF_INET, 0x21: socket.AF_INET6}  # TCP over IPv4/IPv6
_ADDRESS_BLOCK: Final = {socket.AF_INET: ("!4s4sHH", 12), socket.AF_INET6: ("!16s16sHH", 36)}


class ProxyProtocolError(ValueError):
    """The connection did not start with a valid PROXY header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header announced; ``source`` is None for LOCAL/UNKNOWN (health checks)."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # bytes the header took


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None when more bytes are needed."""
    if data[:1] == V1_PREFIX[:1] and V1_PREFIX.startswith(data[:6]):
        return _parse_v1(data)
    if V2_SIGNATURE.startswith(data[:12]):
        return _parse_v2(data)
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end == -1:
        if len(data) >= V1_MAX_LENGTH or (len(data) >= 6 and data[:6] != V1_PREFIX):
            raise ProxyProtocolError("PROXY v1 header too long or malformed")
        return None
    fields = data[:end].split(b" ")
    length = end + 2
    if fields[0] != b"PROXY" or len(fields) < 2:
        raise ProxyProtocolError("malformed PROXY v1 header")
    if fields[1] == b"UNKNOWN":
        return ProxyHeader(None, None, length)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("malformed PROXY v1 header")
    family = 4 if fields[1] == b"TCP4" else 6
    try:
        source = _address(fields[2].decode(), family)
        destination = _address(fields[3].decode(), family)
        source_port, destination_port = _port(fields[4]), _port(fields[5])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyProtocolError(f"malformed PROXY v1 header: {exc}") from None
    return ProxyHeader((source, source_port), (destination, destination_port), length)


def _address(text: str, family: int) -> str:
    address = ipaddress.ip_address(text)
    if address.version != family:
        raise ValueError("address family does not match")
    return str(address)


def _port(text: bytes) -> int:
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0"):
        raise ValueError("invalid port")
    port = int(text)
    if port > 65535:
        raise ValueError("invalid port")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_HEADER_LENGTH:
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("bad PROXY v2 signature")
    version_command, family_protocol, payload_length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ProxyProtocolError("unsupported PROXY v2 version or command")
    if payload_length > V2_MAX_PAYLOAD:
        raise ProxyProtocolError("PROXY v2 header too long")
    length = V2_HEADER_LENGTH + payload_length
    if len(data) < length:
        return None
    if version_command & 0x0F == 0:  # LOCAL: the balancer's own connection
        return ProxyHeader(None, None, length)
    family = _FAMILY_PROTOCOLS.get(family_protocol)
    if family is None:
        return ProxyHeader(None, None, length)  # UNSPEC or a transport we ignore
    layout, size = _ADDRESS_BLOCK[family]
    if payload_length < size:
        raise ProxyProtocolError("PROXY v2 address block too short")
    source, destination, source_port, destination_port = struct.unpack(
        layout, data[V2_HEADER_LENGTH : V2_HEADER_LENGTH + size]
    )
    return ProxyHeader(
        (str(ipaddress.ip_address(source)), source_port),
        (str(ipaddress.ip_address(destination)), destination_port),
        length,
    )


def header_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    family = b"TCP6" if ":" in source[0] else b"TCP4"
    return b"PROXY %s %s %s %d %d\r\n" % (
        family,
        source[0].encode(),
        destination[0].encode(),
        source[1],
        destination[1],
    )


def header_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    family = socket.AF_INET6 if ":" in source[0] else socket.AF_INET
    layout, size = _ADDRESS_BLOCK[family]
    block = struct.pack(
        layout,
        socket.inet_pton(family, source[0]),
        socket.inet_pton(family, destination[0]),
        source[1],
        destination[1],
    )
    family_protocol = 0x21 if family == socket.AF_INET6 else 0x11
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family_protocol, size) + block
