"""The control channel between the supervisor and a worker process.

One socket pair per worker; each message is one line of JSON. The supervisor
sends ``config`` (the whole effective configuration, with what a worker needs
besides it), ``available`` (server availability decided on the control side)
and ``stop``; a worker sends ``counters`` once a second and ``outcome`` for
failures on real traffic (passive health). Nothing here is on the request path.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

Message = dict[str, Any]

#: Largest message accepted (a configuration with thousands of servers fits).
MAX_MESSAGE = 64 * 1024 * 1024


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


async def receive(reader: asyncio.StreamReader) -> Message | None:
    """The next message, or None when the other side closed the channel."""
    try:
        line = await reader.readline()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        return None
    if not line:
        return None
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("control message must be a JSON object")
    return message
