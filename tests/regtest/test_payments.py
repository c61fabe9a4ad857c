"""Real payments between real lnd nodes on a real btcd regtest chain."""

from __future__ import annotations

import asyncio

import pytest

from p2pgrid.lightning import (
    Invoice,
    InvoiceExpired,
    InvoiceState,
    LndClient,
    PaymentFailed,
    PaymentStatus,
)
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
