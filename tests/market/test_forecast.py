"""Forecasts: the same interval of past days, else the running mean; need or headroom."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.billing import FlatTariff, TimeOfUseTariff, charge_msat
from p2pgrid.market import DailyProfile, Forecast, MarketError, forecast_period
from p2pgrid.meter import Reading

FLAT = FlatTariff(200_000)  # 200 sat/kWh
DAY = 4  # four intervals a day keeps the examples small


def test_same_interval_of_day_is_averaged_over_past_days() -> None:
    history = [Reading(0, 10), Reading(1, 100), Reading(4, 20), Reading(5, 101)]
    profile = DailyProfile.learn(history, before=8, intervals_per_day=DAY)
    assert profile.expected(8) == (15, 0)  # slot 0: mean of 10 and 20
    assert profile.expected(9) == (101, 0)  # slot 1: 100.5 rounds half up
    assert profile.expected(10) == (58, 0)  # slot 2 unseen: running mean 231 / 4
    assert profile.samples == 4


def test_the_window_forgets_old_days_and_ignores_the_future() -> None:
    history = [Reading(0, 1000), Reading(4, 10), Reading(8, 99)]
    profile = DailyProfile.learn(history, before=8, window_days=1, intervals_per_day=DAY)
    assert profile.expected(8) == (10, 0)
    assert profile.samples == 1


def test_conflicting_readings_are_refused_and_equal_ones_count_once() -> None:
    assert DailyProfile.learn([Reading(0, 5), Reading(0, 5)], before=1).samples == 1
    with pytest.raises(MarketError, match="two different readings"):
        DailyProfile.learn([Reading(0, 5), Reading(0, 6)], before=1)


def test_need_for_a_device_that_will_run_short() -> None:
    history = [Reading(i, 500) for i in range(8)]  # 500 Wh every interval
    f = forecast_period(
        history,
        balance_msat=100_000,
        tariff=FLAT,
        next_interval=8,
        intervals_per_period=12,
        margin_pct=0,
        intervals_per_day=DAY,
    )
    assert (f.period, f.first_interval, f.end_interval) == (0, 8, 12)
    assert f.import_wh == 2000
    assert f.cost_msat == 400_000  # 2 kWh at 200 sat/kWh
    assert f.need_msat == 300_000
    assert f.headroom_msat == 0


def test_headroom_after_the_margin() -> None:
    history = [Reading(i, 100) for i in range(4)]
    f = forecast_period(
        history,
        balance_msat=100_000,
        tariff=FLAT,
        next_interval=4,
        intervals_per_period=8,
        margin_pct=10,
        intervals_per_day=DAY,
    )
    assert f.cost_msat == 88_000  # 400 Wh -> 80_000 msat, + 10 %
    assert (f.need_msat, f.headroom_msat) == (0, 12_000)


def test_a_device_without_history_claims_no_headroom() -> None:
    f = forecast_period(
        [], balance_msat=50_000, tariff=FLAT, next_interval=0, intervals_per_period=96
    )
    assert (f.cost_msat, f.need_msat, f.headroom_msat, f.samples) == (0, 0, 0, 0)


def test_own_production_covers_own_use_first_and_the_rest_is_exported() -> None:
    history = [Reading(0, 100, 300), Reading(1, 100, 0)]
    f = forecast_period(
        history,
        balance_msat=0,
        tariff=FLAT,
        next_interval=2,
        intervals_per_period=4,
        margin_pct=0,
        intervals_per_day=2,
    )
    assert (f.import_wh, f.export_wh) == (100, 200)
    assert f.cost_msat == 20_000


def test_time_of_use_rates_apply_per_interval() -> None:
    tou = TimeOfUseTariff(((0, 100_000), (2, 300_000)))
    history = [Reading(i, 1000) for i in range(96)]
    f = forecast_period(
        history,
        balance_msat=0,
        tariff=tou,
        next_interval=96,
        intervals_per_period=100,
        margin_pct=0,
    )
    assert f.cost_msat == 100_000 * 2 + 300_000 * 2


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(MarketError):
        forecast_period([], balance_msat=-1, tariff=FLAT, next_interval=0, intervals_per_period=4)
    with pytest.raises(MarketError):
        DailyProfile.learn([], before=0, window_days=0)


readings = st.lists(
    st.builds(Reading, st.integers(0, 40), st.integers(0, 5000), st.integers(0, 2000)),
    max_size=40,
    unique_by=lambda r: r.interval,
)


@given(readings, st.integers(0, 10**9), st.integers(0, 60), st.integers(1, 30))
def test_need_and_headroom_are_exclusive_and_account_for_the_cost(
    history: list[Reading], balance: int, next_interval: int, per_period: int
) -> None:
    f = forecast_period(
        history,
        balance_msat=balance,
        tariff=FLAT,
        next_interval=next_interval,
        intervals_per_period=per_period,
        intervals_per_day=DAY,
    )
    assert f.need_msat >= 0
    assert f.headroom_msat >= 0
    assert f.need_msat == 0 or f.headroom_msat == 0
    if f.samples:
        assert f.balance_msat + f.need_msat - f.headroom_msat == f.cost_msat
    assert f.first_interval <= f.end_interval
    assert f.end_interval - f.first_interval <= per_period
    no_margin = charge_msat(FLAT, [(0, f.import_wh)])
    assert no_margin <= f.cost_msat <= no_margin * 110 // 100 + 1


@given(readings, st.randoms())
def test_a_forecast_does_not_depend_on_the_order_of_history(
    history: list[Reading], rnd: random.Random
) -> None:
    def run(readings: list[Reading]) -> Forecast:
        return forecast_period(
            readings, balance_msat=1000, tariff=FLAT, next_interval=41, intervals_per_period=20
        )

    shuffled = list(history)
    rnd.shuffle(shuffled)
    assert run(history) == run(shuffled)


def test_a_period_of_the_clock_s_length_calendar_months_included() -> None:
    """Bounds from the clock (a month of any length) forecast to that end."""
    history = [Reading(i, 500) for i in range(8)]
    kwargs = dict(balance_msat=100_000, tariff=FLAT, next_interval=8, margin_pct=0,
                  intervals_per_day=DAY)  # fmt: skip
    f = forecast_period(history, period_bounds=(3, 15), **kwargs)  # type: ignore[arg-type]
    assert (f.period, f.first_interval, f.end_interval, f.import_wh) == (3, 8, 15, 3500)
    with pytest.raises(MarketError):
        forecast_period(history, period_bounds=(3, 8), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(MarketError):
        forecast_period(history, **kwargs)  # type: ignore[arg-type]  # no period at all
