"""Energy bought from a producer of a neighbouring site
(:mod:`p2pgrid.agent.transit_desk`, docs/market.md section 6.3) against fake
Lightning and fake peers, with real SQLite logs: two sites share one Lightning
network. A buyer pays exactly what the ask it was shown says, both sites log
their side (``site_sale``), every replica's check passes, the buyer's bill
carries the grid fee, the producer's own site gets only what is left of its
ask; a forged or mismatched offer or receipt is refused and changes nothing
(no payment, no entry); a receipt the producer missed (away, or the buyer
restarted) is handed again until it answers, and logged once; lnd and both logs
reconcile to the msat."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2pgrid.agent.config import EnergyConfig
from p2pgrid.agent.energy import EnergyDesk
from p2pgrid.agent.messages import SiteSaleOffer, SiteSaleReceipt, SiteTradeRequest
from p2pgrid.agent.payguard import site_sale_memo
from p2pgrid.agent.rounds import order_text
from p2pgrid.agent.transit import check_site_sales
from p2pgrid.agent.transit_desk import SITE_RECEIPT_PROTOCOL, SITE_TRADE_PROTOCOL, TransitDesk
from p2pgrid.billing import FlatTariff
from p2pgrid.ledger import (
    Author,
    Entry,
    Order,
    Payment,
    SaleSide,
    SiteSale,
    bill,
    fold,
)
from p2pgrid.ledger.activity import FlowKind, activity
from p2pgrid.market import Ask, Party
from p2pgrid.net import Delivery, RequestRejected
from p2pgrid.reconcile import Reconciliation, reconcile, site_members, snapshot
from p2pgrid.report import period_report, report_table
from tests.agent.rig import Device, Rig
from tests.ledger.ledger_factory import Site

PERIOD, ROUND = 1, 3
RATE = 250_000  # the tariff, msat/kWh; producers ask 80 %: 200 000
FEE = 30_000  # the grid fee, msat/kWh
TARIFF = FlatTariff(RATE, grid_fee_msat_per_kwh=FEE)
SELLER, LOCAL_BUYER, BUYER = 10, 11, 0  # device indices (the sites share node names)


@dataclass
class Two:
    buyers: Rig  # the buyer's site
    sellers: Rig  # the producer's site

    async def reconcile(self) -> Reconciliation:
        after = {n: await snapshot(n, node) for n, node in self.buyers.ln.nodes.items()}
        members = {}
        for rig in (self.buyers, self.sellers):
            devices = {d.index: d.name for d in rig.devices}
            members |= site_members(rig.site.membership.site_hash, devices, utility="utility")
        return reconcile(
            before=self.buyers.before,
            after=after,
            logs={
                self.buyers.site.membership.site_hash: await self.buyers.site_log(),
                self.sellers.site.membership.site_hash: await self.sellers.site_log(),
            },
            members=members,
            routers={"utility"},
        )


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    buyers = Rig(tmp_path / "x", seed=b"cross-site fakes: buyers")
    sellers = Rig(tmp_path / "y", seed=b"cross-site fakes: producers", beside=buyers)
    yield Two(buyers, sellers)
    await buyers.close()
    await sellers.close()


async def ample(period: int) -> int:
    return 1_000_000


def desks(rig: Rig, device: Device, other: Rig) -> tuple[EnergyDesk, TransitDesk]:
    energy = rig.energy_desk(device, ample, EnergyConfig(trade_sites=("the other",)))
    energy.nodes = {**rig.nodes, **other.nodes}
    transit = TransitDesk(energy, {other.site.membership.site_hash: other.site.membership})
    transit.install()
    return energy, transit


async def setup(two: Two) -> tuple[Device, TransitDesk, Device, TransitDesk]:
    """The producer asks 100 Wh of round ROUND at 200 000 msat/kWh."""
    seller = await two.sellers.device(SELLER)
    buyer = await two.buyers.device(BUYER)
    selling, seller_transit = desks(two.sellers, seller, two.buyers)
    _, buyer_transit = desks(two.buyers, buyer, two.sellers)
    await two.buyers.start()
    ask = await selling.offer(period=PERIOD, interval=ROUND, export_wh=100, rate_msat_per_kwh=RATE)
    assert ask is not None
    assert ask.price_msat_per_kwh == 200_000
    return seller, seller_transit, buyer, buyer_transit


async def buy(transit: TransitDesk, need_wh: int, fee: int = FEE) -> int:
    peers = list(transit.energy.host.peers())
    return await transit.buy(
        need_wh,
        period=PERIOD,
        interval=ROUND,
        rate_msat_per_kwh=RATE,
        fee_msat_per_kwh=fee,
        peers=peers,
    )


def sides(entries: list[Entry], side: SaleSide) -> list[SiteSale]:
    return [e.body for e in entries if isinstance(e.body, SiteSale) and e.body.side == side]


async def test_a_buyer_pays_a_producer_of_the_other_site_and_both_logs_check(two: Two) -> None:
    seller, _, buyer, buying = await setup(two)
    assert await buy(buying, 60) == 60
    x, y = two.buyers.site.membership, two.sellers.site.membership
    buyers_log, sellers_log = await two.buyers.site_log(), await two.sellers.site_log()
    [bought] = sides(buyers_log, SaleSide.BOUGHT)
    [sold] = sides(sellers_log, SaleSide.SOLD)
    assert (bought.other_device, bought.energy_wh, bought.amount_msat) == (SELLER, 60, 12_000)
    assert (sold.other_device, sold.energy_wh, sold.amount_msat) == (BUYER, 60, 12_000)
    assert [e.body.amount_msat for e in buyers_log if isinstance(e.body, Payment)] == [12_000]
    assert check_site_sales(buyers_log, x.site_hash, {y.site_hash: y}) == []
    assert check_site_sales(sellers_log, y.site_hash, {x.site_hash: x}) == []
    view = fold(sellers_log, site_hash=y.site_hash, peer_sites={x.site_hash: x})
    assert view.account(SELLER, PERIOD).sold_msat == 12_000
    # What the owners read: a flow to the other site in one log, from it in the other.
    [out] = [f for f in activity(buyers_log).flows if f.kind is FlowKind.SITE_SALE]
    [back] = [f for f in activity(sellers_log).flows if f.kind is FlowKind.SITE_SALE_IN]
    assert (out.payer, out.payee, out.other_site, out.energy_wh) == (
        BUYER,
        SELLER,
        y.site_hash.hex(),
        60,
    )
    assert (back.payer, back.payee, back.other_site) == (BUYER, SELLER, x.site_hash.hex())
    assert out.payee_abroad
    assert back.payer_abroad
    # The buyer's bill: its grid energy plus the grid fee of the 60 Wh that crossed.
    await buyer.meter(PERIOD, 40, interval=ROUND)
    due = bill(await buyer.store.entries(), device=BUYER, period=PERIOD, tariff=TARIFF)
    assert (due.energy_msat, due.transit_wh, due.grid_fee_msat) == (10_000, 60, 1_800)
    report = period_report(fold(await buyer.store.entries()), PERIOD, site="x", tariff=TARIFF)
    assert (report.transit_wh, report.grid_fee_msat) == (60, 1_800)
    table = report_table(report)
    assert [c.header for c in table.columns][9:11] == ["transit Wh", "grid fee sat"]
    assert "grid fee 1.800 sat on 60 Wh" in str(table.caption)
    assert (await two.reconcile()).ok
    assert seller.node.name == f"dev{SELLER}"


async def test_the_producers_own_site_gets_only_what_is_left_of_its_ask(two: Two) -> None:
    """60 of its 100 Wh went to the other site: a local buyer's book that gives it
    100 Wh is refused (its ask is never sold twice); nothing is paid for it."""
    local = await two.sellers.device(LOCAL_BUYER)
    local_energy, _ = desks(two.sellers, local, two.buyers)
    _, _, _, buying = await setup(two)
    assert await local_energy.bid(100, period=PERIOD, interval=ROUND, rate_msat_per_kwh=RATE)
    assert await buy(buying, 60) == 60
    peers = [p for p in local.peers.peers() if p.site_id == two.sellers.site_id]
    assert await local_energy.settle_round(period=PERIOD, interval=ROUND, peers=peers) == 0
    assert any("other sites" in r for r in local_energy.refused), local_energy.refused
    assert [e for e in await local.store.entries() if isinstance(e.body, Payment)] == []
    assert (await two.reconcile()).ok


async def test_no_purchase_when_the_grid_fee_makes_the_grid_as_cheap(two: Two) -> None:
    _, _, buyer, buying = await setup(two)
    assert await buy(buying, 60, fee=50_000) == 0  # 200 000 + 50 000 >= 250 000
    assert buyer.node.attempts == []
    assert sides(await buyer.store.entries(), SaleSide.BOUGHT) == []


def _stranger_order(rig: Rig) -> bytes:
    """An ask of the round signed with the producer's index by a non-member key."""
    stranger = Site.make(b"cross-site fakes: a stranger")
    ask = Ask(Party(rig.site_id, SELLER), PERIOD, ROUND, 100, 200_000)
    chain = stranger.chain(Author.device(SELLER))
    entry = chain.sign(Order(ROUND, order_text(ask)), seq=1, prev=bytes(32), period=PERIOD)
    return entry.raw  # signed for the stranger's site: no entry of the producer's


