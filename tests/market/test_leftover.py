"""Leftover budget near the end of a period (docs/market.md 2.7): carry_over,
sell or split(f) of the forecast's headroom, never what the device's own
forecast needs."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.billing import FlatTariff
from p2pgrid.market import (
    DEFAULT_LEFTOVER_WINDOW,
    Forecast,
    LeftoverPolicy,
    MarketError,
    forecast_period,
    leftover_msat,
    to_tick,
)
from p2pgrid.meter import Reading

RATE = 150_500  # msat/kWh, off the tick on purpose
PER_PERIOD = 16
DAY = 96


def forecast(balance: int, *, next_interval: int, wh: int = 100, days: int = 2) -> Forecast:
    """A device that used ``wh`` in every interval of the last ``days`` days."""
    history = [Reading(i, wh) for i in range(next_interval - days * DAY, next_interval) if i >= 0]
    return forecast_period(
        history,
        balance_msat=balance,
        tariff=FlatTariff(RATE),
        next_interval=next_interval,
        intervals_per_period=PER_PERIOD,
    )


def offer(f: Forecast, policy: str, *, window: int = DEFAULT_LEFTOVER_WINDOW) -> int:
    """What ``f``'s device offers of its leftover budget under ``policy``."""
    left = f.end_interval - f.first_interval
    return leftover_msat(
        f.headroom_msat, LeftoverPolicy.parse(policy), intervals_left=left, window=window
    )


@pytest.mark.parametrize(
    ("text", "share"),
    [
        ("carry_over", Fraction(0)),
        ("sell", Fraction(1)),
        ("split(0.25)", Fraction(1, 4)),
        ("split(0.3)", Fraction(3, 10)),
        ("split(.5)", Fraction(1, 2)),
        ("split(1)", Fraction(1)),
        ("split(0)", Fraction(0)),
    ],
)
def test_policies_parse_exactly(text: str, share: Fraction) -> None:
    policy = LeftoverPolicy.parse(text)
    assert policy.sell == share
    assert LeftoverPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize("text", ["split(1.5)", "split(-0.1)", "split()", "sell_all", "split(1/3)"])
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(MarketError, match="carry_over, sell or split"):
        LeftoverPolicy.parse(text)


def test_only_the_headroom_is_offered_and_only_near_the_end() -> None:
    # 3 intervals left of period 10 (interval 173 of 160..175), 100 Wh each at 150.5 sat/kWh:
    # cost 45_150 msat, +10 % margin = 49_665; balance 100_000: headroom 50_335
    f = forecast(100_000, next_interval=10 * PER_PERIOD + 13)
    assert (f.cost_msat, f.headroom_msat) == (49_665, 50_335)
    assert offer(f, "sell") == 50_335
    assert offer(f, "split(0.5)") == 25_167
    assert offer(f, "split(0.3)") == 15_100  # 3/10 exactly, rounded down
    assert offer(f, "carry_over") == 0
    assert offer(f, "sell", window=2) == 0  # 3 intervals left, window 2
    early = forecast(100_000, next_interval=10 * PER_PERIOD + 2)  # 14 intervals left
    assert early.end_interval - early.first_interval > DEFAULT_LEFTOVER_WINDOW
    assert offer(early, "sell") == 0


def test_no_history_no_headroom_no_offer() -> None:
    f = forecast_period(
        [],
        balance_msat=10**9,
        tariff=FlatTariff(RATE),
        next_interval=15,
        intervals_per_period=PER_PERIOD,
    )
    assert (f.headroom_msat, offer(f, "sell")) == (0, 0)


def test_a_short_device_offers_nothing_and_bad_inputs_are_refused() -> None:
    f = forecast(1_000, next_interval=PER_PERIOD - 2)
    assert f.need_msat > 0
    assert offer(f, "sell") == 0
    with pytest.raises(MarketError, match="headroom >= 0"):
        leftover_msat(-1, LeftoverPolicy.parse("sell"), intervals_left=1)
    with pytest.raises(MarketError, match="window >= 1"):
        offer(f, "sell", window=0)
    with pytest.raises(MarketError, match=r"within 0\.\.1"):
        LeftoverPolicy(Fraction(3, 2))
    assert (to_tick(1), to_tick(2000), to_tick(2001)) == (1000, 2000, 3000)


@given(
    st.integers(0, 10**9),
    st.integers(1, PER_PERIOD - 1).map(lambda left: 7 * PER_PERIOD - left),
    st.integers(0, 2_000),
    st.fractions(0, 1, max_denominator=1000),
    st.integers(1, PER_PERIOD),
)
def test_never_offers_what_the_forecast_needs(
    balance: int, next_interval: int, wh: int, share: Fraction, window: int
) -> None:
    f = forecast(balance, next_interval=next_interval, wh=wh)
    left = f.end_interval - f.first_interval
    offered = leftover_msat(
        f.headroom_msat, LeftoverPolicy(share), intervals_left=left, window=window
    )
    assert 0 <= offered <= f.headroom_msat * share
    if left > window or f.need_msat > 0:
        assert offered == 0
    else:  # what the forecast needs stays covered
        assert f.balance_msat - offered >= f.cost_msat
