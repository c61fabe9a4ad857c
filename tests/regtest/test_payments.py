"""Real payments between real lnd nodes on a real btcd regtest chain."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time

import pytest

from p2pgrid.lightning import (
    Invoice,
    InvoiceExpired,
    InvoiceState,
    LndApiError,
    LndClient,
    Payment,
    PaymentFailed,
    PaymentStatus,
)
from p2pgrid.lightning import lnd as lnd_module
from p2pgrid.poll import wait_until

FEE_LIMIT_MSAT = 50_000
BALANCE_TIMEOUT_S = 30


async def local_msat(node: LndClient) -> int:
    return (await node.channel_balance()).local_msat


async def wait_local(node: LndClient, expected_msat: int) -> None:
    """Channel balances update just after the payment reports success: poll lnd."""

    async def reached() -> bool:
        return await local_msat(node) == expected_msat

    try:
        await wait_until(reached, timeout_s=BALANCE_TIMEOUT_S, what=f"{node.endpoint.name} balance")
    except TimeoutError:
        pytest.fail(f"{node.endpoint.name}: {await local_msat(node)} != {expected_msat}")


async def test_device_pays_utility_invoice_and_subscription_sees_it(
    dev_a: LndClient, utility: LndClient
) -> None:
    amount = 21_000_000  # 21,000 sat
    payer_before, payee_before = await local_msat(dev_a), await local_msat(utility)
    invoice = await utility.add_invoice(amount, "dev-a period 1")
    assert invoice.state is InvoiceState.OPEN

    settled: asyncio.Future[Invoice] = asyncio.get_running_loop().create_future()

    async def watch() -> None:
        async for update in utility.subscribe_invoices():
            if update.payment_hash == invoice.payment_hash and update.state is InvoiceState.SETTLED:
                settled.set_result(update)
                return

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(watch())
        # The subscription is live once lnd streams the invoice we add next.
        payment = await dev_a.pay_invoice(invoice.payment_request, fee_limit_msat=FEE_LIMIT_MSAT)
        async with asyncio.timeout(BALANCE_TIMEOUT_S):
            seen = await settled
        watcher.cancel()

    assert payment.status is PaymentStatus.SUCCEEDED
    assert payment.value_msat == amount
    assert payment.fee_msat == 0  # direct channel: no routing fee
    assert seen.amt_paid_msat == amount
    assert (await utility.lookup_invoice(invoice.payment_hash)).state is InvoiceState.SETTLED
    await wait_local(dev_a, payer_before - amount)
    await wait_local(utility, payee_before + amount)


async def test_device_pays_device_through_utility(
    dev_a: LndClient, dev_b: LndClient, utility: LndClient
) -> None:
    amount = 7_000_000
    a0, b0, u0 = await local_msat(dev_a), await local_msat(dev_b), await local_msat(utility)
    invoice = await dev_b.add_invoice(amount, "share from dev-a")
    payment = await dev_a.pay_invoice(invoice.payment_request, fee_limit_msat=FEE_LIMIT_MSAT)
    assert payment.status is PaymentStatus.SUCCEEDED
    assert payment.fee_msat > 0  # the utility charged its routing fee
    await wait_local(dev_a, a0 - amount - payment.fee_msat)
    await wait_local(dev_b, b0 + amount)
    await wait_local(utility, u0 + payment.fee_msat)  # forwarded: keeps exactly the fee


async def test_paying_the_same_invoice_twice_pays_once(
    dev_a: LndClient, utility: LndClient
) -> None:
    amount = 3_000_000
    invoice = await utility.add_invoice(amount, "idempotent")
    before = await local_msat(dev_a)
    first = await dev_a.pay_invoice(invoice.payment_request, fee_limit_msat=FEE_LIMIT_MSAT)
    second = await dev_a.pay_invoice(invoice.payment_request, fee_limit_msat=FEE_LIMIT_MSAT)
    assert second.payment_hash == first.payment_hash
    assert second.preimage == first.preimage
    assert second.status is PaymentStatus.SUCCEEDED
    await wait_local(dev_a, before - amount)
    paid = [p for p in await dev_a.list_payments() if p.payment_hash == invoice.payment_hash]
    assert [p.status for p in paid] == [PaymentStatus.SUCCEEDED]
    assert (await utility.lookup_invoice(invoice.payment_hash)).amt_paid_msat == amount


async def test_lnd_ends_a_payment_stream_right_after_its_final_update(
    dev_a: LndClient, utility: LndClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client reads a payment stream to its end, so that its connection is reused,
    for at most ``STREAM_END_S``: lnd ends the stream at the final update, so a
    payment and a track return at once, not when the bound runs out."""
    monkeypatch.setattr(lnd_module, "STREAM_END_S", 60.0)
    invoice = await utility.add_invoice(1_000_000, "stream end")
    started = time.monotonic()
    paid = await dev_a.pay_invoice(invoice.payment_request, fee_limit_msat=FEE_LIMIT_MSAT)
    tracked = await dev_a.track_payment(invoice.payment_hash)
    assert (paid.status, tracked.status) == (PaymentStatus.SUCCEEDED, PaymentStatus.SUCCEEDED)
    assert time.monotonic() - started < 30.0  # not the 60 s bound, twice


async def test_expired_invoice_fails_typed_and_moves_nothing(
    dev_a: LndClient, utility: LndClient
) -> None:
    invoice = await utility.add_invoice(1_000_000, "expires", expiry_s=1)

    async def canceled() -> bool:  # lnd cancels invoices once they expire
        return (await utility.lookup_invoice(invoice.payment_hash)).state is InvoiceState.CANCELED

    await wait_until(canceled, timeout_s=30, what="the invoice to expire")
    before = await local_msat(dev_a)
    with pytest.raises(InvoiceExpired):
        await dev_a.pay_invoice(invoice.payment_request, fee_limit_msat=FEE_LIMIT_MSAT)
    assert await local_msat(dev_a) == before


