"""AllowanceDesk against fake Lightning and fake peers (real SQLite): leftover
allowance is sold once, at the seller's price, paid by the buyer outside its
budget and logged by both (docs/market.md, section 2.9); a seller that lies
(another node, another description, another amount, a price off the rule or
above the buyer's maximum, more than asked, an expiring invoice) is refused and
paid nothing; a buyer that crashes mid-payment logs its payment on restart and
the seller its sale at the period's close; a seller restarted with an offer out
(its receivable in the intents file) logs the sale once it is paid, and a
sale logged before a restart is not logged again; an offer left open at its
period's close (lnd not answering) is resolved at a later close, live or
restarted (logged if paid, else cancelled), and the seller's carry-over
leaves what it holds in its period, so every msat is accounted for; a
restarted seller's report counts the sales of its earlier life, a restarted
buyer's its purchases (from its log); a light device sells from its site node
(its invoice's description names it in the payee field). Reconciliation passes
after each."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from p2pgrid.agent.allowance import (
    ALLOWANCE_PAID_PROTOCOL,
    ALLOWANCE_REQUEST_PROTOCOL,
    AllowanceDesk,
)
from p2pgrid.agent.config import ShareConfig
from p2pgrid.agent.intents import PaymentIntent, Purpose, PurposeKind
from p2pgrid.agent.messages import AllowanceOffer, AllowancePaid, AllowanceReceipt, AllowanceRequest
from p2pgrid.agent.payguard import allowance_memo
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.agent.ports import Wallet
from p2pgrid.ledger import AllowanceSale, Entry, LedgerView, Outcome, Payment, fold
from p2pgrid.lightning import DecodedInvoice, Invoice, InvoiceState, NodeUnreachable
from p2pgrid.net import Delivery, RequestRejected
from tests.agent.rig import Device, Rig
from tests.agent.test_intents import rows

PERIOD = 1
LEFTOVER = 50_000  # what the seller offers of its allowance


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.close()


def desk(rig: Rig, device: Device, leftover: int = 0, node: Wallet | None = None) -> AllowanceDesk:
    async def offered(period: int) -> int:
        return leftover if period == PERIOD else 0

    made = AllowanceDesk(
        me=rig.party(device.index),
        host=device.peers,
        node=node if node is not None else device.wallet,
        paymaster=device.paymaster,
        leftover=offered,
        name=device.name,
        nodes=rig.nodes,
        announce=rig.spread,
        now=rig.clock,
        config=ShareConfig(),
    )
    made.install()
    return made


async def pair(
    rig: Rig, *, first: int = PERIOD
) -> tuple[Device, Device, AllowanceDesk, AllowanceDesk]:
    """Seller 0 and buyer 1 with their desks, allocated from period ``first`` to PERIOD."""
    seller, buyer = await rig.device(0), await rig.device(1)
    for period in range(first, PERIOD + 1):
        for device, amount in ((seller, 100_000), (buyer, 10_000)):  # one owner chain
            await rig.allocate(seller.store, device.index, amount, period)
    desks = desk(rig, seller, LEFTOVER), desk(rig, buyer)
    await rig.spread()
    await rig.start()
    return seller, buyer, *desks


def kind(entries: list[Entry], body: type) -> list[Entry]:
    return [e for e in entries if isinstance(e.body, body)]


async def _offered(
    rig: Rig, seller: Device, buyer: Device, *, paid: bool
) -> tuple[AllowanceOffer, DecodedInvoice]:
    """The seller's offer of 30 000 msat of allowance to the buyer in PERIOD;
    ``paid``: paid (and logged by the buyer), but the buyer never says so."""
    request = AllowanceRequest(rig.party(1), PERIOD, 30_000, 90, int(rig.clock() * 1000) + 5000)
    reply = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, request)
    offer = reply.decode(AllowanceOffer)
    decoded = await buyer.node.decode_invoice(offer.bolt11)
    if paid:
        purpose = Purpose(PurposeKind.ALLOWANCE, offer.price_msat, device=0)
        intent = PaymentIntent(decoded.payment_hash, offer.bolt11, PERIOD, purpose)
        await buyer.intents.record(intent)
        await buyer.node.pay_invoice(offer.bolt11, fee_limit_msat=20_000)
        await buyer.paymaster.recover()
    return offer, decoded


async def test_allowance_is_sold_once_at_the_sellers_price_and_both_sides_log_it(
    rig: Rig,
) -> None:
    seller, buyer, selling, buying = await pair(rig)
    assert await buying.buy(30_000, PERIOD, [seller.peers.ref]) == 30_000
    [sale] = kind(await buyer.store.entries(), AllowanceSale)  # ingested from the receipt
    assert (sale.author.index, sale.period) == (0, PERIOD)
    assert isinstance(sale.body, AllowanceSale)
    assert (sale.body.buyer, sale.body.allowance_msat, sale.body.price_msat) == (1, 30_000, 24_000)
    [paid] = kind(await buyer.store.entries(), Payment)
    assert isinstance(paid.body, Payment)
    assert (paid.body.payment_hash, paid.body.amount_msat) == (sale.body.payment_hash, 24_000)
    view = fold(await rig.site_log()).period(PERIOD)
    assert (view.account(0).balance_msat, view.account(1).balance_msat) == (70_000, 40_000)
    assert (view.account(0).allowance_earned_msat, view.account(1).allowance_paid_msat) == (
        24_000,
        24_000,
    )
    assert (selling.sold_msat, buying.bought_msat, selling.held(PERIOD)) == (30_000, 30_000, 0)
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
    assert checked.moved_msat == 24_000  # the price, not the allowance: that is budget
    # the seller's node earned the price, the buyer's paid it and the route's fee
    assert seller.node.local_msat - rig.before["dev0"].local_msat == 24_000


async def test_a_seller_offers_only_its_leftover_less_what_open_offers_hold(rig: Rig) -> None:
    seller, buyer, selling, _ = await pair(rig)
    for amount, expected in ((30_000, 30_000), (40_000, 20_000)):
        request = AllowanceRequest(rig.party(1), PERIOD, amount, 90, int(rig.clock() * 1000) + 5000)
        reply = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, request)
        assert reply.decode(AllowanceOffer).allowance_msat == expected
    assert selling.held(PERIOD) == LEFTOVER
    late = AllowanceRequest(rig.party(1), PERIOD, 1_000, 90, int(rig.clock() * 1000) + 6000)
    with pytest.raises(RequestRejected, match="no leftover allowance"):
        await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, late)
    dear = AllowanceRequest(rig.party(1), PERIOD, 1_000, 50, int(rig.clock() * 1000) + 7000)
    await selling.close(PERIOD)  # nothing was paid: both invoices are cancelled
    states = {i.state for i in await seller.node.list_invoices()}
    assert states == {InvoiceState.CANCELED}
    assert selling.held(PERIOD) == 0
    with pytest.raises(RequestRejected, match="closed"):
        await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, dear)
    assert kind(await seller.store.entries(), AllowanceSale) == []
    assert (await rig.reconcile()).ok
    # The cancelled offers stay in the intents file a period, then leave it.
    book = rig.tmp / f"{seller.name}.intents.db"
    assert set((await asyncio.to_thread(rows, book)).values()) == {(PERIOD, "cancelled")}
    await selling.close(PERIOD + 1)
    assert await asyncio.to_thread(rows, book) == {}


Lie = Callable[[Rig, Device, AllowanceRequest], Awaitable[AllowanceOffer]]


async def _honest(rig: Rig, seller: Device, request: AllowanceRequest) -> AllowanceOffer:
    memo = allowance_memo(request.id, rig.party(0), request.buyer, 30_000, 24_000, period=PERIOD)
    invoice = await seller.node.add_invoice(24_000, memo)
    return AllowanceOffer(request.id, rig.party(0), 30_000, 80, 24_000, invoice.payment_request)


async def _to_another_node(rig: Rig, seller: Device, request: AllowanceRequest) -> AllowanceOffer:
    memo = allowance_memo(request.id, rig.party(0), request.buyer, 30_000, 24_000, period=PERIOD)
    invoice = await rig.mallory.add_invoice(24_000, memo)
    return AllowanceOffer(request.id, rig.party(0), 30_000, 80, 24_000, invoice.payment_request)


async def _described_for_more(
    rig: Rig, seller: Device, request: AllowanceRequest
) -> AllowanceOffer:
    # the description binds 40 000 msat of allowance: the offer says 30 000
    memo = allowance_memo(request.id, rig.party(0), request.buyer, 40_000, 24_000, period=PERIOD)
    invoice = await seller.node.add_invoice(24_000, memo)
    return AllowanceOffer(request.id, rig.party(0), 30_000, 80, 24_000, invoice.payment_request)


async def _another_period(rig: Rig, seller: Device, request: AllowanceRequest) -> AllowanceOffer:
    memo = allowance_memo(request.id, rig.party(0), request.buyer, 30_000, 24_000, period=2)
    invoice = await seller.node.add_invoice(24_000, memo)
    return AllowanceOffer(request.id, rig.party(0), 30_000, 80, 24_000, invoice.payment_request)


async def _bolt11_for_more(rig: Rig, seller: Device, request: AllowanceRequest) -> AllowanceOffer:
    offer = await _honest(rig, seller, request)
    memo = allowance_memo(request.id, rig.party(0), request.buyer, 30_000, 24_000, period=PERIOD)
    invoice = await seller.node.add_invoice(24_001, memo)
    return dataclasses.replace(offer, bolt11=invoice.payment_request)


async def _price_off_the_rule(
    rig: Rig, seller: Device, request: AllowanceRequest
) -> AllowanceOffer:
    memo = allowance_memo(request.id, rig.party(0), request.buyer, 30_000, 27_000, period=PERIOD)
    invoice = await seller.node.add_invoice(27_000, memo)
    return AllowanceOffer(request.id, rig.party(0), 30_000, 80, 27_000, invoice.payment_request)


async def _above_the_buyers_max(
    rig: Rig, seller: Device, request: AllowanceRequest
) -> AllowanceOffer:
    memo = allowance_memo(request.id, rig.party(0), request.buyer, 30_000, 28_500, period=PERIOD)
    invoice = await seller.node.add_invoice(28_500, memo)
    return AllowanceOffer(request.id, rig.party(0), 30_000, 95, 28_500, invoice.payment_request)


async def _more_than_asked(rig: Rig, seller: Device, request: AllowanceRequest) -> AllowanceOffer:
    memo = allowance_memo(request.id, rig.party(0), request.buyer, 40_000, 32_000, period=PERIOD)
    invoice = await seller.node.add_invoice(32_000, memo)
    return AllowanceOffer(request.id, rig.party(0), 40_000, 80, 32_000, invoice.payment_request)


async def _expiring(rig: Rig, seller: Device, request: AllowanceRequest) -> AllowanceOffer:
    memo = allowance_memo(request.id, rig.party(0), request.buyer, 30_000, 24_000, period=PERIOD)
    invoice = await seller.node.add_invoice(24_000, memo, expiry_s=5)
    return AllowanceOffer(request.id, rig.party(0), 30_000, 80, 24_000, invoice.payment_request)


@pytest.mark.parametrize(
    ("lie", "why"),
    [
        (_to_another_node, "pays node"),
        (_described_for_more, "is for"),
        (_another_period, "is for"),
        (_bolt11_for_more, "asks 24001 msat"),
        (_price_off_the_rule, "is not 80 %"),
        (_above_the_buyers_max, "at most 90"),
        (_more_than_asked, "30000 were asked"),
        (_expiring, "expires"),
    ],
)
async def test_a_lying_seller_is_refused_and_paid_nothing(rig: Rig, lie: Lie, why: str) -> None:
    seller, buyer, _, buying = await pair(rig)

    async def lying(delivery: Delivery) -> AllowanceOffer:
        return await lie(rig, seller, delivery.decode(AllowanceRequest))

    seller.peers.handle(ALLOWANCE_REQUEST_PROTOCOL, lying)
    assert await buying.buy(30_000, PERIOD, [seller.peers.ref]) == 0
    assert any(why in r for r in buying.refused), buying.refused
    assert buyer.node.attempts == []
    assert await buyer.intents.all() == []
    assert kind(await buyer.store.entries(), Payment) == []
    assert (await rig.reconcile()).ok


async def test_the_honest_offer_of_the_lying_tests_is_paid(rig: Rig) -> None:
    """The lies above differ from this offer in one field each."""
    seller, buyer, _, buying = await pair(rig)

    async def honest(delivery: Delivery) -> AllowanceOffer:
        return await _honest(rig, seller, delivery.decode(AllowanceRequest))

    seller.peers.handle(ALLOWANCE_REQUEST_PROTOCOL, honest)
    await buying.buy(30_000, PERIOD, [seller.peers.ref])  # no receipt: not the desk's offer
    assert len(buyer.node.attempts) == 1
    assert [e.body.amount_msat for e in kind(await buyer.store.entries(), Payment)] == [24_000]


async def test_a_buyer_that_crashes_mid_payment_logs_it_and_the_seller_sells_at_close(
    rig: Rig,
) -> None:
    seller, buyer, selling, _ = await pair(rig)
    request = AllowanceRequest(rig.party(1), PERIOD, 30_000, 90, int(rig.clock() * 1000) + 5000)
    reply = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, request)
    offer = reply.decode(AllowanceOffer)
    decoded = await buyer.node.decode_invoice(offer.bolt11)
    purpose = Purpose(PurposeKind.ALLOWANCE, offer.price_msat, device=0)
    intent = PaymentIntent(decoded.payment_hash, offer.bolt11, PERIOD, purpose)
    await buyer.intents.record(intent)
    await buyer.node.pay_invoice(offer.bolt11, fee_limit_msat=20_000)  # then the buyer crashes
    restarted = Paymaster(node=buyer.node, writer=buyer.writer, intents=buyer.intents, name="dev1")
    [resolved] = await restarted.recover()  # on start: the payment is logged
    assert resolved.purpose.kind is PurposeKind.ALLOWANCE
    await selling.close(PERIOD)  # the buyer never said so: the seller finds it paid
    await rig.spread()
    log = await rig.site_log()
    [sale] = kind(log, AllowanceSale)
    [paid] = kind(log, Payment)
    assert isinstance(sale.body, AllowanceSale)
    assert isinstance(paid.body, Payment)
    assert sale.body.payment_hash == paid.body.payment_hash
    assert fold(log).period(PERIOD).account(1).allowance_bought_msat == 30_000
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_a_seller_logs_a_sale_only_for_its_own_settled_invoice(rig: Rig) -> None:
    seller, buyer, selling, _ = await pair(rig)
    other = await rig.device(2)
    await rig.spread()
    request = AllowanceRequest(rig.party(1), PERIOD, 30_000, 90, int(rig.clock() * 1000) + 5000)
    reply = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, request)
    offer = reply.decode(AllowanceOffer)
    guess = AllowancePaid(request.id, b"\x09" * 32)
    with pytest.raises(RequestRejected, match="not the preimage"):
        await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_PAID_PROTOCOL, guess)
    payment = await buyer.node.pay_invoice(offer.bolt11, fee_limit_msat=20_000)
    paid = AllowancePaid(request.id, bytes.fromhex(payment.preimage))
    with pytest.raises(RequestRejected, match="no open allowance offer"):  # not its request
        await other.peers.request(seller.peers.peer_id, ALLOWANCE_PAID_PROTOCOL, paid)
    assert kind(await seller.store.entries(), AllowanceSale) == []
    first = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_PAID_PROTOCOL, paid)
    again = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_PAID_PROTOCOL, paid)
    assert first.decode(AllowanceReceipt) == again.decode(AllowanceReceipt)  # logged once
    assert len(kind(await seller.store.entries(), AllowanceSale)) == 1
    assert selling.sold_msat == 30_000


async def test_an_unpaid_offer_is_not_sold(rig: Rig) -> None:
    seller, buyer, selling, _ = await pair(rig)
    request = AllowanceRequest(rig.party(1), PERIOD, 30_000, 90, int(rig.clock() * 1000) + 5000)
    reply = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, request)
    offer = reply.decode(AllowanceOffer)
    assert offer.allowance_msat == 30_000
    # the preimage is the seller's secret: a buyer cannot know it without paying,
    # so the seller's own view of it stands in for a buyer that claims to have paid
    [held] = selling._open.values()
    claim = AllowancePaid(request.id, held.preimage)
    with pytest.raises(RequestRejected, match="not paid"):
        await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_PAID_PROTOCOL, claim)
    assert kind(await seller.store.entries(), AllowanceSale) == []
    assert (await rig.reconcile()).ok


async def test_a_seller_restarted_with_an_offer_out_logs_the_sale_it_is_paid_for(
    rig: Rig,
) -> None:
    seller, buyer, selling, _ = await pair(rig)
    request = AllowanceRequest(rig.party(1), PERIOD, 30_000, 90, int(rig.clock() * 1000) + 5000)
    reply = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, request)
    offer = reply.decode(AllowanceOffer)
    # the seller dies with its offer out; its restart knows only its files
    restarted = desk(rig, seller, LEFTOVER)
    await restarted.restore()
    assert restarted.held(PERIOD) == 30_000  # not offered again
    payment = await buyer.node.pay_invoice(offer.bolt11, fee_limit_msat=20_000)
    paid = AllowancePaid(request.id, bytes.fromhex(payment.preimage))
    first = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_PAID_PROTOCOL, paid)
    [sale] = kind(await seller.store.entries(), AllowanceSale)
    assert first.decode(AllowanceReceipt).sale_entry == sale.raw
    assert isinstance(sale.body, AllowanceSale)
    assert sale.body.payment_hash.hex() == payment.payment_hash
    # restarted once more: nothing is open, the receipt is the logged sale, and the
    # close logs nothing twice
    again = desk(rig, seller, LEFTOVER)
    await again.close(PERIOD)
    retried = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_PAID_PROTOCOL, paid)
    assert retried.decode(AllowanceReceipt).sale_entry == sale.raw
    assert len(kind(await seller.store.entries(), AllowanceSale)) == 1
    assert (selling.sold_msat, again.held(PERIOD)) == (0, 0)


async def test_a_seller_restarted_after_logging_a_sale_does_not_log_it_twice(rig: Rig) -> None:
    seller, buyer, selling, _ = await pair(rig)
    request = AllowanceRequest(rig.party(1), PERIOD, 30_000, 90, int(rig.clock() * 1000) + 5000)
    reply = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, request)
    offer = reply.decode(AllowanceOffer)
    await buyer.node.pay_invoice(offer.bolt11, fee_limit_msat=20_000)
    [held] = selling._open.values()
    body = AllowanceSale(
        1, 30_000, offer.price_msat, bytes.fromhex(held.payment_hash), held.preimage
    )
    # the sale in the log, then the seller killed before its receivable was closed
    await seller.writer.append(body, period=PERIOD, timestamp_ms=int(rig.clock() * 1000))
    restarted = desk(rig, seller, LEFTOVER)
    await restarted.close(PERIOD)
    assert len(kind(await seller.store.entries(), AllowanceSale)) == 1
    assert await seller.intents.receivables(PurposeKind.ALLOWANCE) == []


async def test_a_seller_logs_a_sale_at_the_close_after_writing_in_the_next_period(
    rig: Rig,
) -> None:
    seller, buyer, selling, _ = await pair(rig)
    request = AllowanceRequest(rig.party(1), PERIOD, 30_000, 90, int(rig.clock() * 1000) + 5000)
    reply = await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, request)
    offer = reply.decode(AllowanceOffer)
    await buyer.node.pay_invoice(offer.bolt11, fee_limit_msat=20_000)  # never says so
    await seller.meter(PERIOD + 1, 0)  # the seller's first entry of the next period
    await selling.close(PERIOD)  # the sale is of PERIOD, an obligation older than that
    [sale] = kind(await seller.store.entries(), AllowanceSale)
    assert sale.period == PERIOD
    assert selling.sold_msat == 30_000


async def test_a_light_device_sells_allowance_from_the_site_node(rig: Rig) -> None:
    site = rig.site_node((0,))
    seller, buyer = await rig.device(0, site=site), await rig.device(1)
    for device, amount in ((seller, 100_000), (buyer, 10_000)):
        await rig.allocate(seller.store, device.index, amount, PERIOD)
    desk(rig, seller, LEFTOVER)
    buying = desk(rig, buyer)
    await rig.spread()
    await rig.start()
    assert await buying.buy(30_000, PERIOD, [seller.peers.ref]) == 30_000
    [invoice] = await rig.ln.nodes[site.name].list_invoices()  # made on the site node
    assert (invoice.state, invoice.amt_paid_msat) == (InvoiceState.SETTLED, 24_000)
    [sale] = kind(await rig.site_log(), AllowanceSale)
    assert isinstance(sale.body, AllowanceSale)
    assert (sale.author.index, sale.body.payment_hash.hex()) == (0, invoice.payment_hash)
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
    assert checked.moved_msat == 24_000


async def test_two_light_devices_of_one_node_do_not_trade_allowance(rig: Rig) -> None:
    """Their node cannot pay itself and allowance is no internal transfer: the
    buyer does not ask, and a seller asked anyway makes no invoice and holds nothing
    (an offer it could never be paid for would lock its leftover until the close)."""
    site = rig.site_node((0, 1))
    seller, buyer = await rig.device(0, site=site), await rig.device(1, site=site)
    for device, amount in ((seller, 100_000), (buyer, 10_000)):
        await rig.allocate(seller.store, device.index, amount, PERIOD)
    selling, buying = desk(rig, seller, LEFTOVER), desk(rig, buyer)
    await rig.spread()
    await rig.start()
    assert await buying.buy(30_000, PERIOD, [seller.peers.ref]) == 0
    request = AllowanceRequest(rig.party(1), PERIOD, 30_000, 90, int(rig.clock() * 1000) + 5000)
    with pytest.raises(RequestRejected, match="same Lightning node"):
        await buyer.peers.request(seller.peers.peer_id, ALLOWANCE_REQUEST_PROTOCOL, request)
    assert selling.held(PERIOD) == 0
    assert await rig.ln.nodes[site.name].list_invoices() == []
    assert await seller.intents.receivables(PurposeKind.ALLOWANCE) == []
    assert buying.refused == []  # not an offer refused: never asked
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
    assert checked.moved_msat == 0


class _Unanswering:
    """A seller's lnd that does not answer invoice look-ups and cancels (the rest
    of :class:`Wallet` passes to ``node``)."""

    def __init__(self, node: Wallet) -> None:
        self.node = node

    def __getattr__(self, name: str) -> object:
        return getattr(self.node, name)

    async def lookup_invoice(self, payment_hash: str) -> Invoice:
        raise NodeUnreachable("lnd does not answer")

    async def cancel_invoice(self, payment_hash: str) -> None:
        raise NodeUnreachable("lnd does not answer")


@pytest.mark.parametrize("paid", [True, False], ids=["paid", "unpaid"])
@pytest.mark.parametrize("restarted", [False, True], ids=["live", "restarted"])
async def test_an_offer_left_open_at_its_close_is_resolved_at_a_later_close(
    rig: Rig, paid: bool, restarted: bool
) -> None:
    seller, buyer, _, _ = await pair(rig)
    unanswering = desk(rig, seller, LEFTOVER, node=_Unanswering(seller.node))  # type: ignore[arg-type]
    _, decoded = await _offered(rig, seller, buyer, paid=paid)
    await unanswering.close(PERIOD)  # lnd does not answer: the offer stays open
    assert [r.payment_hash for r in await seller.intents.receivables(PurposeKind.ALLOWANCE)] == [
        decoded.payment_hash
    ]
    # the desk that closed PERIOD goes on (its lnd back), or a restarted one from the files
    selling = desk(rig, seller, LEFTOVER) if restarted else unanswering
    selling.node = seller.wallet
    await selling.restore()
    await selling.close(PERIOD + 1)  # the next close resolves the offer of PERIOD
    await selling.close(PERIOD + 2)  # and nothing more at the one after
    assert await seller.intents.receivables(PurposeKind.ALLOWANCE) == []
    assert selling.held(PERIOD) == 0
    sales = kind(await seller.store.entries(), AllowanceSale)
    invoice = await seller.node.lookup_invoice(decoded.payment_hash)
    if paid:
        [sale] = sales
        assert isinstance(sale.body, AllowanceSale)
        assert (sale.period, sale.body.buyer, sale.body.payment_hash.hex()) == (
            PERIOD,
            1,
            decoded.payment_hash,
        )
        assert (invoice.state, selling.sold_msat) == (InvoiceState.SETTLED, 30_000)
    else:
        assert (sales, invoice.state, selling.sold_msat) == ([], InvoiceState.CANCELED, 0)
    await rig.spread()
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_a_restarted_seller_reports_the_sales_of_its_earlier_life(rig: Rig) -> None:
    """The agent's report counts the allowance its device sold in the run's
    periods from its own ``allowance_sale`` entries in its log: a sale logged
    before a restart (here by the desk of its first life, on the same files)
    is in the restarted agent's report; one of a period outside it is not."""
    seller, _, selling, buying = await pair(rig)
    first_life, replica, _ = await rig.agent(seller)
    replica.before_wait = rig.utility_for(seller)
    await first_life.run(periods=PERIOD)  # the periods before PERIOD
    selling.install()  # its first life sells in PERIOD (this desk, on the same files)
    assert await buying.buy(30_000, PERIOD, [seller.peers.ref]) == 30_000
    assert selling.sold_msat == 30_000
    # ... and is killed; the restarted agent runs on into PERIOD
    restarted, replica, _ = await rig.agent(seller)  # the same store, intents and node
    replica.before_wait = rig.utility_for(seller)
    report = await restarted.run(periods=PERIOD + 1)
    assert restarted.allowance.sold_msat == 0  # this process sold nothing itself
    assert report.allowance_sold_msat == 30_000
    preimage = b"\x08" * 32
    later = AllowanceSale(1, 5_000, 4_000, hashlib.sha256(preimage).digest(), preimage)
    await seller.writer.append(later, period=PERIOD + 1, timestamp_ms=int(rig.clock() * 1000))
    assert await restarted.allowance_sold({PERIOD}) == 30_000
    assert await restarted.allowance_sold({PERIOD, PERIOD + 1}) == 35_000