async def _own_order(seller: Device) -> Entry:
    return next(e for e in await seller.store.entries() if isinstance(e.body, Order))


@pytest.mark.parametrize(
    ("lie", "why"),
    [
        ("stranger", "no ask signed by a member"),
        ("amount", "not its Wh at the ask's price"),
        ("too_much", "exceed the ask or need"),
        ("mallory", "the invoice pays node"),
        ("memo", "the invoice is for"),
    ],
)
async def test_a_forged_or_mismatched_offer_is_refused_and_pays_nothing(
    two: Two, lie: str, why: str
) -> None:
    seller, _, buyer, buying = await setup(two)
    order = await _own_order(seller)
    me = Party(two.buyers.site_id, BUYER)
    producer = Party(two.sellers.site_id, SELLER)

    async def lying_producer(delivery: Delivery) -> SiteSaleOffer:
        wh, amount, raw, node = 60, 12_000, order.raw, seller.node
        if lie == "stranger":
            raw = _stranger_order(two.sellers)
        elif lie == "amount":
            amount = 13_000
        elif lie == "too_much":
            wh, amount = 61, 12_200  # asked for 60
        elif lie == "mallory":
            node = two.buyers.mallory
        memo = site_sale_memo(order.id, producer, me, wh, amount)
        if lie == "memo":
            memo = site_sale_memo(order.id, producer, me, wh + 1, amount)
        invoice = await node.add_invoice(amount, memo)
        return SiteSaleOffer(raw, wh, amount, invoice.payment_request)

    seller.peers.handle(SITE_TRADE_PROTOCOL, lying_producer)
    assert await buy(buying, 60) == 0
    assert buyer.node.attempts == []
    assert [why in r for r in buying.refused] == [True], buying.refused
    entries = await buyer.store.entries()
    assert sides(entries, SaleSide.BOUGHT) == []
    assert [e for e in entries if isinstance(e.body, Payment)] == []
    assert (await two.reconcile()).ok


