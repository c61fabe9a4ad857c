"""Billing periods as an explicit state machine, and a clock that can be compressed.

A period (a month in real life) is a run of metering intervals (15 minutes in
real life). :class:`PeriodClock` maps time to (period, interval) with periods
of a fixed number of intervals; compressed, a whole period runs in seconds for
the demo and tests. :class:`MonthlyClock` bills calendar months of a time zone
(real life): a period's intervals are those that begin in its month, so months
differ in length (2,688 to 2,976 intervals; a daylight-saving month has 4 more or
fewer). Whatever the clock, ask it for a period's bounds
(:meth:`PeriodClock.first_interval`), never multiply by ``intervals_per_period``.

A period moves OPEN -> CLOSING -> CLOSED -> SETTLED, nothing else; each
transition is checked against the table and logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import functools
import logging
import math
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from p2pgrid.errors import ConfigError, FatalError

log = logging.getLogger(__name__)

REAL_INTERVAL_S: Final = 900.0  # 15-minute metering
#: Length of a metering interval in modelled time, as the log records it.
METER_INTERVAL_S: Final = 900
#: Modelled time of metering interval 0: 2024-01-01 00:00 UTC (the profiles' year).
MODEL_EPOCH_MS: Final = 1_704_067_200_000


def model_ms(model_interval: int) -> int:
    """Modelled wall time (UTC, ms) of the start of metering interval ``model_interval``."""
    return MODEL_EPOCH_MS + model_interval * METER_INTERVAL_S * 1000


class PeriodState(enum.Enum):
    OPEN = "open"  # metering; budget shares and sales allowed
    CLOSING = "closing"  # last interval metered; trades drain, no new ones
    CLOSED = "closed"  # the utility computes and issues invoices
    SETTLED = "settled"  # every invoice paid or disputed and reported


ALLOWED: Final[dict[PeriodState, frozenset[PeriodState]]] = {
    PeriodState.OPEN: frozenset({PeriodState.CLOSING}),
    PeriodState.CLOSING: frozenset({PeriodState.CLOSED}),
    PeriodState.CLOSED: frozenset({PeriodState.SETTLED}),
    PeriodState.SETTLED: frozenset(),
}


class TransitionError(FatalError):
    """A transition that the table forbids: a bug, never a peer's doing."""


@dataclass
class BillingPeriod:
    """One billing period of one participant (an agent or the utility)."""

    number: int
    owner: str  # who holds this state machine, for the log lines
    state: PeriodState = PeriodState.OPEN
    history: list[PeriodState] = field(default_factory=lambda: [PeriodState.OPEN])

    def advance(self, to: PeriodState) -> None:
        if to not in ALLOWED[self.state]:
            raise TransitionError(
                f"[{self.owner}] period {self.number}: {self.state.value} -> {to.value} forbidden"
            )
        log.info("[%s] period %d: %s -> %s", self.owner, self.number, self.state.value, to.value)
        self.state = to
        self.history.append(to)


@dataclass(frozen=True)
class PeriodClock:
    """Time -> (period, interval). ``interval_s`` real seconds per metering
    interval (900 in real life); ``start`` is the wall time of interval 0."""

    intervals_per_period: int
    interval_s: float = REAL_INTERVAL_S
    start: float = 0.0
    now: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.intervals_per_period < 1 or self.interval_s <= 0:
            raise ConfigError("a period needs >= 1 interval and interval_s > 0")

    def period_of(self, interval: int) -> int:
        return interval // self.intervals_per_period

    def first_interval(self, period: int) -> int:
        return period * self.intervals_per_period

    def is_last_of_period(self, interval: int) -> bool:
        return (interval + 1) % self.intervals_per_period == 0

    def current_interval(self) -> int:
        return max(0, int((self.now() - self.start) // self.interval_s))

    def time_of(self, interval: int) -> float:
        return self.start + interval * self.interval_s

    async def until_interval(self, interval: int) -> None:
        """Return once interval ``interval`` has begun (a clock tick, not a sync)."""
        delay = self.time_of(interval) - self.now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def until(self, t: float) -> None:
        """Return once the wall time ``t`` has come (a deadline of the clock, such as
        the close of an auction round; not a sync)."""
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


#: The intervals of the longest month: what a monthly clock's nominal
#: ``intervals_per_period`` says (its real bounds come from first_interval).
LONGEST_MONTH_INTERVALS: Final = 31 * 96


@dataclass(frozen=True)
class MonthlyClock(PeriodClock):
    """Calendar-month billing periods in ``timezone``: period 0 is the month in
    which interval 0 begins (``start``, local time), period ``p`` the ``p``-th
    month after it. Intervals are ``interval_s`` apart in absolute time; an
    interval belongs to the month in which it begins."""

    intervals_per_period: int = LONGEST_MONTH_INTERVALS  # nominal only
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self._tz  # noqa: B018 - validates the name once
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"unknown time zone {self.timezone!r}") from exc

    @functools.cached_property
    def _tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def _month(self, t: float) -> int:
        local = dt.datetime.fromtimestamp(t, self._tz)
        return local.year * 12 + local.month - 1

    def period_of(self, interval: int) -> int:
        return self._month(self.time_of(interval)) - self._month(self.start)

    def first_interval(self, period: int) -> int:
        if period <= 0:
            return 0
        year, month = divmod(self._month(self.start) + period, 12)
        begins = dt.datetime(year, month + 1, 1, tzinfo=self._tz).timestamp()
        return max(0, math.ceil((begins - self.start) / self.interval_s - 1e-9))

    def is_last_of_period(self, interval: int) -> bool:
        return self.period_of(interval + 1) != self.period_of(interval)