def _conserved(view: LedgerView, period: int) -> None:
    """The fold's identities of ``period`` (docs/market.md 2.9, step 5)."""
    accounts = view.period(period).accounts.values()
    money_in = sum(
        a.allocation_msat + a.carried_in_msat + a.received_msat + a.sold_msat
        + a.allowance_bought_msat
        for a in accounts
    )  # fmt: skip
    money_out = sum(
        a.balance_msat + a.spent_msat + a.given_msat + a.bought_msat + a.carried_out_msat
        + a.allowance_sold_msat
        for a in accounts
    )  # fmt: skip
    assert money_in == money_out
    assert sum(a.allowance_sold_msat for a in accounts) == sum(
        a.allowance_bought_msat for a in accounts
    )
    assert sum(a.allowance_paid_msat for a in accounts) == sum(
        a.allowance_earned_msat for a in accounts
    )


@pytest.mark.parametrize("paid", [True, False], ids=["paid", "unpaid"])
async def test_an_offer_open_at_the_carry_over_keeps_its_allowance_in_its_period(
    rig: Rig, paid: bool
) -> None:
    """The seller's lnd does not answer at the close of PERIOD: its offer stays
    open, and the carry-over leaves in PERIOD what the offer holds. Paid, the
    sale logged at a later close (in PERIOD, after the carry-over) is funded:
    the buyer's allowance and the price both show; unpaid, the held allowance
    stays in the seller's closed period. Every msat of PERIOD is accounted for
    across seller, buyer and carry-over, and the next period carries in exactly
    what was carried out."""
    seller, buyer, _, _ = await pair(rig, first=0)
    offer, _ = await _offered(rig, seller, buyer, paid=paid)
    # The seller's agent (restarted: its desk loads the open offer from the
    # intents file) runs both periods; its lnd does not answer the desk.
    agent, replica, _ = await rig.agent(seller, consumed_wh=(20,))  # 5 000 msat an interval
    replica.before_wait = rig.utility_for(seller)
    agent.allowance.node = _Unanswering(seller.node)  # type: ignore[assignment]
    report = await agent.run(periods=PERIOD + 1)
    assert agent.allowance.held(PERIOD) == 30_000  # still open after the close
    left = 100_000 - 4 * 5_000  # of each period's allocation
    carried = left + left - 30_000  # PERIOD's carry-over holds back what the offer holds
    assert report.carried_over_msat == left + carried
    agent.allowance.node = seller.wallet  # lnd is back: the next close resolves it
    await agent.allowance.close(PERIOD + 1)
    await rig.spread()
    view = fold(await rig.site_log())
    seller_acc, buyer_acc = view.account(0, PERIOD), view.account(1, PERIOD)
    assert (seller_acc.carried_out_msat, seller_acc.unfunded_msat) == (carried, 0)
    assert view.account(0, PERIOD + 1).carried_in_msat == carried
    if paid:
        assert (seller_acc.allowance_sold_msat, seller_acc.balance_msat) == (30_000, 0)
        assert (buyer_acc.allowance_bought_msat, buyer_acc.balance_msat) == (30_000, 40_000)
        assert (seller_acc.allowance_earned_msat, buyer_acc.allowance_paid_msat) == (
            offer.price_msat,
            offer.price_msat,
        )
        assert await agent.allowance_sold({PERIOD}) == 30_000
    else:
        assert (seller_acc.allowance_sold_msat, seller_acc.balance_msat) == (0, 30_000)
        assert (buyer_acc.allowance_bought_msat, buyer_acc.balance_msat) == (0, 10_000)
    for period in (0, PERIOD, PERIOD + 1):
        _conserved(view, period)
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_a_restarted_buyer_reports_the_purchases_of_its_earlier_life(rig: Rig) -> None:
    """The agent's report counts the allowance its device bought in the run's
    periods from the sellers' ``allowance_sale`` entries naming it in its log: a
    purchase logged before a restart (here by the desk of its first life, on the
    same files) is in the restarted agent's report; a sale to another device, or
    of a period outside the run, is not."""
    seller, buyer, selling, buying = await pair(rig)
    first_life, replica, _ = await rig.agent(buyer, consumed_wh=(0,))
    replica.before_wait = rig.utility_for(buyer)
    await first_life.run(periods=PERIOD)  # the periods before PERIOD
    selling.install()
    assert await buying.buy(30_000, PERIOD, [seller.peers.ref]) == 30_000  # its first life
    assert buying.bought_msat == 30_000
    # ... and is killed; the restarted agent runs on into PERIOD (needing nothing)
    restarted, replica, _ = await rig.agent(buyer, consumed_wh=(0,))
    replica.before_wait = rig.utility_for(buyer)
    report = await restarted.run(periods=PERIOD + 1)
    assert restarted.allowance.bought_msat == 0  # this process bought nothing itself
    assert report.allowance_bought_msat == 30_000
    assert report.allowance_sold_msat == 0
    now = int(rig.clock() * 1000)
    for to, period in ((buyer.index, PERIOD + 1), (2, PERIOD)):  # outside the run, another's
        preimage = bytes([to + period]) * 32
        sale = AllowanceSale(to, 5_000, 4_000, hashlib.sha256(preimage).digest(), preimage)
        entry = await seller.writer.append(sale, period=period, timestamp_ms=now)
        assert (await buyer.store.ingest(entry.raw)).results[0].outcome is Outcome.STORED
    assert await restarted.allowance_bought({PERIOD}) == 30_000
    assert await restarted.allowance_bought({PERIOD, PERIOD + 1}) == 35_000
