"""Session persistence (issue 6): not built yet; pools balance every request."""

from __future__ import annotations

from maitred.config import Pool
from maitred.proxy.routing import Affinity


def build_affinity(pool_name: str, pool: Pool, *, secret: bytes, https: bool) -> Affinity | None:
    """The pool's Affinity from its ``sticky`` settings, or None without them."""
    return None
