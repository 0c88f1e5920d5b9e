"""A lazily re-armed timer: at most one timer handle per connection, none while idle.

Moving a deadline later is a float assignment; the handle only notices when it
fires and re-arms itself. Moving it earlier re-schedules at once. For an
inactivity timeout, the owner sets ``touched`` on activity (an attribute write,
no call): when the deadline passes with ``touched`` set, it moves one period on.

A far deadline (an idle keep-alive connection waiting out its 60 s) holds no
timer handle at all: it waits in its loop's ``Sweeper``, one periodic timer that
looks at every far deadline once a tick and hands each over to a precise timer
when it comes within ``far`` seconds. A uvloop timer handle with its callback
costs about 580 bytes; a set entry costs a few dozen, which is most of what
keeps an idle client connection small. Expiry stays exact: the handover happens
at least ``far - tick`` seconds before the deadline.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, Final

#: Deadlines further than this wait in the sweeper instead of holding a timer.
FAR_SECONDS: Final = 2.0
SWEEP_TICK_SECONDS: Final = 1.0


class Sweeper:
    """One periodic timer for every far deadline of a loop."""

    __slots__ = ("_loop", "_waiting", "_handle", "tick", "far", "sweeps", "__weakref__")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        tick: float = SWEEP_TICK_SECONDS,
        far: float = FAR_SECONDS,
    ) -> None:
        # far > tick keeps the handover ahead of the deadline.
        assert far > tick > 0
        self._loop = loop
        self._waiting: set[Deadline] = set()
        self._handle: asyncio.TimerHandle | None = None
        self.tick = tick
        self.far = far
        #: Sweeps done so far (tests wait on it).
        self.sweeps = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, deadline: Deadline) -> None:
        self._waiting.add(deadline)
        if self._handle is None:
            self._handle = self._loop.call_later(self.tick, self._sweep)

    def discard(self, deadline: Deadline) -> None:
        self._waiting.discard(deadline)

    def _sweep(self) -> None:
        self.sweeps += 1
        now = self._loop.time()
        done = [deadline for deadline in self._waiting if not deadline._still_far(now)]
        self._waiting.difference_update(done)
        self._handle = self._loop.call_later(self.tick, self._sweep) if self._waiting else None


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sweeper] = (
    weakref.WeakKeyDictionary()
)


def sweeper_for(loop: asyncio.AbstractEventLoop) -> Sweeper:
    sweeper = _sweepers.get(loop)
    if sweeper is None:
        sweeper = _sweepers[loop] = Sweeper(loop)
    return sweeper


class Deadline:
    __slots__ = (
        "_loop",
        "_owner",
        "_on_expiry",
        "_handle",
        "_handle_at",
        "_sweeper",
        "_swept",
        "_on_quiet",
        "at",
        "period",
        "touched",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        owner: Any,
        on_expiry: Callable[[Any], None],
        sweeper: Sweeper | None = None,
        on_quiet: Callable[[Any], None] | None = None,
    ) -> None:
        """``on_expiry(owner)`` runs when the deadline passes. The callbacks are
        functions taking the owner (``ClientConnection._on_timeout``), not bound
        methods: a bound method costs 64 to 72 bytes per connection and per
        callback, and an idle connection is mostly such overhead."""
        self._loop = loop
        self._owner = owner
        self._on_expiry = on_expiry
        #: Called on each sweep that finds the deadline still far: the owner has been
        #: waiting at least a tick and may shed what it only needs when busy.
        self._on_quiet = on_quiet
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = 0.0
        self._sweeper = sweeper_for(loop) if sweeper is None else sweeper
        self._swept = False
        self.at: float | None = None
        self.period = 0.0
        self.touched = False

    @property
    def holds_timer(self) -> bool:
        return self._handle is not None

    def arm(self, delay: float) -> None:
        now = self._loop.time()
        self.arm_at(now + delay, delay, now)

    def arm_at(self, at: float, period: float, now: float) -> None:
        """Expire at ``at``; ``now`` is the caller's loop time (uvloop reads the clock
        on every ``loop.time()``, and the callers on the hot path have just done so)."""
        self.at = at
        self.period = period
        self.touched = False
        handle = self._handle
        if handle is not None and at >= self._handle_at:
            return  # the handle fires first and re-arms for the later time
        self._schedule(at, now)

    def disarm(self) -> None:
        self.at = None

    def cancel(self) -> None:
        self.at = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._swept:
            self._swept = False
            self._sweeper.discard(self)

    def _schedule(self, at: float, now: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if at - now > self._sweeper.far:
            if not self._swept:
                self._swept = True
                self._sweeper.add(self)
            return
        self._handle_at = at
        self._handle = self._loop.call_at(at, self._fire)

    def _still_far(self, now: float) -> bool:
        """The sweeper's look: False when this deadline leaves the sweeper."""
        at = self.at
        if at is None or self._handle is not None:
            self._swept = False
            return False
        if at - now > self._sweeper.far:
            if self._on_quiet is not None:
                self._on_quiet(self._owner)
            return True
        self._swept = False
        self._handle_at = at
        self._handle = self._loop.call_at(at, self._fire)
        return False

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
            self._schedule(at, now)
            return
        self.at = None
        self._on_expiry(self._owner)
