"""The health state of every actively checked server, fed by the checker's results.

``HealthMonitor.record`` has the checker's ``on_result`` signature, so the two
plug together directly::

    monitor = HealthMonitor()
    checker = ActiveChecker(monitor.record, wants_fast_checks=monitor.needs_fast_checks)
    monitor.set_targets(targets)
    checker.set_targets(targets)

Every state change is logged on ``maitred.health``, counted in ``transitions``
and told to each ``on_transition`` callback as ``(server_id, old, new)``.
Servers the monitor does not track (no health check) count as in rotation.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from maitred.health.checker import CheckTarget
from maitred.health.spec import CheckSpec
from maitred.health.state import HealthState, HealthTracker, Transition

__all__ = ["HealthMonitor", "TransitionCallback", "describe_transition"]

log = logging.getLogger("maitred.health")

TransitionCallback = Callable[[str, HealthState, HealthState], None]

_LOG_LEVELS: Mapping[HealthState, int] = {
    HealthState.HEALTHY: logging.INFO,
    HealthState.FAILING: logging.INFO,
    HealthState.UNHEALTHY: logging.WARNING,
    HealthState.RECOVERING: logging.INFO,
}


def describe_transition(server_id: str, tracker: HealthTracker, detail: str) -> str:
    """``server X is now unhealthy (3 consecutive failures: connect refused)``."""
    if tracker.failures:
        count, noun = tracker.failures, "failure"
    else:
        count, noun = tracker.successes, "success"
    plural = "" if count == 1 else ("es" if noun == "success" else "s")
    reason = f"{count} consecutive {noun}{plural}"
    if detail:
        reason += f": {detail}"
    return f"server {server_id} is now {tracker.state} ({reason})"


class HealthMonitor:
    def __init__(self) -> None:
        self._trackers: dict[str, HealthTracker] = {}
        self._last_detail: dict[str, str] = {}
        #: Called with ``(server_id, old, new)`` after every transition.
        self.on_transition: list[TransitionCallback] = []
        #: ``(server_id, new_state) -> how many times the server entered that state``.
        self.transitions: Counter[tuple[str, HealthState]] = Counter()

    # -- membership ----------------------------------------------------------------

    def set_targets(self, targets: Iterable[CheckTarget]) -> None:
        """Track exactly the servers of ``targets`` (see ``set_servers``)."""
        self.set_servers({target.server_id: target.check for target in targets})

    def set_servers(self, specs: Mapping[str, CheckSpec]) -> None:
        """Track exactly these servers; survivors keep their state and take the new thresholds.

        A new server starts in its spec's ``initial_state`` (no transition is
        reported for that); a removed one is forgotten, counters included.
        """
        for server_id in list(self._trackers):
            if server_id not in specs:
                del self._trackers[server_id]
                self._last_detail.pop(server_id, None)
                for key in [key for key in self.transitions if key[0] == server_id]:
                    del self.transitions[key]
        for server_id, spec in specs.items():
            tracker = self._trackers.get(server_id)
            if tracker is None:
                self._trackers[server_id] = HealthTracker(
                    spec.healthy_threshold, spec.unhealthy_threshold, spec.initial_state
                )
            else:
                tracker.set_thresholds(spec.healthy_threshold, spec.unhealthy_threshold)

    # -- results -------------------------------------------------------------------

    def record(self, server_id: str, ok: bool, detail: str = "") -> Transition | None:
        """Take one check result; results for untracked servers are ignored."""
        tracker = self._trackers.get(server_id)
        if tracker is None:
            return None
        self._last_detail[server_id] = detail
        transition = tracker.record(ok)
        if transition is None:
            return None
        self.transitions[(server_id, transition.new)] += 1
        log.log(_LOG_LEVELS[transition.new], "%s", describe_transition(server_id, tracker, detail))
        for callback in list(self.on_transition):
            try:
                callback(server_id, transition.old, transition.new)
            except Exception:
                log.exception("health transition callback failed for server %s", server_id)
        return transition

    # -- inspection ----------------------------------------------------------------

    def state(self, server_id: str) -> HealthState | None:
        """The server's state, or None when it is not actively checked."""
        tracker = self._trackers.get(server_id)
        return tracker.state if tracker is not None else None

    def states(self) -> dict[str, HealthState]:
        return {server_id: tracker.state for server_id, tracker in self._trackers.items()}

    def in_rotation(self, server_id: str) -> bool:
        """Whether health allows traffic to the server (unchecked servers: always)."""
        tracker = self._trackers.get(server_id)
        return tracker is None or tracker.in_rotation

    def needs_fast_checks(self, server_id: str) -> bool:
        """True while the server is anything but plainly healthy (for ``ActiveChecker``)."""
        tracker = self._trackers.get(server_id)
        return tracker is not None and tracker.state is not HealthState.HEALTHY

    def last_detail(self, server_id: str) -> str | None:
        """What the latest check of the server said ("status 200", "connect refused", ...)."""
        return self._last_detail.get(server_id)

    def tracker(self, server_id: str) -> HealthTracker | None:
        return self._trackers.get(server_id)
