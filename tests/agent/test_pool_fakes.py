"""The EnergyDesk's pooled rounds against fake Lightning and fake peers (real
SQLite logs, replicated at once by the rig): several producers are paid in one
round at one price; every buyer pays exactly its trades of the clearing it
recomputes, each once, logged with its fee in the round's period; a wrong offer
or invoice is refused and pays nothing; a seller sells on one book per round;
and a replica's check of the log finds every forged sale. Reconciliation (lnd
against the log, to the msat) passes after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from p2pgrid.agent.config import EnergyConfig
from p2pgrid.agent.energy import ENERGY_PROTOCOL, EnergyDesk
from p2pgrid.agent.messages import SaleOffer, TradeRequest
from p2pgrid.agent.payguard import sale_memo
from p2pgrid.agent.rounds import check_pooled_sales, order_of, round_book
from p2pgrid.ledger import Cleared, Entry, EntryKind, Order, Payment, Sale
from p2pgrid.lightning import InvoiceState
from p2pgrid.market import Flexibility, Party, clear_pool, deferred_wh
from p2pgrid.net import Delivery
from p2pgrid.testing.fake_lightning import FakeNode
from tests.agent.rig import Device, Rig

PERIOD = 1
ROUND = 3
RATE = 250_000  # msat per kWh: sellers ask 80 % of it, 200 000
PRICE = 200_000


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.close()


def desk(rig: Rig, device: Device, balance_msat: int = 1_000_000) -> EnergyDesk:
    async def balance(p: int) -> int:
        return balance_msat

    return rig.energy_desk(device, balance)


def own(entries: list[Entry], device: Device, kind: type) -> list[Entry]:
    return [e for e in entries if e.author.index == device.index and isinstance(e.body, kind)]


async def bid(buyer: EnergyDesk, need_wh: int) -> None:
    assert await buyer.bid(need_wh, period=PERIOD, interval=ROUND, rate_msat_per_kwh=RATE)


async def settle(rig: Rig, buyer: EnergyDesk) -> int:
    peers = [d.peers.ref for d in rig.devices if d.index != buyer.me.device]
    return await buyer.settle_round(period=PERIOD, interval=ROUND, peers=peers)


async def test_two_producers_are_paid_in_one_round_at_one_price(rig: Rig) -> None:
    devices = [await rig.device(i) for i in range(4)]
    sellers, buyers = [desk(rig, d) for d in devices[:2]], [desk(rig, d) for d in devices[2:]]
    await rig.start()
    for selling, export in zip(sellers, (60, 100), strict=True):
        ask = await selling.offer(
            period=PERIOD, interval=ROUND, export_wh=export, rate_msat_per_kwh=RATE
        )
        assert ask is not None
        assert ask.price_msat_per_kwh == PRICE
    await bid(buyers[0], 100)
    await bid(buyers[1], 50)
    # Sell blocks (200 000, dev0, 60), (200 000, dev1, 100) against buy blocks
    # (250 000, dev2, 100), (250 000, dev3, 50): 0->2 60, 1->2 40, 1->3 50; dev1
    # keeps 10 Wh at 200 000, so the price is [200 000, min(250 000, 200 000)].
    assert [await settle(rig, b) for b in buyers] == [100, 50]
    await rig.spread()
    log = await rig.site_log()
    orders = [o for e in log if (o := order_of(e, rig.site_id)) is not None]
    clearing = clear_pool(orders, period=PERIOD, interval=ROUND)
    assert clearing.price_msat_per_kwh == PRICE
    expected = {(0, 2, 60, 12_000), (1, 2, 40, 8_000), (1, 3, 50, 10_000)}
    got = {(t.seller.device, t.buyer.device, t.energy_wh, t.amount_msat) for t in clearing.trades}
    assert got == expected
    sales = {
        (e.body.seller, e.author.index, e.body.energy_wh, e.body.amount_msat)
        for e in log
        if isinstance(e.body, Sale)
    }
    assert sales == expected
    payments = [e.body for e in log if isinstance(e.body, Payment)]
    assert sorted(p.amount_msat for p in payments) == [8_000, 10_000, 12_000]
    assert all(p.fee_msat == rig.ln.route_fee_msat for p in payments)
    for seller, received in ((devices[0], 12_000), (devices[1], 18_000)):
        settled = [
            i.amt_paid_msat
            for i in await seller.node.list_invoices()
            if i.state is InvoiceState.SETTLED
        ]
        assert sum(settled) == received
    # Every trader logged one ``cleared`` entry of the one book, at the one price.
    cleared = [e for e in log if isinstance(e.body, Cleared)]
    assert sorted(e.author.index for e in cleared) == [0, 1, 2, 3]
    assert {(e.body.book_id, e.body.price_msat_per_kwh) for e in cleared} == {
        (clearing.book_id, PRICE)
    }
    assert check_pooled_sales(log, rig.site_id) == []
    assert (sellers[0].offered_wh, sellers[1].offered_wh) == (60, 90)
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_without_an_ask_a_buyer_logs_no_order(rig: Rig) -> None:
    buyer = await rig.device(2)
    buying = desk(rig, buyer)
    assert await buying.bid(50, period=PERIOD, interval=ROUND, rate_msat_per_kwh=RATE) is None
    assert own(await buyer.store.entries(), buyer, Order) == []


async def test_one_order_per_device_and_round(rig: Rig) -> None:
    seller = await rig.device(0)
    selling = desk(rig, seller)
    first = await selling.offer(period=PERIOD, interval=ROUND, export_wh=50, rate_msat_per_kwh=RATE)
    again = await selling.offer(period=PERIOD, interval=ROUND, export_wh=70, rate_msat_per_kwh=RATE)
    assert first is not None
    assert again is None
    assert len(own(await seller.store.entries(), seller, Order)) == 1


async def test_a_trade_below_one_sat_is_not_made(rig: Rig) -> None:
    seller, buyer = await rig.device(0), await rig.device(1)
    selling, buying = desk(rig, seller), desk(rig, buyer)
    await rig.start()
    await selling.offer(period=PERIOD, interval=ROUND, export_wh=100, rate_msat_per_kwh=RATE)
    await bid(buying, 2)  # 2 Wh at 200 msat/Wh = 400 msat: from the grid instead
    assert await settle(rig, buying) == 0
    assert await seller.node.list_invoices() == []
    assert any("smallest payment" in r for r in buying.refused), buying.refused
    assert (await rig.reconcile()).ok


WrongSale = Callable[[Rig, FakeNode, TradeRequest], Awaitable[SaleOffer]]
# The honest trade of these tests: dev0 asks 100 Wh at 200 000, dev1 bids 50 Wh
# at 250 000: 50 Wh at 200 000 msat/kWh, 10 000 msat.


async def _sale_to_another_node(rig: Rig, seller: FakeNode, req: TradeRequest) -> SaleOffer:
    memo = sale_memo(req.book_id, rig.party(0), rig.party(1), 50, 10_000)
    invoice = await rig.mallory.add_invoice(10_000, memo)
    return SaleOffer(req.book_id, 50, 10_000, invoice.payment_request)


async def _sale_of_another_book(rig: Rig, seller: FakeNode, req: TradeRequest) -> SaleOffer:
    memo = sale_memo(b"\x09" * 32, rig.party(0), rig.party(1), 50, 10_000)
    invoice = await seller.add_invoice(10_000, memo)
    return SaleOffer(req.book_id, 50, 10_000, invoice.payment_request)


async def _offer_of_another_book(rig: Rig, seller: FakeNode, req: TradeRequest) -> SaleOffer:
    memo = sale_memo(b"\x09" * 32, rig.party(0), rig.party(1), 50, 10_000)
    invoice = await seller.add_invoice(10_000, memo)
    return SaleOffer(b"\x09" * 32, 50, 10_000, invoice.payment_request)


async def _sale_above_the_clearing(rig: Rig, seller: FakeNode, req: TradeRequest) -> SaleOffer:
    memo = sale_memo(req.book_id, rig.party(0), rig.party(1), 50, 12_500)
    invoice = await seller.add_invoice(12_500, memo)
    return SaleOffer(req.book_id, 50, 12_500, invoice.payment_request)


async def _sale_bolt11_for_more(rig: Rig, seller: FakeNode, req: TradeRequest) -> SaleOffer:
    memo = sale_memo(req.book_id, rig.party(0), rig.party(1), 50, 10_000)
    invoice = await seller.add_invoice(12_000, memo)
    return SaleOffer(req.book_id, 50, 10_000, invoice.payment_request)


async def _sale_expired(rig: Rig, seller: FakeNode, req: TradeRequest) -> SaleOffer:
    memo = sale_memo(req.book_id, rig.party(0), rig.party(1), 50, 10_000)
    invoice = await seller.add_invoice(10_000, memo, expiry_s=5)
    rig.clock.t += 6
    return SaleOffer(req.book_id, 50, 10_000, invoice.payment_request)


@pytest.mark.parametrize(
    ("wrong", "why"),
    [
        (_sale_to_another_node, "pays node"),
        (_sale_of_another_book, "is for"),
        (_offer_of_another_book, "another book"),
        (_sale_above_the_clearing, "not the cleared trade"),
        (_sale_bolt11_for_more, "asks 12000 msat"),
        (_sale_expired, "expires"),
    ],
)
async def test_a_wrong_sale_invoice_is_refused_and_pays_nothing(
    rig: Rig, wrong: WrongSale, why: str
) -> None:
    seller, buyer = await rig.device(0), await rig.device(1)
    selling, buying = desk(rig, seller), desk(rig, buyer)
    await rig.start()
    await selling.offer(period=PERIOD, interval=ROUND, export_wh=100, rate_msat_per_kwh=RATE)
    await bid(buying, 50)

    async def lying_seller(delivery: Delivery) -> SaleOffer:
        return await wrong(rig, seller.node, delivery.decode(TradeRequest))

    seller.peers.handle(ENERGY_PROTOCOL, lying_seller)
    assert await settle(rig, buying) == 0
    assert buyer.node.attempts == []
    assert [why in r for r in buying.refused] == [True], buying.refused
    assert own(await buyer.store.entries(), buyer, Payment) == []
    assert (await rig.reconcile()).ok


async def test_a_seller_sells_on_one_book_per_round(rig: Rig) -> None:
    """Buyer 2's order reached the seller but not buyer 3 before the close: buyer
    3 clears a book without it, and the seller, having invoiced on that book,
    refuses buyer 2's (another) book: it never sells more than it asked."""
    seller, late, early = await rig.device(0), await rig.device(2), await rig.device(3)
    selling, buying_late, buying_early = desk(rig, seller), desk(rig, late), desk(rig, early)
    await rig.start()
    await selling.offer(period=PERIOD, interval=ROUND, export_wh=60, rate_msat_per_kwh=RATE)
    rig.cut = {3}  # buyer 3 hears nothing for a while
    await bid(buying_late, 50)
    await bid(buying_early, 50)
    assert await settle(rig, buying_early) == 50  # its book: dev0 and dev3
    rig.cut = set()
    await rig.spread()
    assert await settle(rig, buying_late) == 0  # its book: dev0, dev2 and dev3
    assert any("another book" in r for r in buying_late.refused), buying_late.refused
    log = await rig.site_log()
    assert [e.author.index for e in log if isinstance(e.body, Sale)] == [3]
    assert check_pooled_sales(log, rig.site_id) == []
    assert (await rig.reconcile()).ok


