"""What an ``Exchange`` needs from the side that asked for it.

An HTTP/1.1 ``ClientConnection`` is one such side; an HTTP/2 stream is another.
Routing, policies, balancing, retries and the upstream relay only talk to what the
two have in common (the loop, the listener slot, the client's address, the
transport, pausing, answering errors), so a request goes through the same code
whatever its framing.

The upstream relay writes the answer, framed as HTTP/1.1, to ``transport``: an
HTTP/1.1 client gets those bytes as they are, an HTTP/2 stream re-frames them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from maitred.proxy.h2_stream import H2Stream
    from maitred.proxy.http1 import ClientConnection

# A union of the two classes rather than a typing.Protocol: mypyc reads the
# attributes of a union of its own classes from their structs, where a Protocol
# costs a generic attribute lookup (several per request on the hot path).
ExchangeClient: TypeAlias = "ClientConnection | H2Stream"
