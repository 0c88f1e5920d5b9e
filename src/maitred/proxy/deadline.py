"""A lazily re-armed timer: one timer handle per connection, not one per request.

Moving a deadline later is a float assignment; the handle only notices when it
fires and re-arms itself. Moving it earlier re-schedules at once. For an
inactivity timeout, the owner sets ``touched`` on activity (an attribute write,
no call): when the deadline passes with ``touched`` set, it moves one period on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_loop", "_on_expiry", "_handle", "_handle_at", "at", "period", "touched")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_expiry: Callable[[], None]) -> None:
        self._loop = loop
        self._on_expiry = on_expiry
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = 0.0
        self.at: float | None = None
        self.period = 0.0
        self.touched = False

    def arm(self, delay: float) -> None:
        self.arm_at(self._loop.time() + delay, delay)

    def arm_at(self, at: float, period: float) -> None:
        self.at = at
        self.period = period
        self.touched = False
        handle = self._handle
        if handle is None or at < self._handle_at:
            if handle is not None:
                handle.cancel()
            self._handle_at = at
            self._handle = self._loop.call_at(at, self._fire)

    def disarm(self) -> None:
        self.at = None

    def cancel(self) -> None:
        self.at = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        at = self.at
        if at is None:
            return
        now = self._loop.time()
        if self.touched and now >= at:
            self.touched = False
            at = self.at = now + self.period
        if now < at:
            self._handle_at = at
            self._handle = self._loop.call_at(at, self._fire)
            return
        self.at = None
        self._on_expiry()
