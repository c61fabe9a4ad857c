"""Demand curves of a device (docs/market.md, section 2.8): every curve is a
valid DemandCurve; at any clearing price the buyer can pay for what it takes,
its flexible part leaving the forecast reserve; firm load is bid before any
flexible load; the cheaper the energy, the more it buys; what the clearing
price defers is flexible load only, and never more than the device needs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.market import (
    FIRM,
    MAX_STEPS,
    PRICE_TICK_MSAT_PER_KWH,
    DemandCurve,
    Flexibility,
    MarketError,
    Party,
    Step,
    deferred_wh,
    demand_curve,
    max_bid_energy,
)

ME = Party("00000000000000aa", 3)
RATE = 250_000

rates = st.integers(1, 2_000_000)
flexes = st.builds(
    lambda pct, a, b, n: Flexibility(pct, max(a, b), min(a, b), n),
    st.integers(0, 100),
    st.integers(1, 99),
    st.integers(1, 99),
    st.integers(1, MAX_STEPS - 1),
)
clearing_prices = st.integers(1, 2_100).map(lambda n: n * PRICE_TICK_MSAT_PER_KWH)


def cost_msat(wh: int, price: int) -> int:
    return wh * price // PRICE_TICK_MSAT_PER_KWH  # exact: prices are on the tick


@given(st.integers(0, 10**6), rates, st.integers(0, 10**9), flexes, st.integers(0, 10**9))
def test_a_curve_is_valid_affordable_and_bids_firm_load_first(
    need: int, rate: int, balance: int, flex: Flexibility, reserve: int
) -> None:
    plan = demand_curve(
        need, rate_msat_per_kwh=rate, balance_msat=balance, flex=flex, reserve_msat=reserve
    )
    assert plan.energy_wh <= need
    assert 0 <= plan.flexible_wh <= need
    if plan.steps:
        DemandCurve(ME, 1, 2, plan.steps)  # strictly falling, on the tick, within limits
        assert len(plan.steps) <= MAX_STEPS
    firm_wh = sum(
        s.energy_wh for s in plan.steps if s.price_msat_per_kwh == plan.firm_price_msat_per_kwh
    )
    assert firm_wh == min(
        need - plan.flexible_wh, max_bid_energy(balance, plan.firm_price_msat_per_kwh)
    )
    if plan.flexible_bid_wh:  # flexible load only once the firm load is bid in full
        assert firm_wh == need - plan.flexible_wh
        assert plan.flexible_bid_wh <= plan.flexible_wh
    for step in plan.steps:
        p = step.price_msat_per_kwh
        assert p <= plan.firm_price_msat_per_kwh
        budget = balance if p == plan.firm_price_msat_per_kwh else max(0, balance - reserve)
        assert cost_msat(plan.demand_wh(p), p) <= budget


@given(
    st.integers(0, 10**6), rates, st.integers(0, 10**9), flexes, clearing_prices, clearing_prices
)
def test_cheaper_energy_buys_more_and_defers_less_never_more_than_the_flexible_load(
    need: int, rate: int, balance: int, flex: Flexibility, p: int, q: int
) -> None:
    plan = demand_curve(need, rate_msat_per_kwh=rate, balance_msat=balance, flex=flex)
    low, high = min(p, q), max(p, q)
    assert plan.demand_wh(low) >= plan.demand_wh(high)
    assert cost_msat(plan.demand_wh(low), low) <= balance  # what it takes, at the price it pays
    assert 0 <= deferred_wh(plan, low) <= deferred_wh(plan, high) <= plan.flexible_wh
    # bought (at most the demand) and deferred together never exceed the need
    assert plan.demand_wh(high) + deferred_wh(plan, high) <= need


@given(st.integers(0, 10**6), rates, st.integers(0, 10**9))
def test_a_firm_device_bids_one_step_at_the_tariff_and_defers_nothing(
    need: int, rate: int, balance: int
) -> None:
    plan = demand_curve(need, rate_msat_per_kwh=rate, balance_msat=balance, flex=FIRM)
    assert len(plan.steps) <= 1
    assert plan.flexible_wh == 0
    assert all(s.price_msat_per_kwh >= rate for s in plan.steps)
    assert deferred_wh(plan, PRICE_TICK_MSAT_PER_KWH) == 0


def test_the_worked_example_of_the_spec() -> None:
    """docs/market.md, section 2.8: 100 Wh, half of it flexible, 14 000 msat of
    balance of which 2 000 are the forecast's reserve."""
    flex = Flexibility(flexible_pct=50, top_pct=90, floor_pct=50, steps=3)
    plan = demand_curve(
        100, rate_msat_per_kwh=RATE, balance_msat=14_000, flex=flex, reserve_msat=2_000
    )
    assert plan.steps == (
        Step(250_000, 50),  # firm: 50 x 250 = 12 500 <= 14 000
        Step(225_000, 3),  # 12 000 // 225 = 53 in all
        Step(175_000, 15),  # 12 000 // 175 = 68 in all
        Step(125_000, 17),  # 12 000 // 125 = 96 in all; the step holds 17
    )
    assert [deferred_wh(plan, p) for p in (260_000, 200_000, 150_000, 120_000)] == [50, 47, 32, 15]
    assert [plan.demand_wh(p) for p in (260_000, 200_000, 150_000, 120_000)] == [0, 53, 68, 85]


def test_bad_inputs_are_refused() -> None:
    import pytest

    with pytest.raises(MarketError):
        Flexibility(flexible_pct=101)
    with pytest.raises(MarketError):
        Flexibility(top_pct=100)
    with pytest.raises(MarketError):
        Flexibility(top_pct=40, floor_pct=60)
    with pytest.raises(MarketError):
        demand_curve(-1, rate_msat_per_kwh=RATE, balance_msat=0)
    with pytest.raises(MarketError):
        demand_curve(1, rate_msat_per_kwh=0, balance_msat=0)
    plan = demand_curve(10, rate_msat_per_kwh=RATE, balance_msat=10**6)
    with pytest.raises(MarketError):
        deferred_wh(plan, 0)
