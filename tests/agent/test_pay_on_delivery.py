"""Pay on delivery (docs/market.md, section 6.2) against fake Lightning and fake
peers, real SQLite logs: the seller's hold invoice is settled when the buyer's
``delivered`` entry shows the whole trade (``sale`` and ``payment`` logged), and
cancelled when it shows less (the buyer's sats come back, nothing but the
``delivered`` entry is logged). lnd and the log reconcile to the msat after each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.agent.config import EnergyConfig
from p2pgrid.agent.energy import EnergyDesk
from p2pgrid.agent.intents import IntentState
from p2pgrid.agent.rounds import check_pooled_sales, round_book
from p2pgrid.ledger import BalanceBook, Delivered, Entry, Payment, Sale
from p2pgrid.lightning import InvoiceState
from tests.agent.held_sale import seller_killed_while_held
from tests.agent.rig import Device, Rig

PERIOD = 1
ROUND = 3
RATE = 250_000  # sellers ask 80 %: 200 000 msat/kWh
EXPORT_WH = 60


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.close()


def desk(rig: Rig, device: Device, **config: int) -> EnergyDesk:
    async def balance(p: int) -> int:
        return 1_000_000

    settings = EnergyConfig(pay_on_delivery=True, delivery_wait_s=10.0, **config)
    return rig.energy_desk(device, balance, settings)


async def trade(rig: Rig, seller: EnergyDesk, buyer: EnergyDesk) -> int:
    """One round: the seller asks 60 Wh, the buyer bids 100 Wh and settles it;
    returns the Wh the buyer counts as not from the grid. Both desks run until
    every held sale and payment is resolved."""
    async with seller.running(), buyer.running():
        ask = await seller.offer(
            period=PERIOD, interval=ROUND, export_wh=EXPORT_WH, rate_msat_per_kwh=RATE
        )
        assert ask is not None
        curve = await buyer.bid(100, period=PERIOD, interval=ROUND, rate_msat_per_kwh=RATE)
        assert curve is not None
        peers = [d.peers.ref for d in rig.devices if d.index != buyer.me.device]
        received = await buyer.settle_round(period=PERIOD, interval=ROUND, peers=peers)
    await rig.spread()
    return received


def trade_msat(rig: Rig, log: list[Entry]) -> int:
    """The amount of the round's one trade, as any replica clears it."""
    book = round_book(log, rig.site_id, period=PERIOD, interval=ROUND)
    (only,) = book.clearing.trades
    assert only.energy_wh == EXPORT_WH
    return only.amount_msat


