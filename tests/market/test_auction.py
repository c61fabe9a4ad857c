"""The double auction: one price, exact payments, order-independent, market cleared."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.market import (
    PERIOD_WIDE,
    Ask,
    Bid,
    Clearing,
    MarketError,
    Party,
    Trade,
    book_id,
    check_clearing,
    clear,
    max_bid_energy,
    net_msat,
    net_wh,
)
from tests.market.strategies import INTERVAL, PERIOD, asks, bids, near_prices

S = "00000000000000aa"
K = 1000  # msat/kWh per msat/Wh


def p(i: int) -> Party:
    return Party(S, i)


def run(a: Sequence[Ask], b: Sequence[Bid]) -> Clearing:
    return clear(a, b, period=PERIOD, interval=INTERVAL)


def ask(i: int, wh: int, price: int) -> Ask:
    return Ask(p(i), PERIOD, INTERVAL, wh, price)


def bid(i: int, wh: int, price: int) -> Bid:
    return Bid(p(i), PERIOD, INTERVAL, wh, price)


def test_worked_example_from_docs() -> None:
    a = [ask(1, 100, 100 * K), ask(2, 200, 120 * K), ask(3, 100, 150 * K)]
    b = [bid(4, 150, 160 * K), bid(5, 100, 130 * K), bid(6, 100, 110 * K)]
    c = run(a, b)
    assert c.price_msat_per_kwh == 120 * K
    assert [(t.seller.device, t.buyer.device, t.energy_wh, t.amount_msat) for t in c.trades] == [
        (1, 4, 100, 12_000),
        (2, 4, 50, 6_000),
        (2, 5, 100, 12_000),
    ]
    assert c.book_id == book_id([*a, *b])
    assert net_msat(c) == {p(1): 12_000, p(2): 18_000, p(4): -18_000, p(5): -12_000}


def test_a_single_pair_clears_at_the_midpoint_rounded_down_to_the_tick() -> None:
    c = run([ask(1, 100, 100 * K)], [bid(2, 100, 131 * K)])
    assert c.price_msat_per_kwh == 115 * K
    assert c.trades[0].amount_msat == 11_500


def test_an_unmatched_bid_above_the_midpoint_raises_the_price() -> None:
    """The buyer at 150 is left wanting 50 Wh: at a price below 150 it would
    outbid the matched buyers, so the price is no lower than its bid."""
    c = run([ask(1, 100, 100 * K)], [bid(2, 50, 200 * K), bid(3, 100, 150 * K)])
    assert c.price_msat_per_kwh == 150 * K


def test_no_cross_no_trade() -> None:
    c = run([ask(1, 100, 200 * K)], [bid(2, 100, 100 * K)])
    assert (c.price_msat_per_kwh, c.trades) == (0, ())
    assert run([], []).trades == ()


def test_ties_go_to_the_lower_device_index() -> None:
    c = run([ask(7, 50, 100 * K), ask(3, 50, 100 * K)], [bid(9, 50, 100 * K)])
    assert [t.seller.device for t in c.trades] == [3]


def test_a_party_on_both_sides_is_left_out() -> None:
    c = run(
        [ask(1, 100, 100 * K), ask(2, 100, 110 * K)], [bid(1, 100, 200 * K), bid(3, 50, 200 * K)]
    )
    assert {t.seller.device for t in c.trades} == {2}
    assert {t.buyer.device for t in c.trades} == {3}


def test_orders_of_another_round_are_refused() -> None:
    with pytest.raises(MarketError, match="round"):
        run([Ask(p(1), PERIOD, PERIOD_WIDE, 1, K)], [])


def test_a_clearing_can_be_checked_against_its_book() -> None:
    a, b = [ask(1, 100, 100 * K)], [bid(2, 100, 130 * K)]
    c = run(a, b)
    check_clearing(c, a, b)
    with pytest.raises(MarketError, match="another order book"):
        check_clearing(c, a, [bid(2, 100, 140 * K)])
    forged = Clearing(c.period, c.interval, 130 * K, c.book_id, (Trade(p(1), p(2), 100, 13_000),))
    with pytest.raises(MarketError, match="does not follow"):
        check_clearing(forged, a, b)


def test_bids_sized_to_a_balance() -> None:
    assert max_bid_energy(10_000, 120 * K) == 83
    assert max_bid_energy(0, K) == 0
    with pytest.raises(MarketError):
        max_bid_energy(1, 1500)


books = st.tuples(st.lists(asks, max_size=15), st.lists(bids, max_size=15))


def _fair_book(a: list[Ask], b: list[Bid]) -> tuple[list[Ask], list[Bid]]:
    """The orders that take part: distinct, and no party on both sides."""
    both = {o.party for o in a} & {o.party for o in b}
    da = {o.id: o for o in a if o.party not in both}
    db = {o.id: o for o in b if o.party not in both}
    return list(da.values()), list(db.values())


@given(books, st.randoms())
def test_clearing_is_deterministic_and_independent_of_order_and_retries(
    book: tuple[list[Ask], list[Bid]], rnd: random.Random
) -> None:
    a, b = book
    c = run(a, b)
    a2 = a + [o for o in a if rnd.random() < 0.3]  # retried messages
    b2 = b + [o for o in b if rnd.random() < 0.3]
    rnd.shuffle(a2)
    rnd.shuffle(b2)
    assert run(a2, b2) == c
    assert Clearing.decode(c.encode()) == c


@given(books)
def test_sats_and_energy_are_conserved(book: tuple[list[Ask], list[Bid]]) -> None:
    c = run(*book)
    assert sum(net_msat(c).values()) == 0
    assert sum(net_wh(c).values()) == 0
    paid = sum(t.amount_msat for t in c.trades)
    assert paid * K == sum(t.energy_wh for t in c.trades) * c.price_msat_per_kwh


@given(books)
def test_everyone_trades_within_its_orders_and_the_market_clears(
    book: tuple[list[Ask], list[Bid]],
) -> None:
    a, b = _fair_book(*book)
    c = run(*book)
    price = c.price_msat_per_kwh
    sold = {party: wh for party, wh in net_wh(c).items() if wh > 0}
    bought = {party: -wh for party, wh in net_wh(c).items() if wh < 0}
    for party, wh in sold.items():  # only asks at or below the price sell
        assert wh <= sum(
            o.energy_wh for o in a if o.party == party and o.price_msat_per_kwh <= price
        )
    for party, wh in bought.items():  # only bids at or above it buy, within their max
        mine = [o for o in b if o.party == party and o.price_msat_per_kwh >= price]
        assert wh <= sum(o.energy_wh for o in mine)
        assert -net_msat(c)[party] <= sum(o.energy_wh * o.price_msat_per_kwh // K for o in mine)
    volume = sum(sold.values())
    if c.trades:
        supply = sum(o.energy_wh for o in a if o.price_msat_per_kwh <= price)
        demand = sum(o.energy_wh for o in b if o.price_msat_per_kwh >= price)
        assert volume == min(supply, demand)  # nothing left that would trade at this price
    else:
        best_ask = min((o.price_msat_per_kwh for o in a), default=None)
        best_bid = max((o.price_msat_per_kwh for o in b), default=None)
        assert best_ask is None or best_bid is None or best_ask > best_bid


one_order_each = st.tuples(
    st.lists(asks, max_size=12, unique_by=lambda o: o.party),
    st.lists(bids, max_size=12, unique_by=lambda o: o.party),
).filter(lambda ab: not {o.party for o in ab[0]} & {o.party for o in ab[1]})


@given(one_order_each)
def test_orders_left_unfilled_are_priced_at_or_beyond_the_clearing_price(
    book: tuple[list[Ask], list[Bid]],
) -> None:
    c = run(*book)
    traded = net_wh(c)
    for o in book[0]:
        assert traded.get(o.party, 0) <= o.energy_wh
        if c.trades and traded.get(o.party, 0) < o.energy_wh:
            assert o.price_msat_per_kwh >= c.price_msat_per_kwh
    for b in book[1]:
        assert -traded.get(b.party, 0) <= b.energy_wh
        if c.trades and -traded.get(b.party, 0) < b.energy_wh:
            assert b.price_msat_per_kwh <= c.price_msat_per_kwh


@given(
    st.lists(st.tuples(st.integers(0, 10**6), near_prices), max_size=8),
    st.lists(asks, max_size=10),
)
def test_no_buyer_pays_more_than_its_balance(
    buyers: list[tuple[int, int]], sellers: list[Ask]
) -> None:
    balances = {Party("00000000000000bb", i): bal for i, (bal, _) in enumerate(buyers)}
    b = [
        Bid(party, PERIOD, INTERVAL, wh, price)
        for (party, bal), (_, price) in zip(balances.items(), buyers, strict=True)
        if (wh := max_bid_energy(bal, price))
    ]
    c = run(sellers, b)
    for party, delta in net_msat(c).items():
        if party in balances:
            assert -delta <= balances[party]


@given(st.lists(asks, max_size=6), st.lists(bids, max_size=6))
def test_a_lone_side_never_trades(a: list[Ask], b: list[Bid]) -> None:
    assert run(a, []).trades == ()
    assert run([], b).trades == ()
