"""Property tests of the replica's check of pooled rounds
(:func:`p2pgrid.agent.rounds.check_pooled_sales`): for any orders of a round,
the log that honest agents write (orders, one ``cleared`` per trader, one
``sale`` per trade) passes, and every forged sale or clearing in it is found."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pgrid.agent.rounds import book_text, check_pooled_sales, order_of, order_text
from p2pgrid.ledger import Author, Cleared, Delivered, Entry, Order, Payment, Sale
from p2pgrid.market import Ask, Clearing, DemandCurve, Party, Step, Trade, clear_pool
from tests.ledger.ledger_factory import Site

SITE = Site.make(b"pooled rounds properties")
SITE_ID = SITE.identity.site_id
PERIOD, ROUND = 1, 5
TICK = 1000

prices = st.integers(min_value=100, max_value=300).map(lambda p: p * TICK)
energies = st.integers(min_value=1, max_value=500)


@st.composite
def an_order(draw: st.DrawFn, device: int) -> Ask | DemandCurve | None:
    party = Party(SITE_ID, device)
    side = draw(st.sampled_from(["none", "ask", "curve"]))
    if side == "ask":
        return Ask(party, PERIOD, ROUND, draw(energies), draw(prices))
    if side == "curve":
        step_prices = sorted(draw(st.sets(prices, min_size=1, max_size=3)), reverse=True)
        steps = tuple(Step(p, draw(energies)) for p in step_prices)
        return DemandCurve(party, PERIOD, ROUND, steps)
    return None


@st.composite
def a_round(draw: st.DrawFn) -> list[Ask | DemandCurve]:
    orders = [draw(an_order(device)) for device in range(5)]
    return [o for o in orders if o is not None]


@dataclass
class Logged:
    entries: list[Entry]
    clearing: Clearing
    sales: list[Entry]


def honest_log(orders: list[Ask | DemandCurve], *, on_delivery: bool = False) -> Logged:
    """What honest agents log for a round: each order, then each trader's
    ``cleared`` entry and each buyer's sales, as the agents' desks write them;
    ``on_delivery``: each buyer's ``delivered`` entries and the payments too."""
    chains = {d: SITE.chain(Author.device(d)) for d in range(5)}
    entries = [
        chains[o.party.device].next(Order(ROUND, order_text(o)), period=PERIOD) for o in orders
    ]
    clearing = clear_pool(orders, period=PERIOD, interval=ROUND)
    book = book_text(o.party.device for o in orders)
    traders = sorted({p.device for t in clearing.trades for p in (t.seller, t.buyer)})
    for d in traders:
        body = Cleared(ROUND, clearing.price_msat_per_kwh, clearing.book_id, book)
        entries.append(chains[d].next(body, period=PERIOD))
    if on_delivery:  # each buyer's meter shows every trade, then the seller settles
        for t in clearing.trades:
            body = Delivered(ROUND, t.seller.device, t.energy_wh, payment_hash(t))
            entries.append(chains[t.buyer.device].next(body, period=PERIOD))
    sales = []
    for t in clearing.trades:
        buyer = chains[t.buyer.device]
        sales.append(buyer.next(Sale(t.seller.device, t.energy_wh, t.amount_msat), period=PERIOD))
        if on_delivery:
            proof = Payment(t.amount_msat, payment_hash(t), preimage(t), 0)
            entries.append(buyer.next(proof, period=PERIOD))
    return Logged(entries + sales, clearing, sales)


def preimage(trade: Trade) -> bytes:
    return hashlib.sha256(f"{trade.seller.device}/{trade.buyer.device}".encode()).digest()


def payment_hash(trade: Trade) -> bytes:
    return hashlib.sha256(preimage(trade)).digest()


PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(orders=a_round())
def test_an_honest_round_passes(orders: list[Ask | DemandCurve]) -> None:
    logged = honest_log(orders)
    assert check_pooled_sales(logged.entries, SITE_ID) == []
    recovered = [o for e in logged.entries if (o := order_of(e, SITE_ID)) is not None]
    assert sorted(o.id for o in recovered) == sorted(o.id for o in orders)


@PROPS
@given(orders=a_round(), data=st.data())
def test_a_forged_sale_is_found(orders: list[Ask | DemandCurve], data: st.DataObject) -> None:
    logged = honest_log(orders)
    if not logged.sales:
        return
    sale = data.draw(st.sampled_from(logged.sales))
    assert isinstance(sale.body, Sale)
    body = sale.body
    forged = data.draw(
        st.sampled_from(
            [
                body,  # the same trade paid twice
                Sale(body.seller, body.energy_wh, body.amount_msat + TICK),  # above the price
                Sale(body.seller, body.energy_wh + 1, body.amount_msat),  # more energy
            ]
        )
    )
    extra = SITE.chain(sale.author).next(forged, period=PERIOD)  # a fork: a new chain
    problems = check_pooled_sales([*logged.entries, extra], SITE_ID)
    assert any("no trade of its clearings" in p for p in problems), problems


