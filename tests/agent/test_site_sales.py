"""Energy bought from a producer of another site (docs/market.md, section 6.3):
the ``site_sale`` entries of both sites' logs, the replicas' check
(:func:`p2pgrid.agent.transit.check_site_sales`), the folds (the buyer debited,
the seller credited only on the buyer's signed purchase) and the grid fee on
the buyer's bill (docs/market.md, section 7)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgrid.agent.rounds import book_text, order_text
from p2pgrid.agent.transit import check_site_sales
from p2pgrid.billing import FlatTariff, grid_fee_msat, invoice_memo
from p2pgrid.ledger import (
    Allocation,
    Author,
    BodyError,
    Cleared,
    Entry,
    EntryKind,
    MeterReading,
    Order,
    SaleSide,
    SiteSale,
    bill,
    decode_entry,
    fold,
)
from p2pgrid.ledger.bills import transit_wh
from p2pgrid.market import Ask, DemandCurve, Party, Step, clear_pool
from tests.ledger.ledger_factory import T0_MS, Chain, Site

BUYERS = Site.make(b"site sales: the buyers' site")
SELLERS = Site.make(b"site sales: the producers' site")
STRANGERS = Site.make(b"site sales: a site nobody trades with")
X, Y = BUYERS.membership.site_hash, SELLERS.membership.site_hash
PEERS_OF_X = {Y: SELLERS.membership}
PEERS_OF_Y = {X: BUYERS.membership}
PERIOD, ROUND = 1, 5
PRICE = 200_000  # msat/kWh, the ask's
TARIFF = FlatTariff(250_000, grid_fee_msat_per_kwh=30_000)
HASH = hashlib.sha256(b"preimage").digest()


def ask_entry(site: Site, device: int, energy_wh: int, *, interval: int = ROUND) -> Entry:
    ask = Ask(Party(site.identity.site_id, device), PERIOD, interval, energy_wh, PRICE)
    return site.chain(Author.device(device)).next(Order(interval, order_text(ask)), period=PERIOD)


def bought(
    chain: Chain, order: Entry, energy_wh: int, *, amount: int | None = None, site: bytes = Y
) -> Entry:
    body = SiteSale(
        SaleSide.BOUGHT,
        site,
        order.author.index,
        ROUND,
        energy_wh,
        energy_wh * PRICE // 1000 if amount is None else amount,
        HASH,
        order.raw,
    )
    return chain.next(body, period=PERIOD, ts=T0_MS + 10_000 * len(chain.entries))


def sold(chain: Chain, purchase: Entry, *, site: bytes = X) -> Entry:
    p = purchase.body
    assert isinstance(p, SiteSale)
    body = SiteSale(
        SaleSide.SOLD,
        site,
        purchase.author.index,
        p.interval,
        p.energy_wh,
        p.amount_msat,
        p.payment_hash,
        purchase.raw,
    )
    return chain.next(body, period=PERIOD, ts=T0_MS + 10_000 * len(chain.entries))


@dataclass
class Trade:
    """Device 1 of the buyers' site buys 60 of device 2's 100 Wh: both logs."""

    order: Entry
    seller: Chain
    buyer: Chain
    purchase: Entry
    sale: Entry

    @property
    def buyers_log(self) -> list[Entry]:
        return list(self.buyer.entries)

    @property
    def sellers_log(self) -> list[Entry]:
        return [self.order, *self.seller.entries[1:]]


def a_trade(energy_wh: int = 60, ask_wh: int = 100) -> Trade:
    seller = SELLERS.chain(Author.device(2))
    ask = Ask(Party(SELLERS.identity.site_id, 2), PERIOD, ROUND, ask_wh, PRICE)
    order = seller.next(Order(ROUND, order_text(ask)), period=PERIOD)
    buyer = BUYERS.chain(Author.device(1))
    purchase = bought(buyer, order, energy_wh)
    sale = sold(seller, purchase)
    return Trade(order, seller, buyer, purchase, sale)


def test_an_honest_trade_checks_in_both_logs_and_moves_its_amount_once() -> None:
    t = a_trade()
    assert check_site_sales(t.buyers_log, X, PEERS_OF_X) == []
    assert check_site_sales(t.sellers_log, Y, PEERS_OF_Y) == []
    alloc = BUYERS.chain(Author.owner()).next(Allocation(1, 50_000), period=PERIOD, ts=T0_MS - 1)
    buyer = fold([alloc, *t.buyers_log]).account(1, PERIOD)
    assert (buyer.bought_wh, buyer.bought_msat, buyer.transit_wh) == (60, 12_000, 60)
    assert buyer.balance_msat == 50_000 - 12_000
    seller = fold(t.sellers_log, site_hash=Y, peer_sites=PEERS_OF_Y).account(2, PERIOD)
    assert (seller.sold_wh, seller.sold_msat, seller.balance_msat) == (60, 12_000, 12_000)
    # Without the buyers' site nothing can be checked, so nothing is credited.
    assert fold(t.sellers_log, site_hash=Y).account(2, PERIOD).sold_msat == 0
    # The same purchase carried twice (two entries of the seller) is credited once.
    again = sold(t.seller, t.purchase)
    twice = fold([*t.sellers_log, again], site_hash=Y, peer_sites=PEERS_OF_Y)
    assert twice.account(2, PERIOD).sold_msat == 12_000
    assert any("not its own ask's" in p for p in check_site_sales(
        [*t.sellers_log, again], Y, PEERS_OF_Y))  # fmt: skip


def test_the_buyers_bill_has_the_grid_fee_line_on_its_transit_energy() -> None:
    t = a_trade()
    t.buyer.next(MeterReading(T0_MS, 900, 100, 25_000), period=PERIOD)
    due = bill(t.buyers_log, device=1, period=PERIOD, tariff=TARIFF)
    # energy 100 Wh x 250 sat/kWh; fee 60 Wh x 30 sat/kWh
    assert (due.energy_msat, due.transit_wh, due.grid_fee_msat) == (25_000, 60, 1_800)
    assert due.amount_msat == 26_800
    memo = invoice_memo(BUYERS.identity.site_id, 1, PERIOD, transit_wh=60, grid_fee_msat=1_800)
    assert memo.endswith("; grid fee 1800 msat on 60 Wh from other sites")
    # The seller's side is no transit: its site bills it nothing for this sale.
    assert bill(t.sellers_log, device=2, period=PERIOD, tariff=TARIFF).grid_fee_msat == 0
    assert transit_wh(t.sellers_log, device=2, period=PERIOD) == 0


def _problems_of_buyers_log(*entries: Entry) -> list[str]:
    return check_site_sales(list(entries), X, PEERS_OF_X)


def test_a_purchase_that_is_not_the_ask_it_carries_is_found() -> None:
    t = a_trade()
    chain = BUYERS.chain(Author.device(3))
    cases = {
        "not 60 Wh at the ask's price": bought(chain, t.order, 60, amount=12_001),
        "more than the ask's": bought(BUYERS.chain(Author.device(4)), t.order, 101),
        "not signed by a member": bought(
            BUYERS.chain(Author.device(5)), ask_entry(STRANGERS, 2, 100), 10
        ),
        "another seller or round": bought(
            BUYERS.chain(Author.device(6)), ask_entry(SELLERS, 2, 100, interval=ROUND + 1), 10
        ),
        "not a neighbouring site": bought(
            BUYERS.chain(Author.device(7)), t.order, 10, site=STRANGERS.membership.site_hash
        ),
    }
    for why, entry in cases.items():
        problems = _problems_of_buyers_log(entry)
        assert len(problems) == 1, (why, problems)
        assert why in problems[0], (why, problems)


def test_a_purchase_carrying_a_curve_is_found() -> None:
    curve = DemandCurve(Party(SELLERS.identity.site_id, 2), PERIOD, ROUND, (Step(PRICE, 10),))
    order = SELLERS.chain(Author.device(2)).next(Order(ROUND, order_text(curve)), period=PERIOD)
    problems = _problems_of_buyers_log(bought(BUYERS.chain(Author.device(1)), order, 10))
    assert len(problems) == 1
    assert "no ask" in problems[0]


def test_purchases_of_one_site_from_one_ask_add_up_to_at_most_the_ask() -> None:
    t = a_trade(60)
    other = bought(BUYERS.chain(Author.device(3)), t.order, 41)  # 60 + 41 > 100
    problems = check_site_sales([*t.buyers_log, other], X, PEERS_OF_X)
    assert len(problems) == 1
    assert "101 Wh, more than its ask of 100 Wh" in problems[0]
    fits = bought(BUYERS.chain(Author.device(4)), t.order, 40)
    assert check_site_sales([*t.buyers_log, fits], X, PEERS_OF_X) == []


def test_a_sale_without_the_buyers_signed_purchase_is_found_and_credits_nothing() -> None:
    t = a_trade()
    forged_purchase = bought(STRANGERS.chain(Author.device(1)), t.order, 60, site=Y)
    not_mine = bought(BUYERS.chain(Author.device(3)), ask_entry(SELLERS, 4, 100), 50)
    cases = [
        sold(t.seller, forged_purchase),  # signed by a stranger's key, not a member of X
        sold(t.seller, not_mine),  # a purchase from device 4, not from this seller
    ]
    lying = SiteSale(SaleSide.SOLD, X, 1, ROUND, 60, 99_000, HASH, t.purchase.raw)
    cases.append(t.seller.next(lying, period=PERIOD, ts=T0_MS + 99_000))  # another amount
    for entry in cases:
        log = [t.order, entry]
        assert len(check_site_sales(log, Y, PEERS_OF_Y)) == 1
        view = fold(log, site_hash=Y, peer_sites=PEERS_OF_Y)
        assert view.account(2, PERIOD).sold_msat == 0


def test_a_seller_that_sells_more_across_than_its_pool_left_is_found() -> None:
    """Device 2 asks 100 Wh; in its own site's pool it sells 70 Wh to device 3;
    selling 60 more to the other site is 130 Wh out of 100: found."""
    t = a_trade(60)
    curve = DemandCurve(Party(SELLERS.identity.site_id, 3), PERIOD, ROUND, (Step(PRICE, 70),))
    local = SELLERS.chain(Author.device(3))
    curve_entry = local.next(Order(ROUND, order_text(curve)), period=PERIOD)
    ask = Ask(Party(SELLERS.identity.site_id, 2), PERIOD, ROUND, 100, PRICE)
    clearing = clear_pool([ask, curve], period=PERIOD, interval=ROUND)
    cleared = t.seller.next(
        Cleared(ROUND, clearing.price_msat_per_kwh, clearing.book_id, book_text([2, 3])),
        period=PERIOD,
        ts=T0_MS + 500_000,
    )
    log = [*t.sellers_log, curve_entry, cleared]
    problems = check_site_sales(log, Y, PEERS_OF_Y)
    assert len(problems) == 1
    assert "sold 70 Wh in the pool and 60 Wh" in problems[0]
    fits = a_trade(30)
    log = [*fits.sellers_log, curve_entry]
    cleared = fits.seller.next(cleared.body, period=PERIOD, ts=T0_MS + 500_000)
    assert check_site_sales([*log, cleared], Y, PEERS_OF_Y) == []


@settings(max_examples=60, deadline=None)
@given(
    ask_wh=st.integers(1, 1_000),
    parts=st.lists(st.integers(1, 400), min_size=1, max_size=4),
    fee=st.integers(0, 100_000),
)
def test_check_and_fee_over_any_purchases(ask_wh: int, parts: list[int], fee: int) -> None:
    """Any purchases of one ask by several buyers of a site: the log checks iff
    they add up to at most the ask; each buyer's fee is ceil(Wh x fee / 1000),
    its own line, and the bill is the energy plus the fee."""
    order = ask_entry(SELLERS, 2, ask_wh)
    log = []
    for device, wh in enumerate(parts, start=1):
        if wh <= ask_wh:
            log.append(bought(BUYERS.chain(Author.device(device)), order, wh))
    total = sum(e.body.energy_wh for e in log if isinstance(e.body, SiteSale))
    assert (check_site_sales(log, X, PEERS_OF_X) == []) == (total <= ask_wh)
    tariff = FlatTariff(250_000, grid_fee_msat_per_kwh=fee)
    for entry in log:
        due = bill(log, device=entry.author.index, period=PERIOD, tariff=tariff)
        assert isinstance(entry.body, SiteSale)
        wh = entry.body.energy_wh
        assert due.transit_wh == wh
        assert due.grid_fee_msat == grid_fee_msat(tariff, wh) == -(-wh * fee // 1000)
        assert 0 <= due.grid_fee_msat * 1000 - wh * fee < 1000
        assert due.amount_msat == due.energy_msat + due.grid_fee_msat


def test_the_body_round_trips_at_version_4_and_refuses_a_mismatched_side() -> None:
    t = a_trade()
    again = decode_entry(t.purchase.raw, X)
    assert again == t.purchase
    assert t.purchase.raw[0] == 4
    assert t.purchase.kind is EntryKind.SITE_SALE
    with pytest.raises(BodyError, match="carries a site_sale entry"):
        SiteSale(SaleSide.SOLD, X, 1, ROUND, 60, 12_000, HASH, t.order.raw).check(
            Author.device(2).role, 2
        )
    with pytest.raises(BodyError, match="side"):
        SiteSale(2, X, 1, ROUND, 60, 12_000, HASH, t.order.raw).check(Author.device(2).role, 2)
    downgraded = bytes([3]) + t.purchase.raw[1:]
    with pytest.raises(Exception, match="version 4"):
        decode_entry(downgraded, X)
