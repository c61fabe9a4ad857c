"""The clock of the deployment files: real time, calendar months, no end by default."""

from __future__ import annotations

import datetime as dt

from p2pgrid.billing import MonthlyClock, PeriodClock
from p2pgrid.config.files import ClockFileModel

START = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def test_by_default_periods_are_calendar_months_and_the_run_has_no_end() -> None:
    timing = ClockFileModel(start=START).timing()
    assert timing.periods is None
    assert timing.interval_s == 900
    clock = timing.clock(START.timestamp())
    assert isinstance(clock, MonthlyClock)
    assert clock.timezone == "UTC"
    assert clock.first_interval(1) == 31 * 96  # January
    assert clock.first_interval(2) - clock.first_interval(1) == 28 * 96  # February 2027


def test_a_time_zone_s_months() -> None:
    clock = ClockFileModel(start=START, timezone="Europe/Berlin").timing().clock(START.timestamp())
    assert isinstance(clock, MonthlyClock)
    assert clock.first_interval(1) == 31 * 96 - 4  # 1 Feb 00:00 CET is 23:00 UTC the day before


def test_intervals_per_period_makes_fixed_periods_and_periods_an_end() -> None:
    timing = ClockFileModel(start=START, intervals_per_period=4, periods=2).timing()
    assert timing.periods == 2
    clock = timing.clock(START.timestamp())
    assert type(clock) is PeriodClock
    assert clock.first_interval(2) == 8
