"""The reconciliation checker finds each way lnd and the log can disagree."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.ledger import Invoice, Payment
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
