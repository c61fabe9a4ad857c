"""Invoice settlement against a fake Lightning node: a device pays only the
invoice it owes (its device, its period, the utility's node, the right hash and
amount, not expired), disputes every other one and pays nothing for it, and logs
a paid invoice in the invoice's period even when its clock moved on mid-payment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.agent.intents import IntentState
from p2pgrid.agent.settlement import InvoiceSettler, Settlement, SettleResult
from p2pgrid.billing import MIN_BILL_MSAT, invoice_memo
from p2pgrid.errors import RetryableError
from p2pgrid.ledger import Dispute, Entry, Invoice, Payment, bill
from p2pgrid.lightning import InvoiceExpired
from tests.agent.rig import TARIFF, Device, Rig

PERIOD = 1
OWED_MSAT = 250_000  # 1,000 Wh at 250 msat/Wh


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.close()


async def setup(rig: Rig) -> tuple[Device, InvoiceSettler]:
    device = await rig.device(0)
    await device.meter(PERIOD, 400, interval=0)
    await device.meter(PERIOD, 600, interval=1)
    settler = rig.settler(device)
    await rig.start()
    return device, settler


async def invoice_entry(
    rig: Rig, device: Device, bolt11: str, *, amount: int = OWED_MSAT, payment_hash: str = ""
) -> Entry:
    decoded = await device.node.decode_invoice(bolt11)
    body = Invoice(0, amount, 1000, bytes.fromhex(payment_hash or decoded.payment_hash), bolt11)
    writer = rig.utility_writer(device.store)
    return await writer.append(body, period=PERIOD, timestamp_ms=0)


async def honest_invoice(rig: Rig, *, amount: int = OWED_MSAT, expiry_s: int = 3600) -> str:
    memo = invoice_memo(rig.site_id, 0, PERIOD)
    return (await rig.utility_node.add_invoice(amount, memo, expiry_s=expiry_s)).payment_request


async def assert_disputed(rig: Rig, device: Device, entry: Entry, result: SettleResult) -> None:
    assert result.outcome is Settlement.DISPUTED, result
    assert device.node.attempts == []  # nothing paid
    disputes = [e.body for e in await device.store.entries() if isinstance(e.body, Dispute)]
    assert [(d.target_seq, d.reason) for d in disputes] == [(entry.seq, result.detail)]
    assert (await rig.reconcile()).ok


async def test_pays_the_invoice_it_owes_once_with_its_fee_logged(rig: Rig) -> None:
    device, settler = await setup(rig)
    entry = await invoice_entry(rig, device, await honest_invoice(rig))
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert result.outcome is Settlement.PAID, result.detail
    [again] = await settler.settle(PERIOD, timestamp_ms=0)
    assert again.outcome is Settlement.ALREADY_PAID
    [proof] = [e for e in await device.store.entries() if isinstance(e.body, Payment)]
    assert isinstance(entry.body, Invoice)
    assert isinstance(proof.body, Payment)
    assert (proof.body.payment_hash, proof.body.amount_msat) == (entry.body.payment_hash, OWED_MSAT)
    assert proof.body.fee_msat == 0  # a direct channel to the utility
    assert [i.state for i in await device.intents.all()] == [IntentState.LOGGED]
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
    assert (checked.payments, checked.moved_msat) == (1, OWED_MSAT)


@pytest.mark.parametrize("fails", [False, True])
async def test_the_payment_is_announced_once_logged_before_its_intent_is_resolved(
    rig: Rig, fails: bool
) -> None:
    """The payment entry is published as soon as it is in the log: the intent's
    last write comes after (and follows even if publishing fails)."""
    device = await rig.device(0)
    await device.meter(PERIOD, 1000)
    seen: list[tuple[list[bytes], list[IntentState]]] = []

    async def announce() -> None:
        proofs = [e.body.payment_hash for e in await device.store.entries()
                  if isinstance(e.body, Payment)]  # fmt: skip
        seen.append((proofs, [i.state for i in await device.intents.all()]))
        if fails:
            raise RetryableError("no peer reached")

    settler = rig.settler(device, announce)
    await rig.start()
    entry = await invoice_entry(rig, device, await honest_invoice(rig))
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert result.outcome is Settlement.PAID, result.detail
    assert isinstance(entry.body, Invoice)
    assert seen == [([entry.body.payment_hash], [IntentState.OPEN])]
    assert [i.state for i in await device.intents.all()] == [IntentState.LOGGED]
    await settler.settle(PERIOD, timestamp_ms=0)  # already paid: nothing new to announce
    assert len(seen) == 1


async def test_an_invoice_of_another_device_is_disputed(rig: Rig) -> None:
    device, settler = await setup(rig)
    memo = invoice_memo(rig.site_id, 1, PERIOD)
    bolt11 = (await rig.utility_node.add_invoice(OWED_MSAT, memo)).payment_request
    entry = await invoice_entry(rig, device, bolt11)
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert "device 1" in result.detail
    await assert_disputed(rig, device, entry, result)


async def test_an_invoice_of_another_period_is_disputed(rig: Rig) -> None:
    device, settler = await setup(rig)
    memo = invoice_memo(rig.site_id, 0, PERIOD + 1)
    bolt11 = (await rig.utility_node.add_invoice(OWED_MSAT, memo)).payment_request
    entry = await invoice_entry(rig, device, bolt11)
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert f"period {PERIOD + 1}" in result.detail
    await assert_disputed(rig, device, entry, result)


async def test_an_invoice_to_another_node_is_disputed(rig: Rig) -> None:
    device, settler = await setup(rig)
    memo = invoice_memo(rig.site_id, 0, PERIOD)
    bolt11 = (await rig.mallory.add_invoice(OWED_MSAT, memo)).payment_request
    entry = await invoice_entry(rig, device, bolt11)
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert "pays node" in result.detail
    await assert_disputed(rig, device, entry, result)


async def test_an_invoice_whose_hash_differs_from_the_entry_is_disputed(rig: Rig) -> None:
    device, settler = await setup(rig)
    entry = await invoice_entry(rig, device, await honest_invoice(rig), payment_hash="ab" * 32)
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert "payment hash" in result.detail
    await assert_disputed(rig, device, entry, result)


async def test_an_expired_invoice_is_disputed(rig: Rig) -> None:
    device, settler = await setup(rig)
    entry = await invoice_entry(rig, device, await honest_invoice(rig, expiry_s=60))
    rig.clock.t += 61
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert "expires" in result.detail
    await assert_disputed(rig, device, entry, result)


async def test_an_invoice_lnd_refuses_as_expired_is_disputed_not_raised(rig: Rig) -> None:
    device, settler = await setup(rig)
    entry = await invoice_entry(rig, device, await honest_invoice(rig))
    device.node.raise_next = InvoiceExpired("dev0: invoice expired")
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert "expired" in result.detail
    await assert_disputed(rig, device, entry, result)
    assert [i.state for i in await device.intents.all()] == [IntentState.FAILED]


async def test_an_invoice_for_too_much_is_disputed(rig: Rig) -> None:
    device, settler = await setup(rig)
    bolt11 = await honest_invoice(rig, amount=OWED_MSAT + 1)
    entry = await invoice_entry(rig, device, bolt11, amount=OWED_MSAT + 1)
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert "our log says 1000 Wh / 250000 msat" in result.detail
    await assert_disputed(rig, device, entry, result)


async def test_a_bolt11_asking_more_than_its_entry_is_disputed(rig: Rig) -> None:
    device, settler = await setup(rig)
    entry = await invoice_entry(rig, device, await honest_invoice(rig, amount=OWED_MSAT * 2))
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert "asks 500000 msat" in result.detail
    await assert_disputed(rig, device, entry, result)


async def test_paid_across_the_period_boundary_it_is_logged_in_the_invoice_period(
    rig: Rig,
) -> None:
    device, settler = await setup(rig)
    await invoice_entry(rig, device, await honest_invoice(rig))
    crossed: list[Entry] = []

    async def clock_enters_next_period() -> None:  # while lnd pays, the agent meters on
        crossed.append(await device.meter(PERIOD + 1, 10, interval=4))

    device.node.before_pay = clock_enters_next_period
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert result.outcome is Settlement.PAID, result.detail
    [proof] = [e for e in await device.store.entries() if isinstance(e.body, Payment)]
    assert proof.period == PERIOD
    assert proof.seq > crossed[0].seq
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_a_bill_below_one_sat_is_one_sat_and_is_paid(rig: Rig) -> None:
    device = await rig.device(0)
    await device.meter(PERIOD, 2)  # 2 Wh: 500 msat by the tariff
    due = bill(await device.store.entries(), device=0, period=PERIOD, tariff=TARIFF)
    assert (due.energy_wh, due.amount_msat) == (2, MIN_BILL_MSAT)
    settler = rig.settler(device)
    await rig.start()
    memo = invoice_memo(rig.site_id, 0, PERIOD)
    bolt11 = (await rig.utility_node.add_invoice(MIN_BILL_MSAT, memo)).payment_request
    decoded = await device.node.decode_invoice(bolt11)
    body = Invoice(0, MIN_BILL_MSAT, 2, bytes.fromhex(decoded.payment_hash), bolt11)
    await rig.utility_writer(device.store).append(body, period=PERIOD, timestamp_ms=0)
    [result] = await settler.settle(PERIOD, timestamp_ms=0)
    assert result.outcome is Settlement.PAID, result.detail
    assert (await rig.reconcile()).ok