async def test_a_forged_receipt_is_refused_and_credits_nothing(two: Two) -> None:
    """A purchase signed by a stranger, one of another order, and one whose
    invoice was never paid: the producer logs no sale for any of them."""
    seller, _, buyer, _ = await setup(two)
    order = await _own_order(seller)
    y = two.sellers.site.membership.site_hash

    def purchase(site: Site, evidence: bytes, payment_hash: bytes) -> bytes:
        body = SiteSale(SaleSide.BOUGHT, y, SELLER, ROUND, 60, 12_000, payment_hash, evidence)
        return site.chain(Author.device(BUYER)).next(body, period=PERIOD).raw

    unpaid = await seller.node.add_invoice(
        12_000,
        site_sale_memo(
            order.id, Party(two.sellers.site_id, SELLER), Party(two.buyers.site_id, BUYER),
            60, 12_000,
        ),
    )  # fmt: skip
    unpaid_hash = bytes.fromhex(unpaid.payment_hash)
    forged = [
        purchase(Site.make(b"cross-site fakes: a stranger"), order.raw, unpaid_hash),
        purchase(two.buyers.site, _stranger_order(two.sellers), unpaid_hash),
        purchase(two.buyers.site, order.raw, unpaid_hash),
    ]
    for raw in forged:
        with pytest.raises(RequestRejected):
            await buyer.peers.request(
                seller.peers.peer_id, SITE_RECEIPT_PROTOCOL, SiteSaleReceipt(raw)
            )
    assert sides(await seller.store.entries(), SaleSide.SOLD) == []


async def test_a_request_of_a_site_it_does_not_trade_with_is_refused(two: Two) -> None:
    seller, _, _, _ = await setup(two)
    third = Rig(two.buyers.tmp / "z", seed=b"cross-site fakes: third", beside=two.buyers)
    (two.buyers.tmp / "z").mkdir()
    outsider = await third.device(20)
    try:
        with pytest.raises(RequestRejected, match="no such site"):
            await outsider.peers.request(
                seller.peers.peer_id, SITE_TRADE_PROTOCOL, SiteTradeRequest(PERIOD, ROUND, 60)
            )
    finally:
        await third.close()
    assert sides(await seller.store.entries(), SaleSide.SOLD) == []


async def proceeds(two: Two) -> int:
    """The producer's proceeds of PERIOD in its own site's log."""
    x, y = two.buyers.site.membership, two.sellers.site.membership
    view = fold(await two.sellers.site_log(), site_hash=y.site_hash, peer_sites={x.site_hash: x})
    return view.account(SELLER, PERIOD).sold_msat


async def test_a_receipt_the_producer_missed_is_handed_again_and_logged_once(two: Two) -> None:
    seller, _, buyer, buying = await setup(two)
    peers = list(buying.energy.host.peers())
    handler = seller.peers.handlers.pop(SITE_RECEIPT_PROTOCOL)  # the producer is away
    assert await buy(buying, 60) == 60
    assert sides(await two.sellers.site_log(), SaleSide.SOLD) == []
    assert await proceeds(two) == 0  # paid on lnd, not credited in the producer's site
    assert await buying.hand_receipts(PERIOD, peers) == 1  # still away
    seller.peers.handle(SITE_RECEIPT_PROTOCOL, handler)  # back
    assert await buying.hand_receipts(PERIOD, peers) == 0
    [sold] = sides(await two.sellers.site_log(), SaleSide.SOLD)
    assert (sold.other_device, sold.energy_wh, sold.amount_msat) == (BUYER, 60, 12_000)
    # a restarted buyer hands its purchases of the period once more: nothing twice
    _, restarted = desks(two.buyers, buyer, two.sellers)
    assert await restarted.hand_receipts(PERIOD + 1, peers) == 0
    assert len(sides(await two.sellers.site_log(), SaleSide.SOLD)) == 1
    assert await proceeds(two) == 12_000
    checked = await two.reconcile()
    assert checked.ok, str(checked)
