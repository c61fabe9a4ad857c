"""The fake network's hold invoices behave as lnd's: accepted, then settled or cancelled."""

from __future__ import annotations

import asyncio
import hashlib
import secrets

import pytest

from p2pgrid.lightning import InvoiceState, LndApiError, Payment, PaymentFailed, PaymentStatus
from p2pgrid.testing.fake_lightning import FakeLightning, FakeNode

AMOUNT = 50_000


def _net() -> tuple[FakeLightning, FakeNode, FakeNode]:
    net = FakeLightning(now=lambda: 1_000.0, hub="utility")
    net.node("utility")
    return net, net.node("buyer", local_msat=1_000_000), net.node("seller", local_msat=0)


async def _outcome(buyer: FakeNode, bolt11: str) -> PaymentFailed | Payment:
    try:
        return await buyer.pay_invoice(bolt11, fee_limit_msat=5_000)
    except PaymentFailed as exc:
        return exc


async def test_a_settled_hold_invoice_pays_the_seller() -> None:
    net, buyer, seller = _net()
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    invoice = await seller.add_hold_invoice(payment_hash, AMOUNT, "hold")
    assert invoice.state is InvoiceState.OPEN
    async with asyncio.TaskGroup() as tg:
        paying = tg.create_task(buyer.pay_invoice(invoice.payment_request, fee_limit_msat=5_000))
        await seller.wait_accepted(payment_hash)
        held = net.route_fee_msat + AMOUNT
        assert (buyer.local_msat, seller.local_msat) == (1_000_000 - held, 0)
        assert (await buyer.list_payments())[0].status is PaymentStatus.IN_FLIGHT
        await seller.settle_invoice(preimage)
        await seller.settle_invoice(preimage)  # a second settle changes nothing
    payment = paying.result()
    assert payment.status is PaymentStatus.SUCCEEDED
    assert payment.preimage == preimage.hex()
    assert (buyer.local_msat, seller.local_msat) == (1_000_000 - held, AMOUNT)
    assert (await seller.lookup_invoice(payment_hash)).state is InvoiceState.SETTLED


async def test_a_cancelled_hold_invoice_returns_the_buyers_sats() -> None:
    _, buyer, seller = _net()
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    invoice = await seller.add_hold_invoice(payment_hash, AMOUNT, "hold")
    async with asyncio.TaskGroup() as tg:
        paying = tg.create_task(_outcome(buyer, invoice.payment_request))
        await seller.wait_accepted(payment_hash)
        with pytest.raises(LndApiError):  # no invoice of that preimage's hash
            await seller.settle_invoice(b"\0" * 32)
        await seller.cancel_invoice(payment_hash)
    failed = paying.result()
    assert isinstance(failed, PaymentFailed)
    assert failed.reason == "INCORRECT_PAYMENT_DETAILS"
    assert (buyer.local_msat, seller.local_msat) == (1_000_000, 0)
    assert (await seller.lookup_invoice(payment_hash)).state is InvoiceState.CANCELED
    with pytest.raises(PaymentFailed):
        await buyer.track_payment(payment_hash)
    with pytest.raises(LndApiError):
        await seller.settle_invoice(preimage)  # cancelled: nothing to settle