async def test_a_replica_finds_a_sale_that_no_clearing_says(rig: Rig) -> None:
    seller, buyer = await rig.device(0), await rig.device(1)
    selling, buying = desk(rig, seller), desk(rig, buyer)
    await rig.start()
    await selling.offer(period=PERIOD, interval=ROUND, export_wh=100, rate_msat_per_kwh=RATE)
    await bid(buying, 50)
    assert await settle(rig, buying) == 50
    at_ms = int(rig.clock() * 1000)
    await buyer.writer.append(Sale(0, 50, 10_000), period=PERIOD, timestamp_ms=at_ms)  # twice
    await buyer.writer.append(
        Cleared(ROUND + 1, PRICE, bytes(32), "0000000000000001"), period=PERIOD, timestamp_ms=at_ms
    )
    await rig.spread()
    problems = check_pooled_sales(await rig.site_log(), rig.site_id)
    assert len(problems) == 2, problems
    assert "not the book it names" in problems[0]
    assert "no trade of its clearings" in problems[1]


async def test_a_seller_checks_the_book_against_its_own_replica(rig: Rig) -> None:
    seller, buyer = await rig.device(0), await rig.device(1)
    selling, buying = desk(rig, seller), desk(rig, buyer)
    await rig.start()
    await selling.offer(period=PERIOD, interval=ROUND, export_wh=100, rate_msat_per_kwh=RATE)
    await bid(buying, 50)
    entries = await buyer.store.entries(period=PERIOD)
    book = round_book(entries, rig.site_id, period=PERIOD, interval=ROUND)
    lie = TradeRequest(PERIOD, ROUND, b"\x07" * 32, book.devices)
    reply = selling._on_trade(buyer.peers._delivery(ENERGY_PROTOCOL, lie))
    with pytest.raises(Exception, match="another book"):
        await reply
    assert await seller.node.list_invoices() == []
    kinds = {e.kind for e in await seller.store.entries() if e.author.index == 0}
    assert EntryKind.CLEARED not in kinds
    assert Party(rig.site_id, 0) in {t.seller for t in book.clearing.trades}


