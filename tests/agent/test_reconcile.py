"""The reconciliation checker finds each way lnd and the log can disagree."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.ledger import AllowanceSale, Author, Invoice, Payment
from p2pgrid.reconcile import Reconciliation, reconcile_node, snapshot
from tests.agent.rig import Device, Rig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.close()


async def paid_invoice(rig: Rig) -> tuple[Device, Invoice, bytes]:
    device = await rig.device(0)
    await rig.start()
    invoice = await rig.utility_node.add_invoice(7_000, "bill")
    body = Invoice(0, 7_000, 28, bytes.fromhex(invoice.payment_hash), invoice.payment_request)
    await rig.utility_writer(device.store).append(body, period=1, timestamp_ms=0)
    payment = await device.node.pay_invoice(invoice.payment_request, fee_limit_msat=0)
    return device, body, bytes.fromhex(payment.preimage)


async def test_agreeing_lnd_and_log_pass(rig: Rig) -> None:
    device, invoice, preimage = await paid_invoice(rig)
    proof = Payment(7_000, invoice.payment_hash, preimage, 0)
    await device.writer.append(proof, period=1, timestamp_ms=0)
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_a_payment_without_its_entry_is_found(rig: Rig) -> None:
    await paid_invoice(rig)
    checked = await rig.reconcile()
    assert any("with no log entry" in p for p in checked.problems), str(checked)
    assert any("dev0: channel balance moved -7000" in p for p in checked.problems)


async def test_a_wrong_fee_and_a_double_entry_are_found(rig: Rig) -> None:
    device, invoice, preimage = await paid_invoice(rig)
    proof = Payment(7_000, invoice.payment_hash, preimage, 3)
    await device.writer.append(proof, period=1, timestamp_ms=0)
    await device.writer.append(proof, period=1, timestamp_ms=0)
    checked = await rig.reconcile()
    assert any("is paid 2 times" in p for p in checked.problems), str(checked)
    assert any("+ fee 3 msat" in p for p in checked.problems), str(checked)


async def test_an_entry_without_an_lnd_payment_is_found(rig: Rig) -> None:
    device = await rig.device(0)
    await rig.start()
    preimage = b"\x02" * 32
    fake = Payment(9_000, hashlib.sha256(preimage).digest(), preimage, 0)
    await device.writer.append(fake, period=1, timestamp_ms=0)
    checked = await rig.reconcile()
    assert any("0 succeeded lnd payment(s) on dev0" in p for p in checked.problems), str(checked)


# -- one node against one replica (``p2pgrid log verify --against-lnd``) ------------


async def _node_check(rig: Rig, name: str, author: Author) -> Reconciliation:
    return reconcile_node(
        await snapshot(name, rig.ln.nodes[name]),
        site=rig.site.membership.site_hash,
        entries=await rig.site_log(),
        authors=(author,),
    )


async def test_one_node_agreeing_with_the_log_passes(rig: Rig) -> None:
    device, invoice, preimage = await paid_invoice(rig)
    await device.writer.append(
        Payment(7_000, invoice.payment_hash, preimage, 0), period=1, timestamp_ms=0
    )
    payer = await _node_check(rig, "dev0", Author.device(0))
    assert payer.ok, str(payer)
    assert (payer.payments, payer.moved_msat) == (1, 7_000)
    payee = await _node_check(rig, "utility", Author.utility())
    assert payee.ok, str(payee)
    assert payee.payments == 1


async def test_one_node_paid_or_settled_without_the_entry_is_found(rig: Rig) -> None:
    await paid_invoice(rig)  # paid on lnd; no payment entry in the log
    payer = await _node_check(rig, "dev0", Author.device(0))
    assert [p for p in payer.problems if "with no log entry" in p], str(payer)
    payee = await _node_check(rig, "utility", Author.utility())
    assert [p for p in payee.problems if "with no log payment to it" in p], str(payee)


async def test_one_node_with_a_wrong_amount_or_no_lnd_payment_is_found(rig: Rig) -> None:
    device, invoice, preimage = await paid_invoice(rig)
    await device.writer.append(
        Payment(7_001, invoice.payment_hash, preimage, 0), period=1, timestamp_ms=0
    )
    other = b"\x03" * 32
    await device.writer.append(
        Payment(5_000, hashlib.sha256(other).digest(), other, 0), period=1, timestamp_ms=0
    )
    checked = await _node_check(rig, "dev0", Author.device(0))
    assert [p for p in checked.problems if "log says 7001 + fee 0 msat" in p], str(checked)
    assert [p for p in checked.problems if "0 succeeded lnd payment(s) on dev0" in p]
    # Another device's node knows nothing of dev0's payments: none of them is its.
    await rig.device(1)
    assert (await _node_check(rig, "dev1", Author.device(1))).ok


async def allowance_paid(rig: Rig, price: int) -> tuple[Device, Device, bytes, bytes]:
    """Device 1 paid device 0's invoice of ``price`` msat for allowance."""
    seller, buyer = await rig.device(0), await rig.device(1)
    await rig.start()
    invoice = await seller.node.add_invoice(price, "allowance")
    payment = await buyer.node.pay_invoice(invoice.payment_request, fee_limit_msat=5_000)
    return seller, buyer, bytes.fromhex(invoice.payment_hash), bytes.fromhex(payment.preimage)


async def test_an_allowance_payment_is_paid_to_the_seller_that_logged_the_sale(rig: Rig) -> None:
    seller, buyer, paid, preimage = await allowance_paid(rig, 24_000)
    fee = rig.ln.route_fee_msat
    await buyer.writer.append(Payment(24_000, paid, preimage, fee), period=1, timestamp_ms=0)
    sale = AllowanceSale(1, 30_000, 24_000, paid, preimage)
    await seller.writer.append(sale, period=1, timestamp_ms=1)
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
    assert checked.moved_msat == 24_000
    for name, index in (("dev0", 0), ("dev1", 1)):  # p2pgrid log verify --against-lnd
        one = await _node_check(rig, name, Author.device(index))
        assert one.ok, str(one)
        assert one.payments == 1


async def test_an_allowance_sale_without_its_payment_or_at_another_price_is_found(
    rig: Rig,
) -> None:
    seller, buyer, paid, preimage = await allowance_paid(rig, 24_000)
    fee = rig.ln.route_fee_msat
    await buyer.writer.append(Payment(24_000, paid, preimage, fee), period=1, timestamp_ms=0)
    await seller.writer.append(
        AllowanceSale(1, 30_000, 20_000, paid, preimage), period=1, timestamp_ms=1
    )
    other = b"\x04" * 32
    await seller.writer.append(
        AllowanceSale(1, 5_000, 4_000, hashlib.sha256(other).digest(), other),
        period=1,
        timestamp_ms=2,
    )
    checked = await rig.reconcile()
    assert [p for p in checked.problems if "the price is 20000 msat, the buyer paid 24000" in p]
    assert [p for p in checked.problems if "no payment of it in the log" in p], str(checked)
    one = await _node_check(rig, "dev0", Author.device(0))
    assert [p for p in one.problems if "no payment of it in the log" in p], str(one)
