"""Billing periods: the transition table and the compressed clock."""

from __future__ import annotations

import asyncio

import pytest

from p2pgrid.billing import BillingPeriod, PeriodClock, PeriodState, TransitionError
from p2pgrid.errors import ConfigError


def test_a_period_moves_only_forward_through_the_table() -> None:
    period = BillingPeriod(3, owner="dev-a")
    with pytest.raises(TransitionError, match="open -> closed forbidden"):
        period.advance(PeriodState.CLOSED)
    for state in (PeriodState.CLOSING, PeriodState.CLOSED, PeriodState.SETTLED):
        period.advance(state)
    assert period.history == list(PeriodState)
    with pytest.raises(TransitionError):
        period.advance(PeriodState.OPEN)


def test_clock_maps_time_to_period_and_interval() -> None:
    now = [1000.0]
    clock = PeriodClock(intervals_per_period=96, interval_s=0.5, start=1000.0, now=lambda: now[0])
    assert clock.current_interval() == 0
    now[0] = 1000.0 + 0.5 * 100
    assert clock.current_interval() == 100
    assert clock.period_of(100) == 1
    assert clock.first_interval(2) == 192
    assert clock.is_last_of_period(95)
    assert not clock.is_last_of_period(96)
    with pytest.raises(ConfigError):
        PeriodClock(intervals_per_period=0)


async def test_compressed_clock_waits_for_an_interval() -> None:
    loop = asyncio.get_running_loop()
    clock = PeriodClock(intervals_per_period=4, interval_s=0.02, start=loop.time(), now=loop.time)
    await clock.until_interval(3)
    assert clock.current_interval() >= 3
