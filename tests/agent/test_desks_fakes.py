"""ShareDesk against fake Lightning and fake peers (real SQLite) (the EnergyDesk:
tests/agent/test_pool_fakes.py): a share is paid once, to the right node, for the right request, and
logged with its fee in the period of the request even when the payer's clock
crosses into the next period mid-payment; every wrong invoice is refused, the
refusal logged, and nothing paid. Reconciliation passes after each test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from p2pgrid.agent.messages import ShareInvoice
from p2pgrid.agent.payguard import MIN_PAYMENT_MSAT, share_memo
from p2pgrid.agent.sharing import SHARE_PAY_PROTOCOL, SHARE_REQUEST_PROTOCOL, ShareDesk
from p2pgrid.ledger import Entry, Share
from p2pgrid.ledger.proof import parse_proof
from p2pgrid.lightning import InvoiceState
from p2pgrid.market import ShareOffer, ShareRequest
from p2pgrid.net import RequestRejected
from tests.agent.rig import Device, Rig

PERIOD = 1
RATE = 250_000  # msat per kWh


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.close()


def share_desk(rig: Rig, device: Device, period: list[int]) -> ShareDesk:
    async def headroom(p: int) -> int:
        return 50_000 if p == period[0] else 0

    return rig.share_desk(device, headroom)


async def two_sharers(rig: Rig) -> tuple[Device, Device, ShareDesk, ShareDesk, list[int]]:
    giver, requester = await rig.device(0), await rig.device(1)
    period = [PERIOD]
    desks = share_desk(rig, giver, period), share_desk(rig, requester, period)
    await rig.start()
    return giver, requester, *desks, period


def own(entries: list[Entry], kind: type) -> list[Entry]:
    return [e for e in entries if isinstance(e.body, kind)]


async def test_a_share_is_paid_once_and_logged_with_its_proof_and_fee(rig: Rig) -> None:
    giver, requester, _, asker, _ = await two_sharers(rig)
    assert await asker.ask(10_000, PERIOD, [giver.peers.ref]) == 10_000
    [share] = own(await giver.store.entries(), Share)
    assert isinstance(share.body, Share)
    assert (share.period, share.body.to_device, share.body.amount_msat) == (PERIOD, 1, 10_000)
    proof = parse_proof(share.body.memo)
    assert proof is not None
    assert proof.fee_msat == rig.ln.route_fee_msat  # two hops, through the utility
    assert own(await requester.store.entries(), Share) == [share]  # ingested from the receipt
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
    assert checked.moved_msat == 10_000


async def test_a_need_below_one_sat_asks_for_one_sat(rig: Rig) -> None:
    giver, _, _, asker, _ = await two_sharers(rig)
    assert await asker.ask(300, PERIOD, [giver.peers.ref]) == MIN_PAYMENT_MSAT
    assert (await rig.reconcile()).ok


async def offer_for(rig: Rig, requester: Device, giver: Device, amount: int) -> ShareRequest:
    request = ShareRequest(rig.party(requester.index), PERIOD, amount, int(time.time() * 1000))
    reply = await requester.peers.request(giver.peers.peer_id, SHARE_REQUEST_PROTOCOL, request)
    assert reply.decode(ShareOffer).amount_msat == amount
    return request


WrongShare = Callable[[Rig, Device, Device, ShareRequest], Awaitable[tuple[int, str]]]


async def _to_another_node(
    rig: Rig, giver: Device, requester: Device, request: ShareRequest
) -> tuple[int, str]:
    memo = share_memo(request.id, request.requester, rig.party(giver.index), 10_000)
    return 10_000, (await rig.mallory.add_invoice(10_000, memo)).payment_request


async def _for_another_request(
    rig: Rig, giver: Device, requester: Device, request: ShareRequest
) -> tuple[int, str]:
    memo = share_memo(b"\x07" * 32, request.requester, rig.party(giver.index), 10_000)
    return 10_000, (await requester.node.add_invoice(10_000, memo)).payment_request


async def _for_more_than_granted(
    rig: Rig, giver: Device, requester: Device, request: ShareRequest
) -> tuple[int, str]:
    memo = share_memo(request.id, request.requester, rig.party(giver.index), 20_000)
    return 20_000, (await requester.node.add_invoice(20_000, memo)).payment_request


async def _bolt11_for_more(
    rig: Rig, giver: Device, requester: Device, request: ShareRequest
) -> tuple[int, str]:
    memo = share_memo(request.id, request.requester, rig.party(giver.index), 10_000)
    return 10_000, (await requester.node.add_invoice(10_001, memo)).payment_request


async def _expired(
    rig: Rig, giver: Device, requester: Device, request: ShareRequest
) -> tuple[int, str]:
    memo = share_memo(request.id, request.requester, rig.party(giver.index), 10_000)
    invoice = await requester.node.add_invoice(10_000, memo, expiry_s=30)
    rig.clock.t += 31
    return 10_000, invoice.payment_request


@pytest.mark.parametrize(
    ("wrong", "why"),
    [
        (_to_another_node, "pays node"),
        (_for_another_request, "is for"),
        (_for_more_than_granted, "asks 20000 msat, offered 10000"),
        (_bolt11_for_more, "asks 10001 msat"),
        (_expired, "expires"),
    ],
)
async def test_a_wrong_share_invoice_is_refused_and_pays_nothing(
    rig: Rig, wrong: WrongShare, why: str
) -> None:
    giver, requester, giving, _, _ = await two_sharers(rig)
    request = await offer_for(rig, requester, giver, 10_000)
    amount, bolt11 = await wrong(rig, giver, requester, request)
    with pytest.raises(RequestRejected, match=why):
        await requester.peers.request(
            giver.peers.peer_id, SHARE_PAY_PROTOCOL, ShareInvoice(request.id, amount, bolt11)
        )
    assert giver.node.attempts == []
    assert [why in r for r in giving.refused] == [True]
    assert own(await giver.store.entries(), Share) == []
    assert (await rig.reconcile()).ok


async def test_a_paid_share_invoice_is_never_cancelled_when_the_receipt_is_lost(
    rig: Rig,
) -> None:
    giver, requester, _, asker, _ = await two_sharers(rig)
    giver.peers.drop_reply = SHARE_PAY_PROTOCOL  # it pays, logs, and its answer is lost
    assert await asker.ask(10_000, PERIOD, [giver.peers.ref]) == 10_000
    [invoice] = await requester.node.list_invoices()
    assert invoice.state is InvoiceState.SETTLED
    assert len(own(await giver.store.entries(), Share)) == 1
    assert (await rig.reconcile()).ok


async def test_a_share_paid_across_the_period_boundary_is_logged_in_its_period(
    rig: Rig,
) -> None:
    giver, _, _, asker, period = await two_sharers(rig)
    crossed: list[Entry] = []

    async def clock_enters_next_period() -> None:
        period[0] = PERIOD + 1
        crossed.append(await giver.meter(PERIOD + 1, 10, interval=4))

    giver.node.before_pay = clock_enters_next_period
    assert await asker.ask(10_000, PERIOD, [giver.peers.ref]) == 10_000
    [share] = own(await giver.store.entries(), Share)
    assert share.period == PERIOD
    assert share.seq > crossed[0].seq
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
