"""The peak-EWMA response-time estimate kept on each ``LiveServer``.

"Peak EWMA" (as in Finagle and Linkerd): a sample slower than the estimate
replaces it at once, so a server that turns slow is avoided immediately; faster
samples pull it down gradually. Between samples the estimate decays toward zero
with time constant ``DECAY_TIME``, so a server that was slow once is eventually
tried again rather than shunned forever.
"""

from __future__ import annotations

import math
from typing import Final

from maitred.balancing.base import LiveServer

#: Seconds over which an idle server's latency estimate decays by a factor e.
DECAY_TIME: Final = 10.0
#: Samples are at least this long, so that 0.0 keeps meaning "no sample yet".
MIN_LATENCY: Final = 1e-6


def record_latency(server: LiveServer, latency: float, now: float) -> None:
    """Fold one response time (seconds) into ``server.ewma``, stamped at ``now``."""
    latency = max(latency, MIN_LATENCY)
    weight = math.exp(-max(now - server.ewma_stamp, 0.0) / DECAY_TIME)
    decayed = server.ewma * weight
    if server.ewma == 0.0 or latency >= decayed:
        server.ewma = latency
    else:
        server.ewma = decayed + (latency - decayed) * (1.0 - weight)
    server.ewma_stamp = now


def expected_latency(server: LiveServer, now: float) -> float:
    """The decayed estimate for ``server`` at ``now`` in seconds (0.0: no sample yet)."""
    return server.ewma * math.exp(-max(now - server.ewma_stamp, 0.0) / DECAY_TIME)