async def test_a_flexible_ev_buys_more_when_cheap_and_defers_when_dear(rig: Rig) -> None:
    """Its curve: 50 Wh firm at 250 000, then 16, 17, 17 Wh at 225 000, 175 000
    and 125 000 msat/kWh. A roof asking 40 % of the tariff sells it all 100 Wh
    at 100 000; a roof asking 80 % clears at 200 000: the EV buys 66 Wh and
    defers the 34 Wh it bid below that price."""
    cheap, dear, ev = await rig.device(0), await rig.device(1), await rig.device(2)
    selling_cheap, selling_dear = desk(rig, cheap), desk(rig, dear)
    selling_cheap.config = EnergyConfig(ask_pct=40)
    buying = desk(rig, ev)
    await rig.start()
    flex = Flexibility(flexible_pct=50, top_pct=90, floor_pct=50, steps=3)
    got = []
    for interval, seller in ((ROUND, selling_cheap), (ROUND + 1, selling_dear)):
        assert await seller.offer(
            period=PERIOD, interval=interval, export_wh=1_000, rate_msat_per_kwh=RATE
        )
        plan = await buying.bid_plan(
            100, period=PERIOD, interval=interval, rate_msat_per_kwh=RATE, flex=flex
        )
        assert plan is not None
        peers = [d.peers.ref for d in rig.devices if d.index != ev.index]
        bought = await buying.settle_round(period=PERIOD, interval=interval, peers=peers)
        price = await buying.round_price(period=PERIOD, interval=interval)
        assert price is not None
        got.append((price, bought, deferred_wh(plan, price)))
    assert got == [(100_000, 100, 0), (200_000, 66, 34)]
    await rig.spread()
    assert check_pooled_sales(await rig.site_log(), rig.site_id) == []
    assert (await rig.reconcile()).ok


