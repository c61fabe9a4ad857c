"""The pooled auction: one price per round for every producer and every demand
curve of a site; no buyer above its curve, no seller below its ask, msat and Wh
conserved, the same result from any order of the inputs and from the wire."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.market import (
    MAX_STEPS,
    PRICE_TICK_MSAT_PER_KWH,
    Ask,
    Bid,
    Clearing,
    DemandCurve,
    MarketError,
    MessageError,
    Order,
    Party,
    Step,
    book_id,
    check_pool_clearing,
    clear,
    clear_pool,
    decode_message,
    net_msat,
    net_wh,
    pool_orders,
)
from tests.market.strategies import INTERVAL, PERIOD, asks, curves

S = "00000000000000aa"
K = PRICE_TICK_MSAT_PER_KWH

one_per_party = st.lists(st.one_of(asks, curves), max_size=14, unique_by=lambda o: o.party)
any_orders = st.lists(st.one_of(asks, curves), max_size=14)


def p(i: int) -> Party:
    return Party(S, i)


def ask(i: int, wh: int, price: int) -> Ask:
    return Ask(p(i), PERIOD, INTERVAL, wh, price)


def curve(i: int, *steps: tuple[int, int]) -> DemandCurve:
    return DemandCurve(p(i), PERIOD, INTERVAL, tuple(Step(pr, wh) for pr, wh in steps))


def run(orders: Sequence[Order]) -> Clearing:
    return clear_pool(orders, period=PERIOD, interval=INTERVAL)


def bought(c: Clearing) -> dict[Party, int]:
    return {party: -wh for party, wh in net_wh(c).items() if wh < 0}


def sold(c: Clearing) -> dict[Party, int]:
    return {party: wh for party, wh in net_wh(c).items() if wh > 0}


def test_worked_example_of_docs_market_md() -> None:
    """Two producers, three buyers with curves (prices in sat/kWh)."""
    orders = [
        ask(1, 300, 80 * K),
        ask(2, 200, 100 * K),
        curve(3, (150 * K, 100), (110 * K, 100), (90 * K, 100)),
        curve(4, (120 * K, 150)),
        curve(5, (100 * K, 100), (70 * K, 200)),
    ]
    c = run(orders)
    # walk: 1->3 100 @150, 1->4 150 @120, 1->3 50 @110; 2->3 50 @110; 2->5 100 @100
    # (ask 2 at 100 <= block at 100); then ask 2 (50 Wh left at 100) vs 3's 90: stop.
    assert c.price_msat_per_kwh == 100 * K
    assert [(t.seller.device, t.buyer.device, t.energy_wh, t.amount_msat) for t in c.trades] == [
        (1, 3, 150, 15_000),
        (1, 4, 150, 15_000),
        (2, 3, 50, 5_000),
        (2, 5, 100, 10_000),
    ]
    assert net_msat(c) == {p(1): 30_000, p(2): 15_000, p(3): -20_000, p(4): -15_000, p(5): -10_000}
    assert c.book_id == book_id(orders)


def test_flat_curves_clear_as_the_per_producer_auction() -> None:
    a = [ask(1, 100, 100 * K), ask(2, 200, 120 * K), ask(3, 100, 150 * K)]
    b = [
        Bid(p(4), PERIOD, INTERVAL, 150, 160 * K),
        Bid(p(5), PERIOD, INTERVAL, 100, 130 * K),
        Bid(p(6), PERIOD, INTERVAL, 100, 110 * K),
    ]
    pooled = run([*a, *map(DemandCurve.flat, b)])
    single = clear(a, b, period=PERIOD, interval=INTERVAL)
    assert (pooled.price_msat_per_kwh, pooled.trades) == (single.price_msat_per_kwh, single.trades)
    assert pooled.price_msat_per_kwh == 120 * K


def test_a_party_with_two_orders_trades_nothing_but_counts_in_the_book() -> None:
    cheap = ask(1, 100, 50 * K)
    lie = [ask(2, 100, 10 * K), curve(2, (200 * K, 100))]
    c = run([cheap, *lie, curve(3, (100 * K, 100))])
    assert {t.seller for t in c.trades} | {t.buyer for t in c.trades} == {p(1), p(3)}
    assert c.book_id == book_id([cheap, *lie, curve(3, (100 * K, 100))])
    two_asks = run([ask(1, 100, 50 * K), ask(1, 50, 60 * K), curve(3, (100 * K, 100))])
    assert two_asks.trades == ()


def test_no_cross_no_trade_and_orders_of_another_round_are_refused() -> None:
    assert run([ask(1, 100, 200 * K), curve(2, (100 * K, 100))]).trades == ()
    assert run([]).price_msat_per_kwh == 0
    other = Ask(p(1), PERIOD, INTERVAL + 1, 100, 100 * K)
    with pytest.raises(MarketError, match="not an order of round"):
        run([other])
    with pytest.raises(MarketError, match="not an order of the pooled auction"):
        run([Bid(p(1), PERIOD, INTERVAL, 100, 100 * K)])  # type: ignore[list-item]


def test_curves_are_canonical_and_bounded() -> None:
    with pytest.raises(MessageError, match="strictly descending"):
        curve(1, (100 * K, 10), (100 * K, 10))
    with pytest.raises(MessageError, match="strictly descending"):
        curve(1, (100 * K, 10), (120 * K, 10))
    with pytest.raises(MessageError, match=r"1\.\.32 steps"):
        curve(1)
    with pytest.raises(MessageError, match=r"1\.\.32 steps"):
        curve(1, *(((i + 1) * K, 1) for i in range(MAX_STEPS + 1)))
    with pytest.raises(MessageError, match="at most"):
        curve(1, (2 * K, 6 * 10**8), (K, 6 * 10**8))
    with pytest.raises(MessageError, match="multiple of 1000"):
        Step(1500, 10)
    c = curve(1, (150 * K, 10), (100 * K, 20))
    assert (c.demand_wh(200 * K), c.demand_wh(150 * K), c.demand_wh(101 * K)) == (0, 10, 10)
    assert (c.demand_wh(100 * K), c.demand_wh(K), c.energy_wh) == (30, 30, 30)


def test_curve_layout_round_trips_and_refuses_extra_bytes() -> None:
    c = curve(1, (150 * K, 10), (100 * K, 20))
    data = c.encode()
    assert data.hex() == (
        "01" "00000000000000aa00000001" "00000003" "00000011" "0002"
        "00000000000249f0" "000000000000000a" "00000000000186a0" "0000000000000014"
    )  # fmt: skip
    assert decode_message(DemandCurve.KIND, data) == c
    with pytest.raises(MessageError):
        DemandCurve.decode(data + b"\0")
    with pytest.raises(MessageError, match="steps exceed"):
        DemandCurve.decode(data[:21] + (MAX_STEPS + 1).to_bytes(2, "big") + data[23:])


@given(one_per_party)
def test_no_buyer_above_its_curve_no_seller_below_its_ask(orders: list[Order]) -> None:
    c = run(orders)
    price = c.price_msat_per_kwh
    by_party = {o.party: o for o in orders}
    for seller, wh in sold(c).items():
        order = by_party[seller]
        assert isinstance(order, Ask)
        assert order.price_msat_per_kwh <= price
        assert wh <= order.energy_wh
    for buyer, wh in bought(c).items():
        order = by_party[buyer]
        assert isinstance(order, DemandCurve)
        assert wh <= order.demand_wh(price)  # it takes no more than it wants at that price
        # and pays no more than its curve's price for each Wh it got, best steps first
        paid = -net_msat(c)[buyer]
        left, worth = wh, 0
        for step in order.steps:
            take = min(left, step.energy_wh)
            worth, left = worth + take * step.price_msat_per_kwh, left - take
        assert paid * 1000 <= worth


@given(one_per_party)
def test_the_market_is_cleared_at_its_price(orders: list[Order]) -> None:
    """Every seller that asked below the price sold all; every buyer got all it
    wants at any price above the clearing price."""
    c = run(orders)
    price = c.price_msat_per_kwh
    if not c.trades:
        top_bid = max(
            (o.steps[0].price_msat_per_kwh for o in orders if isinstance(o, DemandCurve)), default=0
        )
        low_ask = min((o.price_msat_per_kwh for o in orders if isinstance(o, Ask)), default=10**18)
        assert low_ask > top_bid
        return
    for order in orders:
        if isinstance(order, Ask) and order.price_msat_per_kwh < price:
            assert sold(c).get(order.party, 0) == order.energy_wh
        if isinstance(order, DemandCurve):
            assert bought(c).get(order.party, 0) >= order.demand_wh(price + K)


@given(any_orders)
def test_msat_and_wh_are_conserved_and_exact(orders: list[Order]) -> None:
    c = run(orders)
    assert sum(net_msat(c).values()) == 0
    assert sum(net_wh(c).values()) == 0
    assert sum(sold(c).values()) == sum(bought(c).values())
    for t in c.trades:
        assert t.amount_msat * 1000 == t.energy_wh * c.price_msat_per_kwh  # nothing rounded
    _, asks_in, curves_in = pool_orders(orders, period=PERIOD, interval=INTERVAL)
    taking = {o.party for o in [*asks_in, *curves_in]}
    assert set(net_wh(c)) <= taking  # a party with several orders trades nothing


@given(any_orders, st.randoms(use_true_random=False))
def test_the_result_does_not_depend_on_arrival_order_or_retries(
    orders: list[Order], rnd: random.Random
) -> None:
    shuffled = [*orders, *orders[:3]]  # a retried message counts once
    rnd.shuffle(shuffled)
    assert run(shuffled) == run(orders)


@given(any_orders)
def test_a_replica_recomputes_the_clearing_from_the_wire(orders: list[Order]) -> None:
    c = run(orders)
    received = [decode_message(o.KIND, o.encode()) for o in orders]
    published = Clearing.decode(c.encode())
    check_pool_clearing(published, received)  # type: ignore[arg-type]
    if c.trades:
        t = c.trades[0]
        cheaper = c.price_msat_per_kwh - K
        if cheaper > 0:
            lie = dataclasses.replace(
                c,
                price_msat_per_kwh=cheaper,
                trades=tuple(
                    dataclasses.replace(x, amount_msat=x.energy_wh * cheaper // K) for x in c.trades
                ),
            )
            with pytest.raises(MarketError, match="does not follow"):
                check_pool_clearing(lie, orders)
        with pytest.raises(MarketError, match="another order book"):
            check_pool_clearing(c, [o for o in orders if o.party != t.buyer])


@given(one_per_party)
def test_the_volume_is_the_largest_one_price_allows(orders: list[Order]) -> None:
    """Q = max over prices p of min(S(p), D(p)): supply asked at or below p,
    demand of every curve at p (S and D change only at the orders' prices)."""
    c = run(orders)
    asks_in = [o for o in orders if isinstance(o, Ask)]
    curves_in = [o for o in orders if isinstance(o, DemandCurve)]
    prices = {o.price_msat_per_kwh for o in asks_in}
    prices |= {s.price_msat_per_kwh for o in curves_in for s in o.steps}

    def volume(price: int) -> int:
        supply = sum(o.energy_wh for o in asks_in if o.price_msat_per_kwh <= price)
        return min(supply, sum(o.demand_wh(price) for o in curves_in))

    assert sum(t.energy_wh for t in c.trades) == max(map(volume, prices), default=0)
    if c.trades:
        assert volume(c.price_msat_per_kwh) == sum(t.energy_wh for t in c.trades)