async def test_a_delivered_trade_is_settled_and_logged(rig: Rig) -> None:
    devices = [await rig.device(i) for i in range(2)]
    seller, buyer = desk(rig, devices[0]), desk(rig, devices[1])
    await rig.start()
    seller_before, buyer_before = devices[0].node.local_msat, devices[1].node.local_msat
    assert await trade(rig, seller, buyer) == EXPORT_WH
    log = await rig.site_log()
    delivered = [e.body for e in log if isinstance(e.body, Delivered)]
    assert [(d.interval, d.seller, d.energy_wh) for d in delivered] == [(ROUND, 0, EXPORT_WH)]
    sales = [(e.author.index, e.body.seller, e.body.energy_wh, e.body.amount_msat)
             for e in log if isinstance(e.body, Sale)]  # fmt: skip
    amount = trade_msat(rig, log)
    assert sales == [(1, 0, EXPORT_WH, amount)]
    payments = [e.body for e in log if isinstance(e.body, Payment)]
    assert [p.payment_hash for p in payments] == [delivered[0].payment_hash]
    assert seller.settled == [delivered[0].payment_hash.hex()]
    assert seller.cancelled == []
    assert buyer.bought_wh == EXPORT_WH
    invoice = await devices[0].node.lookup_invoice(delivered[0].payment_hash.hex())
    assert invoice.state is InvoiceState.SETTLED
    assert devices[0].node.local_msat == seller_before + amount
    assert devices[1].node.local_msat == buyer_before - amount - rig.ln.route_fee_msat
    assert check_pooled_sales(log, rig.site_id) == []
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_a_short_delivery_is_cancelled_and_the_buyer_keeps_its_sats(rig: Rig) -> None:
    devices = [await rig.device(i) for i in range(2)]
    seller, buyer = desk(rig, devices[0]), desk(rig, devices[1], delivered_pct=50)
    await rig.start()
    seller_before, buyer_before = devices[0].node.local_msat, devices[1].node.local_msat
    assert await trade(rig, seller, buyer) == EXPORT_WH // 2  # the rest is grid energy
    log = await rig.site_log()
    delivered = [e.body for e in log if isinstance(e.body, Delivered)]
    assert [d.energy_wh for d in delivered] == [EXPORT_WH // 2]
    payment_hash = delivered[0].payment_hash.hex()
    assert seller.cancelled == [payment_hash]
    assert seller.settled == []
    assert not [e for e in log if isinstance(e.body, Sale | Payment)]
    assert buyer.bought_wh == 0
    assert check_pooled_sales(log, rig.site_id) == []  # a short delivery, cancelled
    invoice = await devices[0].node.lookup_invoice(payment_hash)
    assert invoice.state is InvoiceState.CANCELED
    assert devices[0].node.local_msat == seller_before
    assert devices[1].node.local_msat == buyer_before  # the held sats came back
    intent = await devices[1].paymaster.intents.get(payment_hash)
    assert intent is not None
    assert intent.state is IntentState.FAILED
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def held_then_restarted(
    rig: Rig, devices: list[Device], buyer: EnergyDesk, **seller_config: int
) -> EnergyDesk:
    """One round whose seller is killed once the buyer's payment is ACCEPTED, before
    it heard the buyer's ``delivered`` entry; then a new desk of the seller (its
    node and log as they were) runs until it resolved what it found held."""
    node = devices[0].node

    async def held() -> str:
        (invoice,) = await node.list_invoices()
        await node.wait_accepted(invoice.payment_hash)
        return invoice.payment_hash

    async def restart() -> EnergyDesk:
        return desk(rig, devices[0], **seller_config)

    restarted, _, _ = await seller_killed_while_held(
        rig,
        desk(rig, devices[0], **seller_config),
        buyer,
        seller_node=node,
        seller_peers=[devices[0].peers.ref],
        held=held,
        restart=restart,
        round=(PERIOD, ROUND),
        export_wh=EXPORT_WH,
        rate_msat_per_kwh=RATE,
    )
    await rig.spread()
    return restarted


async def test_a_seller_restarted_while_the_payment_is_held_settles_it(rig: Rig) -> None:
    devices = [await rig.device(i) for i in range(2)]
    buyer = desk(rig, devices[1])
    await rig.start()
    seller_before = devices[0].node.local_msat
    restarted = await held_then_restarted(rig, devices, buyer)
    log = await rig.site_log()
    (delivered,) = [e.body for e in log if isinstance(e.body, Delivered)]
    assert restarted.settled == [delivered.payment_hash.hex()]
    amount = trade_msat(rig, log)
    sales = [(e.body.seller, e.body.energy_wh, e.body.amount_msat)
             for e in log if isinstance(e.body, Sale)]  # fmt: skip
    assert sales == [(0, EXPORT_WH, amount)]
    assert devices[0].node.local_msat == seller_before + amount
    assert buyer.bought_wh == EXPORT_WH
    assert check_pooled_sales(log, rig.site_id) == []
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_a_seller_restarted_with_a_short_delivery_held_cancels_it(rig: Rig) -> None:
    devices = [await rig.device(i) for i in range(2)]
    buyer = desk(rig, devices[1], delivered_pct=50)
    await rig.start()
    buyer_before = devices[1].node.local_msat
    restarted = await held_then_restarted(rig, devices, buyer)
    log = await rig.site_log()
    (delivered,) = [e.body for e in log if isinstance(e.body, Delivered)]
    assert restarted.cancelled == [delivered.payment_hash.hex()]
    assert not [e for e in log if isinstance(e.body, Sale | Payment)]
    assert devices[1].node.local_msat == buyer_before  # the held sats came back
    assert check_pooled_sales(log, rig.site_id) == []
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_a_restarted_seller_resumes_nothing_resolved(rig: Rig) -> None:
    devices = [await rig.device(i) for i in range(2)]
    seller, buyer = desk(rig, devices[0]), desk(rig, devices[1])
    await rig.start()
    assert await trade(rig, seller, buyer) == EXPORT_WH
    restarted = desk(rig, devices[0])
    async with restarted.running():
        pass
    assert (restarted.settled, restarted.cancelled) == ([], [])
    assert len(seller.settled) == 1
    assert seller.cancelled == []


async def test_a_held_payment_is_committed_in_the_buyers_balance_book(rig: Rig) -> None:
    """While the seller holds the buyer's payment, the buyer's book counts it as
    spent (``available``) though no entry shows it yet; settled, the sale does."""
    devices = [await rig.device(i) for i in range(2)]
    await rig.allocate(devices[1].store, 1, 1_000_000, PERIOD)
    book = BalanceBook(site_hash=rig.site.membership.site_hash)
    await book.follow(devices[1].store)

    async def logged(period: int) -> int:
        return book.balance(1, period)

    settings = EnergyConfig(pay_on_delivery=True, delivery_wait_s=10.0)
    buyer = rig.energy_desk(devices[1], logged, settings, book=book)
    seller = desk(rig, devices[0])
    async with seller.running(), buyer.running():
        ask = await seller.offer(
            period=PERIOD, interval=ROUND, export_wh=EXPORT_WH, rate_msat_per_kwh=RATE
        )
        assert ask is not None
        assert await buyer.bid(100, period=PERIOD, interval=ROUND, rate_msat_per_kwh=RATE)
        rig.cut.add(0)  # the seller does not see the delivery yet: the payment stays held
        await buyer.settle_round(period=PERIOD, interval=ROUND, peers=[devices[0].peers.ref])
        (held,) = await devices[0].node.list_invoices()
        await devices[0].node.wait_accepted(held.payment_hash)
        assert book.balance(1, PERIOD) == 1_000_000
        assert book.held_msat(1, PERIOD) == held.value_msat
        assert book.available(1, PERIOD) == 1_000_000 - held.value_msat
        rig.cut.clear()
        await rig.spread()  # the seller sees the delivery and settles
    assert seller.settled == [held.payment_hash]
    assert book.held_msat(1, PERIOD) == 0
    assert book.available(1, PERIOD) == book.balance(1, PERIOD) == 1_000_000 - held.value_msat
    book.close()
