"""Selling leftover budget near the end of a period: carry_over, sell or
split(f) of the forecast's headroom, never what the device's own forecast needs."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.billing import FlatTariff
from p2pgrid.market import (
    DEFAULT_LEFTOVER_WINDOW,
    DemandCurve,
    Forecast,
    LeftoverOffer,
    LeftoverPolicy,
    MarketError,
    Party,
    Step,
    clear_pool,
    forecast_period,
    offer_leftover,
)
from p2pgrid.meter import Reading

FRIDGE = Party("00000000000000aa", 4)
EV = Party("00000000000000aa", 5)
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


def offer(f: Forecast, policy: str, **kw: int) -> LeftoverOffer:
    kw.setdefault("rate_msat_per_kwh", RATE)
    return offer_leftover(f, LeftoverPolicy.parse(policy), party=FRIDGE, **kw)


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
    sell = offer(f, "sell")
    assert sell.ask is not None
    assert sell.offered_msat == 50_335
    assert (sell.ask.period, sell.ask.interval) == (10, 173)
    assert sell.ask.energy_wh == 334  # 50_335 msat buys 334.45 Wh at the tariff
    assert sell.ask.price_msat_per_kwh == 151_000  # the tariff, up to the tick
    assert sell.budget_used_msat(334) == 50_267  # 334 x 150.5, rounded up: <= 50_335
    half = offer(f, "split(0.5)")
    assert half.offered_msat == 25_167
    assert half.ask is not None
    assert half.ask.energy_wh == 167
    keep = offer(f, "carry_over")
    assert (keep.ask, keep.offered_msat, keep.headroom_msat) == (None, 0, 50_335)
    early = forecast(100_000, next_interval=10 * PER_PERIOD + 2)  # 14 intervals left
    assert early.end_interval - early.first_interval > DEFAULT_LEFTOVER_WINDOW
    assert offer(early, "sell").ask is None


def test_no_history_no_headroom_no_offer() -> None:
    f = forecast_period(
        [],
        balance_msat=10**9,
        tariff=FlatTariff(RATE),
        next_interval=15,
        intervals_per_period=PER_PERIOD,
    )
    none = offer(f, "sell")
    assert (none.ask, none.headroom_msat) == (None, 0)


def test_a_short_device_offers_nothing_and_bad_inputs_are_refused() -> None:
    f = forecast(1_000, next_interval=PER_PERIOD - 2)
    assert f.need_msat > 0
    assert offer(f, "sell").ask is None
    with pytest.raises(MarketError, match="tariff rate > 0"):
        offer(f, "sell", rate_msat_per_kwh=0)
    with pytest.raises(MarketError, match="window >= 1"):
        offer(f, "sell", rate_msat_per_kwh=1, window=0)
    with pytest.raises(MarketError, match=r"within 0\.\.1"):
        LeftoverPolicy(Fraction(3, 2))


@given(
    st.integers(0, 10**9),
    st.integers(1, PER_PERIOD - 1).map(lambda left: 7 * PER_PERIOD - left),
    st.integers(0, 2_000),
    st.integers(1, 10**6),
    st.fractions(0, 1, max_denominator=1000),
    st.integers(0, 10**6),
    st.data(),
)
def test_never_offers_what_the_forecast_needs(
    balance: int,
    next_interval: int,
    wh: int,
    rate: int,
    share: Fraction,
    floor: int,
    data: st.DataObject,
) -> None:
    f = forecast(balance, next_interval=next_interval, wh=wh)
    window = data.draw(st.integers(1, PER_PERIOD))
    offer = offer_leftover(
        f,
        LeftoverPolicy(share),
        party=FRIDGE,
        rate_msat_per_kwh=rate,
        min_price_msat_per_kwh=floor,
        window=window,
    )
    if offer.ask is None:
        return
    assert f.end_interval - f.first_interval <= window
    assert offer.offered_msat <= f.headroom_msat * share
    sold = data.draw(st.integers(0, offer.ask.energy_wh))
    used = offer.budget_used_msat(sold)
    assert used <= offer.offered_msat
    assert f.balance_msat - used >= f.cost_msat  # the forecast's need stays covered
    assert sold * offer.ask.price_msat_per_kwh // 1000 >= used  # never sold below its worth


def test_leftover_sells_in_the_pooled_auction_at_no_less_than_the_tariff() -> None:
    f = forecast(100_000, next_interval=10 * PER_PERIOD + 13)
    sell = offer(f, "sell")
    assert sell.ask is not None
    curve = DemandCurve(EV, 10, 173, (Step(200_000, 100), Step(120_000, 500)))
    clearing = clear_pool([sell.ask, curve], period=10, interval=173)
    (trade,) = clearing.trades
    assert trade.energy_wh == 100  # the EV takes only its first step at >= 151 sat/kWh
    assert clearing.price_msat_per_kwh >= RATE
    assert sell.used_after(clearing) == 15_050
    assert trade.amount_msat >= sell.used_after(clearing)
