"""End-of-period surplus: sell or carry over, and the budget always adds up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.market import (
    PERIOD_WIDE,
    Bid,
    MarketError,
    Party,
    Surplus,
    SurplusPolicy,
    clear,
    decide_surplus,
    to_tick,
)

SOLAR = Party("00000000000000aa", 3)
FRIDGE = Party("00000000000000aa", 4)
RATE = 150_500  # msat/kWh, off the tick on purpose


def test_carry_over_offers_nothing() -> None:
    d = decide_surplus(
        Surplus(SOLAR, 5, 90_000, 400),
        SurplusPolicy.CARRY_OVER,
        interval=PERIOD_WIDE,
        rate_msat_per_kwh=RATE,
    )
    assert d.ask is None
    assert d.carry_over_msat() == 90_000


def test_sell_energy_asks_production_at_the_reserve_and_carries_the_budget() -> None:
    d = decide_surplus(
        Surplus(SOLAR, 5, 90_000, 400),
        SurplusPolicy.SELL_ENERGY,
        interval=PERIOD_WIDE,
        rate_msat_per_kwh=RATE,
        min_price_msat_per_kwh=100_000,
    )
    assert d.ask is not None
    assert (d.ask.energy_wh, d.ask.price_msat_per_kwh) == (400, 151_000)
    assert d.carry_over_msat(400) == 90_000


def test_sell_offers_the_budget_as_energy_and_carries_what_does_not_sell() -> None:
    d = decide_surplus(
        Surplus(SOLAR, 5, 90_000, 400),
        SurplusPolicy.SELL,
        interval=PERIOD_WIDE,
        rate_msat_per_kwh=RATE,
    )
    assert d.ask is not None
    assert (d.from_energy_wh, d.from_budget_wh) == (400, 598)  # 90_000 msat at 150.5 sat/kWh
    assert d.carry_over_msat(400) == 90_000  # production sells first
    assert d.carry_over_msat(401) == 90_000 - 151  # 150.5 msat, rounded up
    assert d.carry_over_msat(500) == 90_000 - 15_050
    assert d.carry_over_msat(998) == 90_000 - 89_999
    with pytest.raises(MarketError):
        d.carry_over_msat(999)

    buyer = Bid(FRIDGE, 5, PERIOD_WIDE, 500, 200_000)
    clearing = clear([d.ask], [buyer], period=5, interval=PERIOD_WIDE)
    assert clearing.trades[0].energy_wh == 500
    assert d.carry_over_after(clearing) == 90_000 - 15_050
    assert clearing.price_msat_per_kwh >= RATE  # the seller is paid at least the tariff


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(MarketError):
        Surplus(SOLAR, 1, -1)
    with pytest.raises(MarketError):
        decide_surplus(Surplus(SOLAR, 1, 1), SurplusPolicy.SELL, interval=0, rate_msat_per_kwh=0)
    assert to_tick(1) == 1000
    assert to_tick(2000) == 2000


@given(
    st.integers(0, 10**12),
    st.integers(0, 10**6),
    st.sampled_from(SurplusPolicy),
    st.integers(1, 10**6),
    st.integers(0, 10**6),
    st.data(),
)
def test_the_budget_is_conserved_whatever_sells(
    budget: int, energy: int, policy: SurplusPolicy, rate: int, floor: int, data: st.DataObject
) -> None:
    d = decide_surplus(
        Surplus(SOLAR, 1, budget, energy),
        policy,
        interval=0,
        rate_msat_per_kwh=rate,
        min_price_msat_per_kwh=floor,
    )
    offered = d.ask.energy_wh if d.ask else 0
    sold = data.draw(st.integers(0, offered))
    used = d.budget_used_msat(sold)
    assert 0 <= used <= budget
    assert d.carry_over_msat(sold) + used == budget
    if d.ask:
        assert d.ask.price_msat_per_kwh >= max(rate, floor)
        # Selling entitlement never returns less than the budget it consumes.
        assert sold * d.ask.price_msat_per_kwh // 1000 >= used
    if policy is SurplusPolicy.CARRY_OVER:
        assert d.ask is None
    if policy is not SurplusPolicy.SELL:
        assert d.carry_over_msat(sold) == budget
