"""Clocks a test drives by hand: no real time passes, nothing sleeps.

:class:`ManualClock` is a wall clock (a ``now`` callable) the test sets.
:class:`SteppingClock` is a :class:`~p2pgrid.billing.PeriodClock` over one: an
interval begins when the agent waits for it (the wall clock jumps to its start),
so an agent's run goes through its intervals at once and in order. ``stop_at``
makes the wait for that interval never end: the agent stands still there (as a
process killed at that moment would) until the test cancels it; ``stopped`` is
set once it got there.
"""

from __future__ import annotations

import asyncio
import dataclasses

from p2pgrid.billing import PeriodClock


class ManualClock:
    """Wall time (epoch seconds) that moves only when told to: set :attr:`t`, or
    :attr:`tick` to move it on by that much at each reading (so that what is
    done in turn gets distinct, increasing timestamps)."""

    def __init__(self, t: float = 1_700_000_000.0, *, tick: float = 0.0) -> None:
        self.t = t
        self.tick = tick

    def __call__(self) -> float:
        now = self.t
        self.t += self.tick
        return now


@dataclasses.dataclass(frozen=True)
class SteppingClock(PeriodClock):
    """A period clock whose intervals begin as soon as they are waited for."""

    wall: ManualClock = dataclasses.field(default_factory=ManualClock)
    stop_at: int | None = None
    stopped: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    #: Every interval waited for, in order.
    reached: list[int] = dataclasses.field(default_factory=list)

    @classmethod
    def over(
        cls, wall: ManualClock, *, intervals_per_period: int, stop_at: int | None = None
    ) -> SteppingClock:
        """A clock whose interval 0 begins at ``wall``'s time now, 900 s per interval."""
        return cls(
            intervals_per_period=intervals_per_period,
            interval_s=900.0,
            start=wall.t,
            now=wall,
            wall=wall,
            stop_at=stop_at,
        )

    async def until(self, t: float) -> None:
        self.wall.t = max(self.wall.t, t)

    async def until_interval(self, interval: int) -> None:
        self.wall.t = max(self.wall.t, self.time_of(interval))
        self.reached.append(interval)
        if interval == self.stop_at:
            self.stopped.set()
            await asyncio.Event().wait()  # stands still here until cancelled
