"""The answer headers of a rate limit (draft-ietf-httpapi-ratelimit-headers).

``RateLimit-Policy: "listener";q=100;w=1`` states a limit: ``q`` requests per
``w`` seconds. A GCRA limit is a rate and a burst; it is stated as the
sustained rate over the time the burst takes to refill, and at least one
second (``w`` is a whole number of seconds): 100/s with burst 100 is
``q=100;w=1``, 1/s with burst 20 is ``q=20;w=20``, 100/s with burst 10 is
``q=100;w=1``.

``RateLimit: "listener";r=42;t=1`` gives the requests that would still be
admitted right now (``r``) and the seconds until the client's quota is whole
again (``t``). ``Retry-After`` on a 429 is whole seconds, rounded up.
"""

from __future__ import annotations

import math

from maitred.policies.gcra import NANOSECONDS, GcraRate


def policy_item(name: str, rate: GcraRate) -> bytes:
    """One member of RateLimit-Policy for the limit called ``name``."""
    window = max(1, -(-rate.capacity // NANOSECONDS))
    quota = max(1, window * NANOSECONDS // rate.interval)
    return b"%s;q=%d;w=%d" % (quoted(name), quota, window)


def ratelimit_item(name: str, remaining: int, reset_after: float) -> bytes:
    """The RateLimit value for the limit called ``name`` after a decision."""
    return b"%s;r=%d;t=%d" % (quoted(name), remaining, math.ceil(reset_after))


def retry_after(seconds: float) -> bytes:
    """Retry-After: whole seconds, rounded up, at least 1."""
    return b"%d" % max(1, math.ceil(seconds))


def quoted(text: str) -> bytes:
    """``text`` as a structured-field String: printable ASCII, with '"' and '\\' escaped."""
    cleaned = "".join(char if " " <= char <= "~" else "?" for char in text)
    escaped = cleaned.replace("\\", "\\\\").replace('"', '\\"')
    return b'"%s"' % escaped.encode("ascii")
