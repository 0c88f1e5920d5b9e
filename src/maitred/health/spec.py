"""What one active check does: the settings of a pool's ``health_check``, checked once.

``CheckSpec`` is this package's own frozen copy of the settings, so the checker
does not depend on which keys the configuration model has grown yet:
``CheckSpec.from_config`` reads whatever a ``HealthCheck`` offers and fills in
the defaults for the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from maitred.health.state import HealthState

__all__ = [
    "DEFAULT_EXPECT_STATUS",
    "MIN_FAST_INTERVAL",
    "CheckSpec",
    "CheckType",
    "StatusRange",
    "parse_expect_status",
]

CheckType = Literal["http", "tcp"]
#: An inclusive range of HTTP status codes.
StatusRange = tuple[int, int]

DEFAULT_EXPECT_STATUS: tuple[StatusRange, ...] = ((200, 399),)
#: The fast interval (used while a server is not plainly healthy) never goes below this.
MIN_FAST_INTERVAL = 0.1

_RANGE = re.compile(r"([1-5][0-9][0-9])\s*-\s*([1-5][0-9][0-9])")
_CLASS = re.compile(r"([1-5])xx", re.IGNORECASE)
_SINGLE = re.compile(r"[1-5][0-9][0-9]")
_STATUS_HINT = "must be a status (200), a range ('200-299'), a class ('2xx') or a list of them"


def parse_expect_status(value: object) -> tuple[StatusRange, ...]:
    """Parse ``expect_status``: ``200``, ``"200-299"``, ``"2xx"`` or a list of those.

    A list may also hold ``(low, high)`` pairs (what this function returns), so
    an already-parsed value passes through unchanged. Raises ``ValueError``.
    """
    items: Iterable[Any] = value if isinstance(value, (list, tuple)) else (value,)
    ranges = [_parse_status_item(item) for item in items]
    if not ranges:
        raise ValueError("must name at least one status")
    return tuple(ranges)


def _parse_status_item(item: object) -> StatusRange:
    if isinstance(item, bool):
        raise ValueError(_STATUS_HINT)
    if isinstance(item, int):
        return _checked_range(item, item)
    if isinstance(item, (list, tuple)) and len(item) == 2:
        low, high = item
        if isinstance(low, int) and isinstance(high, int):
            return _checked_range(low, high)
    if isinstance(item, str):
        text = item.strip()
        if _SINGLE.fullmatch(text):
            return _checked_range(int(text), int(text))
        if match := _RANGE.fullmatch(text):
            return _checked_range(int(match[1]), int(match[2]))
        if match := _CLASS.fullmatch(text):
            base = int(match[1]) * 100
            return (base, base + 99)
    raise ValueError(_STATUS_HINT)


def _checked_range(low: int, high: int) -> StatusRange:
    if not 100 <= low <= high <= 599:
        raise ValueError(f"status range {low}-{high} must lie within 100-599, low first")
    return (low, high)


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """How to check one server, and how many results move its state."""

    type: CheckType = "http"
    path: str = "/health"
    #: The Host header sent; None sends the server's own ``HOST:PORT``.
    host: str | None = None
    expect_status: tuple[StatusRange, ...] = DEFAULT_EXPECT_STATUS
    interval: float = 5.0
    timeout: float = 3.0
    #: The interval while a server is failing, unhealthy or recovering; None = derived.
    fall_interval: float | None = None
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    #: HEALTHY (like HAProxy: traffic flows at once) or UNHEALTHY (first pass it in).
    initial_state: HealthState = HealthState.HEALTHY

    def __post_init__(self) -> None:
        if self.type not in ("http", "tcp"):
            raise ValueError(f"type must be 'http' or 'tcp', not {self.type!r}")
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise ValueError("path must start with '/' and hold no spaces or line breaks")
        if self.host is not None and (not self.host or any(c in self.host for c in " \r\n")):
            raise ValueError("host must be a non-empty name without spaces or line breaks")
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be > 0")
        if self.fall_interval is not None and self.fall_interval <= 0:
            raise ValueError("fall_interval must be > 0")
        if self.healthy_threshold < 1 or self.unhealthy_threshold < 1:
            raise ValueError("thresholds must be >= 1")
        if self.initial_state not in (HealthState.HEALTHY, HealthState.UNHEALTHY):
            raise ValueError("initial_state must be healthy or unhealthy")
        parse_expect_status(self.expect_status)

    @property
    def fast_interval(self) -> float:
        """``fall_interval`` if set, else a third of ``interval`` but at least 100 ms.

        Never slower than ``interval``: hurrying must not slow a fast check down.
        """
        if self.fall_interval is not None:
            return self.fall_interval
        return min(self.interval, max(self.interval / 3, MIN_FAST_INTERVAL))

    def expects(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.expect_status)

    @classmethod
    def from_config(cls, check: object) -> CheckSpec:
        """Build from a config ``HealthCheck``; keys it does not have yet take the defaults."""
        defaults = cls()

        def read(name: str) -> Any:
            value = getattr(check, name, None)
            return getattr(defaults, name) if value is None else value

        initial = read("initial_state")
        return cls(
            type=read("type"),
            path=read("path"),
            host=getattr(check, "host", None),
            expect_status=parse_expect_status(read("expect_status")),
            interval=float(read("interval")),
            timeout=float(read("timeout")),
            fall_interval=getattr(check, "fall_interval", None),
            healthy_threshold=int(read("healthy_threshold")),
            unhealthy_threshold=int(read("unhealthy_threshold")),
            initial_state=HealthState(initial),
        )
