"""The health state machine of one server, sans I/O: results in, transitions out.

A server moves ``healthy -> failing -> unhealthy -> recovering -> healthy``:

- ``healthy``: every check passes. One failure makes it ``failing`` (still in
  rotation: a single lost check must not move traffic).
- ``failing``: failures so far are below ``unhealthy_threshold``; one success
  makes it ``healthy`` again, reaching the threshold makes it ``unhealthy``.
- ``unhealthy``: out of rotation. One success makes it ``recovering``.
- ``recovering``: successes so far are below ``healthy_threshold`` (still out
  of rotation); one failure makes it ``unhealthy`` again, reaching the
  threshold makes it ``healthy``.

The counters are *consecutive*: a success clears the failure streak and a
failure clears the success streak. The transitions live in ``TRANSITIONS`` as
data; ``HealthTracker.record`` only looks them up, so the table is the whole
behaviour and the tests can walk it entry by entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

__all__ = [
    "IN_ROTATION",
    "TRANSITIONS",
    "HealthState",
    "HealthTracker",
    "Rule",
    "Transition",
]


class HealthState(StrEnum):
    HEALTHY = "healthy"
    FAILING = "failing"
    UNHEALTHY = "unhealthy"
    RECOVERING = "recovering"


@dataclass(frozen=True, slots=True)
class Rule:
    """Where one result leads from one state.

    A success extends the success streak (threshold: ``healthy_threshold``), a
    failure the failure streak (``unhealthy_threshold``). The server goes to
    ``reached`` when that streak has reached its threshold, else to ``below``.
    """

    below: HealthState
    reached: HealthState


_HEALTHY, _FAILING = HealthState.HEALTHY, HealthState.FAILING
_UNHEALTHY, _RECOVERING = HealthState.UNHEALTHY, HealthState.RECOVERING

#: ``(state, check passed) -> Rule``: the complete behaviour of the machine.
TRANSITIONS: Mapping[tuple[HealthState, bool], Rule] = MappingProxyType(
    {
        (_HEALTHY, True): Rule(below=_HEALTHY, reached=_HEALTHY),
        (_HEALTHY, False): Rule(below=_FAILING, reached=_UNHEALTHY),
        (_FAILING, True): Rule(below=_HEALTHY, reached=_HEALTHY),
        (_FAILING, False): Rule(below=_FAILING, reached=_UNHEALTHY),
        (_UNHEALTHY, True): Rule(below=_RECOVERING, reached=_HEALTHY),
        (_UNHEALTHY, False): Rule(below=_UNHEALTHY, reached=_UNHEALTHY),
        (_RECOVERING, True): Rule(below=_RECOVERING, reached=_HEALTHY),
        (_RECOVERING, False): Rule(below=_UNHEALTHY, reached=_UNHEALTHY),
    }
)

#: States in which the server receives traffic (a failing server still does).
IN_ROTATION: frozenset[HealthState] = frozenset({_HEALTHY, _FAILING})

#: States a tracker may start in (the others need a streak to be meaningful).
_INITIAL_STATES = frozenset({_HEALTHY, _UNHEALTHY})


@dataclass(frozen=True, slots=True)
class Transition:
    old: HealthState
    new: HealthState


class HealthTracker:
    """Turns one server's check results into state transitions."""

    __slots__ = ("healthy_threshold", "unhealthy_threshold", "state", "successes", "failures")

    def __init__(
        self,
        healthy_threshold: int,
        unhealthy_threshold: int,
        initial: HealthState = HealthState.HEALTHY,
    ) -> None:
        if initial not in _INITIAL_STATES:
            raise ValueError(f"a tracker starts healthy or unhealthy, not {initial}")
        self.healthy_threshold = 1
        self.unhealthy_threshold = 1
        self.set_thresholds(healthy_threshold, unhealthy_threshold)
        self.state = initial
        #: Consecutive passed checks (0 after any failure).
        self.successes = 0
        #: Consecutive failed checks (0 after any success).
        self.failures = 0

    def set_thresholds(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        """Change the thresholds (on reload) keeping the state; they apply from the next result."""
        if healthy_threshold < 1 or unhealthy_threshold < 1:
            raise ValueError("thresholds must be >= 1")
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold

    @property
    def in_rotation(self) -> bool:
        return self.state in IN_ROTATION

    @property
    def streak(self) -> int:
        """The length of the current run of equal results (0 before any result)."""
        return self.successes or self.failures

    def record(self, success: bool) -> Transition | None:
        """Take one check result; return the transition when the state changed."""
        rule = TRANSITIONS[(self.state, success)]
        if success:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        if success:
            reached = self.successes >= self.healthy_threshold
        else:
            reached = self.failures >= self.unhealthy_threshold
        new = rule.reached if reached else rule.below
        if new is self.state:
            return None
        old, self.state = self.state, new
        return Transition(old, new)

    def __repr__(self) -> str:
        return (
            f"HealthTracker({self.state}, successes={self.successes}/{self.healthy_threshold}, "
            f"failures={self.failures}/{self.unhealthy_threshold})"
        )
