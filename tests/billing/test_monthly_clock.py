"""Calendar-month billing periods (MonthlyClock): lengths, bounds, time zones."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.billing import MonthlyClock, PeriodClock
from p2pgrid.errors import ConfigError

UTC = dt.UTC


def at(*args: int, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def lengths(clock: PeriodClock, periods: int) -> list[int]:
    return [clock.first_interval(p + 1) - clock.first_interval(p) for p in range(periods)]


def test_utc_months_have_their_days_of_intervals() -> None:
    clock = MonthlyClock(start=at(2027, 1, 1))
    # Jan 31, Feb 28, Mar 31, Apr 30 days of 96 intervals
    assert lengths(clock, 4) == [2976, 2688, 2976, 2880]
    assert clock.period_of(0) == 0
    assert clock.period_of(2975) == 0
    assert clock.is_last_of_period(2975)
    assert clock.period_of(2976) == 1
    assert not clock.is_last_of_period(2976)


def test_a_daylight_saving_month_has_four_intervals_less_or_more() -> None:
    berlin = MonthlyClock(start=at(2027, 3, 1, 0, 0) - 3600, timezone="Europe/Berlin")
    # 2027-03-01 00:00 CET is 2027-02-28 23:00 UTC; March loses an hour, October gains one
    march, *_ = lengths(berlin, 1)
    assert march == 31 * 96 - 4
    october = berlin.first_interval(8) - berlin.first_interval(7)
    assert october == 31 * 96 + 4


def test_a_start_mid_month_makes_a_short_first_period() -> None:
    clock = MonthlyClock(start=at(2027, 1, 31, 12))
    assert clock.first_interval(1) == 12 * 4  # 12 hours to February
    assert clock.period_of(47) == 0
    assert clock.period_of(48) == 1


def test_an_unknown_time_zone_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        MonthlyClock(start=0.0, timezone="Mars/Olympus")


@given(
    start_day=st.integers(0, 3000),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    interval=st.integers(0, 40_000),
)
def test_bounds_and_period_of_agree(start_day: int, zone: str, interval: int) -> None:
    start = at(2026, 1, 1) + start_day * 86_400
    clock = MonthlyClock(start=start, timezone=zone)
    p = clock.period_of(interval)
    assert clock.first_interval(p) <= interval < clock.first_interval(p + 1)
    assert clock.is_last_of_period(interval) == (interval == clock.first_interval(p + 1) - 1)
    begins = dt.datetime.fromtimestamp(clock.time_of(clock.first_interval(p)), clock._tz)
    if p > 0:  # a period begins in its month's first quarter hour
        assert (begins.day, begins.hour, begins.minute // 15) == (1, 0, 0)
