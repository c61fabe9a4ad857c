"""Light devices on fakes (fake Lightning and peers, real SQLite): devices 0 and 1
are light on one site node, device 2 has its own lnd. A share between the two
light devices is an internal transfer (no Lightning payment, the payee's invoice
cancelled, the preimage in the entry); a share leaving the node and a light
device's bill go over Lightning from the site node; an internal transfer is
made only between light devices of one node, and a forged one is refused; the
site node reconciles against the union of its light devices' entries; a
transfer logged just before a crash (its intent still open, the transfer no
longer in the restarted wallet's memory) resolves as logged, by the chain."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.agent.intents import IntentState, PaymentIntent, Purpose, PurposeKind
from p2pgrid.agent.payguard import (
    allowance_memo,
    payee_of,
    sale_memo,
    share_memo,
    site_sale_memo,
)
from p2pgrid.agent.paymaster import Paymaster, bodies_for
from p2pgrid.agent.settlement import Settlement
from p2pgrid.agent.sitewallet import SiteNode
from p2pgrid.billing import invoice_memo
from p2pgrid.ledger import Author, BodyError, Invoice, Payment, Share
from p2pgrid.ledger.proof import parse_proof
from p2pgrid.lightning import InvoiceError, InvoiceState, PaymentFailed
from p2pgrid.market import Party
from p2pgrid.reconcile import Reconciliation, reconcile_node, snapshot
from tests.agent.rig import Device, Rig

PERIOD = 1


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.close()


async def site_of_three(rig: Rig) -> tuple[SiteNode, Device, Device, Device]:
    site = rig.site_node((0, 1))
    light0, light1 = await rig.device(0, site=site), await rig.device(1, site=site)
    own = await rig.device(2)
    return site, light0, light1, own


async def headroom(period: int) -> int:
    return 50_000


async def check_site_node(rig: Rig, site: SiteNode, *authors: Author) -> Reconciliation:
    return reconcile_node(
        await snapshot(site.name, rig.ln.nodes[site.name]),
        site=rig.site.membership.site_hash,
        entries=await rig.site_log(),
        authors=authors,
    )


def test_an_invoice_names_its_payee() -> None:
    requester, giver = Party("00" * 8, 1), Party("00" * 8, 0)
    assert payee_of(share_memo(b"\x01" * 32, requester, giver, 5_000)) == requester
    assert payee_of(sale_memo(b"\x01" * 32, giver, requester, 3, 5_000)) == giver
    assert payee_of(sale_memo(b"\x01" * 32, giver, requester, 3, 5_000, on_delivery=True)) == giver
    assert payee_of(site_sale_memo(b"\x02" * 32, giver, requester, 3, 5_000)) == giver
    assert payee_of(allowance_memo(b"\x03" * 32, giver, requester, 6_000, 5_000, 2)) == giver
    assert payee_of("p2pgrid share x from a/0 to b/1 5 msat payee b/1") is None  # no site id
    assert payee_of("p2pgrid share x from a/0 to b/1 5 msat") is None  # no payee field
    assert payee_of(share_memo(b"\x01" * 32, requester, giver, 5_000) + " ") is None
    assert payee_of("p2pgrid x payee 0000000000000000/07") is None  # not canonical
    assert payee_of("a bill") is None


async def test_a_share_between_light_devices_of_one_node_is_internal(rig: Rig) -> None:
    site, giver, requester, _ = await site_of_three(rig)
    rig.share_desk(giver, headroom)
    asker = rig.share_desk(requester, headroom)
    await rig.start()
    assert await asker.ask(10_000, PERIOD, [giver.peers.ref]) == 10_000
    [share] = [e for e in await giver.store.entries() if isinstance(e.body, Share)]
    assert isinstance(share.body, Share)
    proof = parse_proof(share.body.memo)
    assert proof is not None
    assert proof.fee_msat == 0  # the preimage is the proof
    node = rig.ln.nodes[site.name]
    assert node.attempts == []  # no Lightning hop
    assert await node.list_payments() == []
    [invoice] = await node.list_invoices()
    assert invoice.state is InvoiceState.CANCELED  # no Lightning payment can settle it now
    assert invoice.payment_hash == proof.payment_hash.hex()
    assert share in await requester.store.entries()  # the receipt was ingested
    whole = await rig.reconcile()
    assert whole.ok, str(whole)
    node_check = await check_site_node(rig, site, Author.device(0), Author.device(1))
    assert node_check.ok, str(node_check)
    assert (node_check.payments, node_check.moved_msat) == (1, 10_000)


async def test_a_share_leaving_the_node_goes_over_lightning(rig: Rig) -> None:
    site, light, _, own = await site_of_three(rig)
    rig.share_desk(light, headroom)
    asker = rig.share_desk(own, headroom)
    rig.share_desk(await rig.device(3, site=rig.site_node((3,), name="other")), headroom)
    await rig.start()
    assert await asker.ask(10_000, PERIOD, [light.peers.ref]) == 10_000
    [paid] = await rig.ln.nodes[site.name].list_payments()
    assert (paid.value_msat, paid.fee_msat) == (10_000, rig.ln.route_fee_msat)
    whole = await rig.reconcile()
    assert whole.ok, str(whole)
    assert (await check_site_node(rig, site, Author.device(0), Author.device(1))).ok


async def test_a_light_device_pays_the_utility_from_the_site_node(rig: Rig) -> None:
    site, light, _, _ = await site_of_three(rig)
    await light.meter(PERIOD, 400, interval=0)
    await rig.start()
    memo = invoice_memo(rig.site_id, 0, PERIOD)
    invoice = await rig.utility_node.add_invoice(100_000, memo)
    body = Invoice(0, 100_000, 400, bytes.fromhex(invoice.payment_hash), invoice.payment_request)
    await rig.utility_writer(light.store).append(body, period=PERIOD, timestamp_ms=0)
    [result] = await rig.settler(light).settle(PERIOD, timestamp_ms=0)
    assert result.outcome is Settlement.PAID, result
    [paid] = await rig.ln.nodes[site.name].list_payments()
    assert paid.payment_hash == invoice.payment_hash
    [proof] = [e.body for e in await light.store.entries() if isinstance(e.body, Payment)]
    assert hashlib.sha256(proof.preimage).hexdigest() == invoice.payment_hash
    assert (await rig.reconcile()).ok
    assert (await check_site_node(rig, site, Author.device(0), Author.device(1))).ok


async def test_a_wallet_makes_and_touches_only_its_own_invoices(rig: Rig) -> None:
    _, light0, light1, _ = await site_of_three(rig)
    me, other = rig.party(0), rig.party(1)
    with pytest.raises(InvoiceError, match="name this device"):
        await light0.wallet.add_invoice(5_000, share_memo(b"\x01" * 32, other, me, 5_000))
    theirs = await light1.wallet.add_invoice(5_000, share_memo(b"\x01" * 32, other, me, 5_000))
    for touch in (light0.wallet.lookup_invoice, light0.wallet.cancel_invoice):
        with pytest.raises(InvoiceError, match="of this device"):
            await touch(theirs.payment_hash)
    assert (await light1.wallet.lookup_invoice(theirs.payment_hash)).state is InvoiceState.OPEN


async def test_no_internal_transfer_but_between_light_devices_of_the_node(rig: Rig) -> None:
    site, light0, light1, own = await site_of_three(rig)
    node = rig.ln.nodes[site.name]
    me = rig.party(0)
    # An invoice on the site node naming device 2 (not light here: it has its own lnd).
    stray = await node.add_invoice(5_000, share_memo(b"\x02" * 32, rig.party(2), me, 5_000))
    # Device 0's own invoice; a bill-like invoice naming no device; a hold invoice.
    mine = await light0.wallet.add_invoice(5_000, share_memo(b"\x03" * 32, me, rig.party(1), 5_000))
    nameless = await node.add_invoice(5_000, "a bill")
    held = await light1.wallet.add_hold_invoice(
        "ab" * 32, 5_000, sale_memo(b"\x04" * 32, rig.party(1), me, 2, 5_000, on_delivery=True)
    )
    # Leftover allowance: its seller logs the sale only for a SETTLED invoice.
    offered = await light1.wallet.add_invoice(
        5_000, allowance_memo(b"\x06" * 32, rig.party(1), me, 6_000, 5_000, period=PERIOD)
    )
    await rig.start()
    for bolt11, why in (
        (offered.payment_request, "only shares and sales"),
        (stray.payment_request, "no device light on this node"),
        (nameless.payment_request, "no device light on this node"),
        (mine.payment_request, "does not pay itself"),
        (held.payment_request, "hold invoice"),
    ):
        with pytest.raises(PaymentFailed, match=why):
            await light0.wallet.pay_invoice(bolt11, fee_limit_msat=1_000)
    paid = await light1.wallet.add_invoice(5_000, share_memo(b"\x05" * 32, rig.party(1), me, 5_000))
    await light0.wallet.pay_invoice(paid.payment_request, fee_limit_msat=0)
    with pytest.raises(PaymentFailed, match="INCORRECT_PAYMENT_DETAILS"):  # not a second payer
        await own.wallet.pay_invoice(paid.payment_request, fee_limit_msat=5_000)
    assert (await node.lookup_invoice(stray.payment_hash)).state is InvoiceState.OPEN
    assert node.attempts == []
    assert own.node.local_msat == 100_000_000


async def test_a_forged_internal_transfer_is_refused_or_found(rig: Rig) -> None:
    site, light0, light1, own = await site_of_three(rig)
    me = rig.party(1)
    invoice = await light1.wallet.add_invoice(
        9_000, share_memo(b"\x06" * 32, me, rig.party(2), 9_000)
    )
    await rig.start()
    # Device 2 is not on the site node: it cannot read the preimage, and a payment
    # entry with any other preimage is malformed: the log refuses it.
    # (the same body check runs when any replica decodes the entry).
    forged = Payment(9_000, bytes.fromhex(invoice.payment_hash), b"\x07" * 32, 0)
    with pytest.raises(BodyError, match="preimage does not match"):
        await own.writer.append(forged, period=PERIOD, timestamp_ms=0)
    # A light device that logs a transfer it did not make (the preimage read, the
    # invoice left open) is found by the site node's reconciliation.
    node = rig.ln.nodes[site.name]
    looked = await node.lookup_invoice(invoice.payment_hash)
    memo = f"ln {invoice.payment_hash} {looked.preimage} 0"
    await light0.writer.append(Share(1, 9_000, memo), period=PERIOD, timestamp_ms=0)
    checked = await check_site_node(rig, site, Author.device(0), Author.device(1))
    assert [p for p in checked.problems if "whose invoice is OPEN" in p], str(checked)


async def test_an_internal_transfer_logged_before_a_crash_resolves_as_logged(rig: Rig) -> None:
    _, giver, requester, _ = await site_of_three(rig)
    await rig.start()
    memo = share_memo(b"\x05" * 32, rig.party(1), rig.party(0), 10_000)
    invoice = await requester.wallet.add_invoice(10_000, memo)
    purpose = Purpose(PurposeKind.SHARE, 10_000, device=1)
    await giver.intents.record(PaymentIntent(invoice.payment_hash, invoice.payment_request,
                                             PERIOD, purpose))  # fmt: skip
    payment = await giver.wallet.pay_invoice(invoice.payment_request, fee_limit_msat=1_000)
    for body in bodies_for(purpose, payment):  # logged, then killed before the mark
        await giver.writer.append(body, period=PERIOD, timestamp_ms=int(rig.clock() * 1000))
    restarted = rig.site_node((0, 1))  # a new process: its transfers are not in memory
    wallet = restarted.wallet(rig.party(0))
    assert await wallet.list_payments() == []
    paymaster = Paymaster(node=wallet, writer=giver.writer, intents=giver.intents, name="dev0")
    [resolved] = await paymaster.recover()
    assert resolved.state is IntentState.LOGGED  # not "never sent": the chain has it
    assert len([e for e in await giver.store.entries() if isinstance(e.body, Share)]) == 1
