"""Rate limiting (issue 8): not built yet; every request is admitted."""

from __future__ import annotations

from maitred.config import Listener, Route
from maitred.proxy.routing import RequestPolicy


def build_policies(listener: Listener, route: Route | None) -> tuple[RequestPolicy, ...]:
    """The policies a request of ``listener`` (matched by ``route``, None for the
    listener's default) passes before going to its pool, in order."""
    return ()
