"""The lazy deadline timer and the sweeper that holds far deadlines without a timer each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from maitred.proxy.deadline import Deadline, Sweeper

TICK = 0.02
FAR = 0.05


def run(test: Callable[[asyncio.AbstractEventLoop, Sweeper], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        await test(loop, Sweeper(loop, tick=TICK, far=FAR))

    uvloop.run(main())


class Expiries:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.times: list[float] = []
        self.event = asyncio.Event()

    def __call__(self, _owner: object) -> None:
        self.times.append(self.loop.time())
        self.event.set()

    async def wait(self) -> float:
        await asyncio.wait_for(self.event.wait(), 5)
        self.event.clear()
        return self.times[-1]


def test_a_near_deadline_holds_a_timer_and_fires_at_its_time() -> None:
    async def body(loop: asyncio.AbstractEventLoop, sweeper: Sweeper) -> None:
        expired = Expiries(loop)
        deadline = Deadline(loop, None, expired, sweeper)
        deadline.arm(0.01)
        at = deadline.at
        assert at is not None and deadline.holds_timer and len(sweeper) == 0
        assert await expired.wait() >= at
        assert deadline.at is None and not deadline.holds_timer

    run(body)


def test_a_far_deadline_waits_in_the_sweeper_without_a_timer_and_still_fires_on_time() -> None:
    async def body(loop: asyncio.AbstractEventLoop, sweeper: Sweeper) -> None:
        expired = Expiries(loop)
        deadlines = [Deadline(loop, None, expired, sweeper) for _ in range(100)]
        for deadline in deadlines:
            deadline.arm(0.2)
        assert len(sweeper) == 100
        assert not any(deadline.holds_timer for deadline in deadlines)
        at = deadlines[0].at
        assert at is not None
        fired = await expired.wait()
        assert fired >= at
        while len(expired.times) < 100:
            await expired.wait()
        assert min(expired.times) >= at
        assert len(sweeper) == 0

    run(body)


def test_moving_a_deadline_later_while_it_holds_a_timer_defers_the_expiry() -> None:
    async def body(loop: asyncio.AbstractEventLoop, sweeper: Sweeper) -> None:
        expired = Expiries(loop)
        deadline = Deadline(loop, None, expired, sweeper)
        deadline.arm(0.01)
        deadline.arm(0.15)  # now far: the timer fires early, then hands over to the sweeper
        later = deadline.at
        assert later is not None
        assert await expired.wait() >= later
        assert expired.times == [expired.times[0]]

    run(body)


def test_moving_a_far_deadline_near_reschedules_at_once() -> None:
    async def body(loop: asyncio.AbstractEventLoop, sweeper: Sweeper) -> None:
        expired = Expiries(loop)
        deadline = Deadline(loop, None, expired, sweeper)
        deadline.arm(10.0)
        assert not deadline.holds_timer
        deadline.arm(0.01)
        assert deadline.holds_timer
        started = loop.time()
        assert await expired.wait() - started < 5.0  # not the 10 s one

    run(body)


def test_touched_moves_an_inactivity_deadline_one_period_on() -> None:
    async def body(loop: asyncio.AbstractEventLoop, sweeper: Sweeper) -> None:
        expired = Expiries(loop)
        deadline = Deadline(loop, None, expired, sweeper)
        deadline.arm(0.03)
        first = deadline.at
        assert first is not None
        while loop.time() < first:
            deadline.touched = True
            await asyncio.sleep(0.005)
        assert await expired.wait() >= first + 0.03

    run(body)


def test_cancel_leaves_the_sweeper_and_nothing_fires() -> None:
    async def body(loop: asyncio.AbstractEventLoop, sweeper: Sweeper) -> None:
        expired = Expiries(loop)
        deadline = Deadline(loop, None, expired, sweeper)
        deadline.arm(0.1)
        assert len(sweeper) == 1
        deadline.cancel()
        assert len(sweeper) == 0 and deadline.at is None
        witness = Expiries(loop)
        Deadline(loop, None, witness, sweeper).arm(0.15)
        await witness.wait()
        assert expired.times == []

    run(body)


def test_disarm_is_noticed_by_the_sweeper() -> None:
    async def body(loop: asyncio.AbstractEventLoop, sweeper: Sweeper) -> None:
        expired = Expiries(loop)
        deadline = Deadline(loop, None, expired, sweeper)
        deadline.arm(0.1)
        deadline.disarm()
        witness = Expiries(loop)
        Deadline(loop, None, witness, sweeper).arm(0.15)
        await witness.wait()
        assert expired.times == [] and len(sweeper) == 0

    run(body)