@PROPS
@given(orders=a_round(), shift=st.sampled_from([-TICK, TICK]))
def test_a_clearing_logged_at_another_price_is_found(
    orders: list[Ask | DemandCurve], shift: int
) -> None:
    logged = honest_log(orders)
    if not logged.clearing.trades or logged.clearing.price_msat_per_kwh + shift <= 0:
        return
    trader = logged.clearing.trades[0].buyer.device
    cleared = [
        e for e in logged.entries if isinstance(e.body, Cleared) and e.author.index == trader
    ]
    assert len(cleared) == 1
    entries = [e for e in logged.entries if e is not cleared[0]]
    body = cleared[0].body
    assert isinstance(body, Cleared)
    wrong = Cleared(ROUND, body.price_msat_per_kwh + shift, body.book_id, body.book)
    entries.append(SITE.chain(Author.device(trader)).next(wrong, period=PERIOD))
    problems = check_pooled_sales(entries, SITE_ID)
    assert any("the book clears at" in p for p in problems), problems


@PROPS
@given(orders=a_round())
def test_an_honest_round_paid_on_delivery_passes(orders: list[Ask | DemandCurve]) -> None:
    logged = honest_log(orders, on_delivery=True)
    assert check_pooled_sales(logged.entries, SITE_ID) == []


def deliveries(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if isinstance(e.body, Delivered)]


@PROPS
@given(orders=a_round(), data=st.data())
def test_a_sale_paid_without_its_delivery_is_found(
    orders: list[Ask | DemandCurve], data: st.DataObject
) -> None:
    logged = honest_log(orders, on_delivery=True)
    shown = deliveries(logged.entries)
    # A buyer that logs no delivery at all in a period does not pay on delivery in
    # it, as the log tells (docs/market.md 6.2): take one of a buyer with two.
    buyers = [e.author for e in shown]
    shown = [e for e in shown if buyers.count(e.author) > 1]
    if not shown:
        return
    gone = data.draw(st.sampled_from(shown))
    entries = [e for e in logged.entries if e is not gone]
    problems = check_pooled_sales(entries, SITE_ID)
    assert any("has no delivered entry naming its payment" in p for p in problems), problems


@PROPS
@given(orders=a_round(), data=st.data())
def test_a_short_delivery_that_was_paid_is_found(
    orders: list[Ask | DemandCurve], data: st.DataObject
) -> None:
    logged = honest_log(orders, on_delivery=True)
    shown = deliveries(logged.entries)
    if not shown:
        return
    one = data.draw(st.sampled_from(shown))
    assert isinstance(one.body, Delivered)
    less = data.draw(st.integers(min_value=0, max_value=one.body.energy_wh - 1))
    short = Delivered(ROUND, one.body.seller, less, one.body.payment_hash)
    entries = [e for e in logged.entries if e is not one]
    entries.append(SITE.chain(one.author).next(short, period=PERIOD))  # a fork: a new chain
    problems = check_pooled_sales(entries, SITE_ID)
    assert any(f"on a delivery of {less} Wh" in p for p in problems), problems


@PROPS
@given(orders=a_round(), data=st.data())
def test_a_delivery_of_no_trade_or_twice_is_found(
    orders: list[Ask | DemandCurve], data: st.DataObject
) -> None:
    logged = honest_log(orders, on_delivery=True)
    shown = deliveries(logged.entries)
    if not shown:
        return
    one = data.draw(st.sampled_from(shown))
    assert isinstance(one.body, Delivered)
    buyer = one.author.index
    sellers = {t.seller.device for t in logged.clearing.trades if t.buyer.device == buyer}
    strangers = [d for d in range(6) if d not in sellers and d != buyer]
    twice = data.draw(st.booleans())
    seller = one.body.seller if twice else data.draw(st.sampled_from(strangers))
    extra = Delivered(ROUND, seller, one.body.energy_wh, one.body.payment_hash)
    forked = SITE.chain(one.author).next(extra, period=PERIOD)
    problems = check_pooled_sales([*logged.entries, forked], SITE_ID)
    wanted = "two delivered entries" if twice else "is no trade of its clearing"
    assert any(wanted in p for p in problems), problems