async def test_a_late_bid_does_not_reprice_a_settled_round(rig: Rig) -> None:
    """The EV settled its round at 100 000 msat/kWh (all 100 Wh bought); then a
    bid for 2 000 Wh at the tariff reaches its replica, and the book would now
    clear higher. The round's price for the EV stays the one it settled at: its
    flexible steps were all bought, nothing is deferred (before, the new price
    deferred 50 Wh on top of the 100 bought, a negative draw from the grid)."""
    roof, ev, late = await rig.device(0), await rig.device(1), await rig.device(2)
    selling, buying = desk(rig, roof), desk(rig, ev)
    selling.config = EnergyConfig(ask_pct=40)
    await rig.start()
    assert await selling.offer(
        period=PERIOD, interval=ROUND, export_wh=1_000, rate_msat_per_kwh=RATE
    )
    flex = Flexibility(flexible_pct=50, top_pct=90, floor_pct=50, steps=3)
    plan = await buying.bid_plan(
        100, period=PERIOD, interval=ROUND, rate_msat_per_kwh=RATE, flex=flex
    )
    assert plan is not None
    bought = await settle(rig, buying)
    assert bought == 100
    await bid(desk(rig, late), 2_000)
    await rig.spread()
    entries = await ev.store.entries(period=PERIOD)
    book = round_book(entries, rig.site_id, period=PERIOD, interval=ROUND)
    assert book.clearing.price_msat_per_kwh > 100_000  # the book now clears higher
    price = await buying.round_price(period=PERIOD, interval=ROUND)
    assert price == 100_000
    assert bought + deferred_wh(plan, price) <= 100


async def test_flexible_load_priced_below_every_ask_is_deferred_without_a_trade(rig: Rig) -> None:
    seller, ev = await rig.device(0), await rig.device(1)
    selling, buying = desk(rig, seller), desk(rig, ev)
    await rig.start()
    await selling.offer(period=PERIOD, interval=ROUND, export_wh=500, rate_msat_per_kwh=RATE)
    all_flexible = Flexibility(flexible_pct=100, top_pct=60, floor_pct=40, steps=2)
    plan = await buying.bid_plan(
        80, period=PERIOD, interval=ROUND, rate_msat_per_kwh=RATE, flex=all_flexible
    )
    assert plan is not None
    assert [s.price_msat_per_kwh for s in plan.steps] == [150_000, 100_000]
    assert await settle(rig, buying) == 0  # nobody sells at 150 000 or less
    assert await buying.round_price(period=PERIOD, interval=ROUND) == PRICE  # the cheapest ask
    assert deferred_wh(plan, PRICE) == 80
