"""Who a request comes from, and the header values a rate limit keys on.

``client_address`` believes X-Forwarded-For only when the peer is a trusted
proxy, and then only up to the first hop that is not trusted: everything left
of it was written by parties we do not trust (the client itself may have sent
any X-Forwarded-For it liked).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

FORWARDED_FOR = b"x-forwarded-for"

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

# Peers remembered per TrustedProxies (trusted or not), so a busy peer is parsed once.
_MEMO_SIZE = 4096


class TrustedProxies:
    """A set of CIDRs, asked "is this address one of our proxies?"."""

    __slots__ = ("networks", "_memo")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self.networks = tuple(networks)
        self._memo: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        known = self._memo.get(address)
        if known is None:
            parsed = parse_hop(address)
            known = parsed is not None and self.contains_address(parsed)
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[address] = known
        return known

    def contains_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def client_address(
    peer_ip: str, headers: Iterable[tuple[bytes, bytes]], trusted: TrustedProxies
) -> str:
    """The client's address: ``peer_ip``, or from X-Forwarded-For when the peer is trusted.

    Walks the X-Forwarded-For hops (all such headers, in order) from the right,
    skipping trusted proxies; the first untrusted hop is the client. When every
    hop is trusted the leftmost one is. A hop that is not an address stops the
    walk at the last address that was verified (never at a forged value).
    """
    if not trusted or peer_ip not in trusted:
        return peer_ip
    hops = [
        hop.strip()
        for name, value in headers
        if name.lower() == FORWARDED_FOR
        for hop in value.split(b",")
        if hop.strip()
    ]
    verified = peer_ip
    for hop in reversed(hops):
        address = parse_hop(hop.decode("latin-1"))
        if address is None:
            return verified
        verified = str(address)
        if not trusted.contains_address(address):
            return verified
    return verified


def parse_hop(text: str) -> IPAddress | None:
    """An address from an X-Forwarded-For hop: ``1.2.3.4``, ``1.2.3.4:5``, ``[::1]:5``, ``::1``.

    IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 peers)
    become plain IPv4 addresses, so one client has one key.
    """
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def header_values(head: bytes, name: bytes) -> list[bytes]:
    """The values of header ``name`` (lowercase) in a request head, in order.

    Reads the head the exchange will send (rather than the connection's parser
    state, which the next pipelined request may already have overwritten).
    """
    lowered = head.lower()
    needle = b"\r\n" + name + b":"
    values = []
    position = lowered.find(needle)
    while position != -1:
        start = position + len(needle)
        end = head.find(b"\r\n", start)
        values.append(head[start:end].strip())
        position = lowered.find(needle, end)
    return values
