"""Session persistence (issue 6): keep a client on the server it had.

A pool's ``sticky`` settings choose how a request names its server:

- ``cookie``: a signed cookie set by the balancer (``sticky_by_cookie``);
- ``ip``: the client address, through a consistent-hash ring (``sticky_by_key``);
- ``header:NAME``: the value of a request header, through the same ring.

The pool's algorithm still picks the first server of a session (and every
request that names none); persistence only keeps it. The secret signing the
cookies comes from ``sticky_secret``.
"""

from __future__ import annotations

import logging
import secrets

from maitred.config import Pool
from maitred.policies.sticky_by_cookie import CookieAffinity
from maitred.policies.sticky_by_key import KeyAffinity, client_ip_key, header_key
from maitred.proxy.routing import Affinity

log = logging.getLogger("maitred.sticky")

_process_secret = b""


def build_affinity(pool_name: str, pool: Pool, *, secret: bytes, https: bool) -> Affinity | None:
    """The pool's Affinity from its ``sticky`` settings, or None without them.

    ``secret`` signs cookies unless the pool sets its own ``sticky.secret``;
    ``https`` forces the Secure attribute where ``sticky.secure`` is left unset
    (otherwise Secure follows the listener each request arrives on).
    """
    sticky = pool.sticky
    if sticky is None:
        return None
    if sticky.mode == "cookie":
        if sticky.secret is not None:
            key = sticky.secret.encode("utf-8")
        else:
            key = secret or _fallback_secret()
        return CookieAffinity(pool_name, sticky, key, https=https)
    if sticky.mode == "ip":
        return KeyAffinity(pool_name, client_ip_key, strict=sticky.strict)
    header = sticky.mode.removeprefix("header:")
    return KeyAffinity(pool_name, header_key(header), strict=sticky.strict)


def _fallback_secret() -> bytes:
    """One secret per process for callers that gave none (the supervisor always does)."""
    global _process_secret
    if not _process_secret:
        log.warning("no sticky-session secret was provided; cookies last as long as this process")
        _process_secret = secrets.token_hex(32).encode("ascii")
    return _process_secret