async def test_unknown_invoice_fails_with_lnd_reason_and_moves_nothing(
    dev_a: LndClient, utility: LndClient
) -> None:
    invoice = await utility.add_invoice(2_000_000, "canceled by the utility")
    await utility.cancel_invoice(invoice.payment_hash)  # the payee no longer knows it
    before, u_before = await local_msat(dev_a), await local_msat(utility)
    with pytest.raises(PaymentFailed) as failure:
        await dev_a.pay_invoice(invoice.payment_request, fee_limit_msat=FEE_LIMIT_MSAT)
    assert failure.value.reason == "INCORRECT_PAYMENT_DETAILS"
    assert failure.value.payment_hash == invoice.payment_hash
    assert await local_msat(dev_a) == before
    assert await local_msat(utility) == u_before


async def test_payment_beyond_capacity_fails_with_no_route(
    dev_a: LndClient, utility: LndClient
) -> None:
    invoice = await utility.add_invoice(9_000_000_000, "more than the channel holds")
    before = await local_msat(dev_a)
    with pytest.raises(PaymentFailed) as failure:
        await dev_a.pay_invoice(invoice.payment_request, fee_limit_msat=FEE_LIMIT_MSAT)
    assert failure.value.reason in {"NO_ROUTE", "INSUFFICIENT_BALANCE"}
    assert await local_msat(dev_a) == before


async def test_keysend_moves_exact_amount(dev_a: LndClient, utility: LndClient) -> None:
    amount = 1_234_000
    a0, u0 = await local_msat(dev_a), await local_msat(utility)
    info = await utility.get_info()
    payment = await dev_a.keysend(info.pubkey, amount, fee_limit_msat=FEE_LIMIT_MSAT)
    assert payment.status is PaymentStatus.SUCCEEDED
    await wait_local(dev_a, a0 - amount)
    await wait_local(utility, u0 + amount)


async def test_decode_invoice_matches_what_was_asked(utility: LndClient) -> None:
    invoice = await utility.add_invoice(5_000, "decode me", expiry_s=600)
    decoded = await utility.decode_invoice(invoice.payment_request)
    assert decoded.amount_msat == 5_000
    assert decoded.payment_hash == invoice.payment_hash
    assert decoded.destination == (await utility.get_info()).pubkey
    assert decoded.description == "decode me"
    assert decoded.expiry_s == 600


async def _pay_outcome(payer: LndClient, bolt11: str) -> Payment | PaymentFailed:
    try:
        return await payer.pay_invoice(bolt11, fee_limit_msat=FEE_LIMIT_MSAT)
    except PaymentFailed as exc:
        return exc


async def _accepted(payee: LndClient, payment_hash: str) -> None:
    async def accepted() -> bool:
        return (await payee.lookup_invoice(payment_hash)).state is InvoiceState.ACCEPTED

    await wait_until(accepted, timeout_s=BALANCE_TIMEOUT_S, what="the hold invoice to accept")


async def test_hold_invoice_is_settled_by_the_payee_with_its_preimage(
    dev_a: LndClient, dev_b: LndClient, utility: LndClient
) -> None:
    amount = 4_000_000
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    a0, b0 = await local_msat(dev_a), await local_msat(dev_b)
    invoice = await dev_b.add_hold_invoice(payment_hash, amount, "hold: settle")
    assert invoice.state is InvoiceState.OPEN
    again = await dev_b.add_hold_invoice(payment_hash, amount, "hold: settle")  # a retry
    assert again.payment_request == invoice.payment_request
    async with asyncio.TaskGroup() as tg:
        paying = tg.create_task(_pay_outcome(dev_a, invoice.payment_request))
        await _accepted(dev_b, payment_hash)
        # Held: the payee cannot spend it yet (its balance moves by commitment fees only).
        assert await local_msat(dev_b) < b0 + amount
        await dev_b.settle_invoice(preimage)
    payment = paying.result()
    assert isinstance(payment, Payment)
    assert payment.status is PaymentStatus.SUCCEEDED
    assert payment.preimage == preimage.hex()
    await dev_b.settle_invoice(preimage)  # settling again is a no-op
    assert (await dev_b.lookup_invoice(payment_hash)).state is InvoiceState.SETTLED
    await wait_local(dev_a, a0 - amount - payment.fee_msat)
    await wait_local(dev_b, b0 + amount)


async def test_cancelled_hold_invoice_returns_the_payers_sats(
    dev_a: LndClient, dev_b: LndClient, utility: LndClient
) -> None:
    amount = 4_000_000
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    a0, b0, u0 = await local_msat(dev_a), await local_msat(dev_b), await local_msat(utility)
    invoice = await dev_b.add_hold_invoice(payment_hash, amount, "hold: cancel")
    async with asyncio.TaskGroup() as tg:
        paying = tg.create_task(_pay_outcome(dev_a, invoice.payment_request))
        await _accepted(dev_b, payment_hash)
        assert await local_msat(dev_a) < a0  # the HTLC is out of the payer's balance
        await dev_b.cancel_invoice(payment_hash)
    failed = paying.result()
    assert isinstance(failed, PaymentFailed)
    assert failed.reason == "INCORRECT_PAYMENT_DETAILS"
    assert (await dev_b.lookup_invoice(payment_hash)).state is InvoiceState.CANCELED
    with pytest.raises(LndApiError):
        await dev_b.settle_invoice(preimage)  # cancelled: nothing to settle
    await wait_local(dev_a, a0)  # every msat back, routing fee included
    await wait_local(dev_b, b0)
    await wait_local(utility, u0)
