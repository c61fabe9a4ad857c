"""Selling leftover allowance (docs/market.md, section 2.9): the worked example,
and the rules as properties: never more than offered (so never what the
seller's forecast needs) nor than asked, the price rule, no trade above the
buyer's maximum, and allowance conserved over any sequence of deals."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.market import (
    AllowanceDeal,
    LeftoverPolicy,
    MarketError,
    allowance_deal,
    allowance_price_msat,
    leftover_msat,
)
from tests.market.test_leftover import PER_PERIOD, forecast


def test_the_worked_example_of_the_spec() -> None:
    # 3 intervals left of period 10, 100 Wh each at 150.5 sat/kWh: cost 49_665 msat.
    seller = forecast(100_000, next_interval=10 * PER_PERIOD + 13)
    buyer = forecast(19_665, next_interval=10 * PER_PERIOD + 13)
    assert (seller.headroom_msat, buyer.need_msat) == (50_335, 30_000)
    left = seller.end_interval - seller.first_interval
    sell = leftover_msat(seller.headroom_msat, LeftoverPolicy.parse("sell"), intervals_left=left)
    half = leftover_msat(
        seller.headroom_msat, LeftoverPolicy.parse("split(0.5)"), intervals_left=left
    )
    keep = leftover_msat(
        seller.headroom_msat, LeftoverPolicy.parse("carry_over"), intervals_left=left
    )
    assert (sell, half, keep) == (50_335, 25_167, 0)
    deal = allowance_deal(
        offered_msat=sell, requested_msat=buyer.need_msat, price_pct=80, max_price_pct=90
    )
    assert deal == AllowanceDeal(30_000, 80, 24_000)
    # the seller still covers its own forecast, and carries over the rest
    assert seller.balance_msat - deal.allowance_msat >= seller.cost_msat
    assert seller.balance_msat - deal.allowance_msat - seller.cost_msat == 20_335
    split = allowance_deal(
        offered_msat=half, requested_msat=buyer.need_msat, price_pct=80, max_price_pct=90
    )
    assert split == AllowanceDeal(25_167, 80, 20_134)  # 20_133.6, rounded up
    dear = allowance_deal(
        offered_msat=sell, requested_msat=buyer.need_msat, price_pct=95, max_price_pct=90
    )
    assert dear is None
    # 14 intervals left: nothing is offered yet
    assert leftover_msat(50_335, LeftoverPolicy.parse("sell"), intervals_left=14) == 0


@given(
    headroom=st.integers(0, 10**12),
    share=st.fractions(min_value=0, max_value=1, max_denominator=1000),
    left=st.integers(0, 100),
    window=st.integers(1, 100),
    balance_extra=st.integers(0, 10**12),
)
def test_the_leftover_is_never_what_the_forecast_needs(
    headroom: int, share: Fraction, left: int, window: int, balance_extra: int
) -> None:
    offered = leftover_msat(headroom, LeftoverPolicy(share), intervals_left=left, window=window)
    assert 0 <= offered <= headroom
    cost = balance_extra  # any forecast cost: the balance is cost + headroom
    assert (cost + headroom) - offered >= cost
    if left > window:
        assert offered == 0


@given(
    offered=st.integers(0, 10**12),
    requested=st.integers(0, 10**12),
    pct=st.integers(1, 100),
    max_pct=st.integers(0, 100),
)
def test_the_price_rule(offered: int, requested: int, pct: int, max_pct: int) -> None:
    deal = allowance_deal(
        offered_msat=offered, requested_msat=requested, price_pct=pct, max_price_pct=max_pct
    )
    if pct > max_pct or min(offered, requested) == 0:
        assert deal is None
        return
    assert deal is not None
    assert deal.allowance_msat == min(offered, requested)
    assert deal.price_msat * 100 >= deal.allowance_msat * pct  # rounded up...
    assert (deal.price_msat - 1) * 100 < deal.allowance_msat * pct  # ...once
    assert deal.price_msat <= deal.allowance_msat  # never above face value


@given(
    balances=st.lists(st.integers(0, 10**9), min_size=2, max_size=6),
    trades=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 10**9)), max_size=20
    ),
)
def test_allowance_and_sats_are_conserved(
    balances: list[int], trades: list[tuple[int, int, int]]
) -> None:
    """Deals applied to balances (each seller offering all it has): the site's
    allowance is unchanged and the sats paid equal the sats earned."""
    allowance = list(balances)
    paid = [0] * len(balances)
    earned = [0] * len(balances)
    for s, b, want in trades:
        s, b = s % len(balances), b % len(balances)
        if s == b:
            continue
        deal = allowance_deal(
            offered_msat=allowance[s], requested_msat=want, price_pct=80, max_price_pct=90
        )
        if deal is None:
            continue
        allowance[s] -= deal.allowance_msat
        allowance[b] += deal.allowance_msat
        paid[b] += deal.price_msat
        earned[s] += deal.price_msat
        assert min(allowance) >= 0
    assert sum(allowance) == sum(balances)
    assert sum(paid) == sum(earned)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(MarketError):
        allowance_price_msat(10, 0)
    with pytest.raises(MarketError):
        allowance_price_msat(10, 101)
    with pytest.raises(MarketError):
        allowance_deal(offered_msat=-1, requested_msat=1, price_pct=80, max_price_pct=90)
    with pytest.raises(MarketError):
        leftover_msat(-1, LeftoverPolicy.parse("sell"), intervals_left=1)
