"""An entry belongs to the period of its obligation: money kinds, disputes and
a period's carry-over (once per period) may name a period earlier than their
author's previous entry, other kinds not (the writer refuses them, and so does
every replica)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from p2pgrid.ledger import (
    Author,
    Budget,
    CarryOver,
    Dispute,
    Invoice,
    LedgerError,
    LogWriter,
    MeterReading,
    Outcome,
    Payment,
    RejectReason,
)
from tests.ledger.ledger_factory import T0_MS, Site

PREIMAGE = b"\x05" * 32


async def test_a_payment_may_settle_an_earlier_period_other_kinds_may_not(tmp_path: Path) -> None:
    site = Site.make(b"periods")
    store = await site.open(tmp_path / "a.db")
    try:
        writer = LogWriter(store, site.device(0), Author.device(0))
        await writer.append(MeterReading(T0_MS, 900, 10, 2_500), period=3, timestamp_ms=T0_MS)
        payment = Payment(2_500, hashlib.sha256(PREIMAGE).digest(), PREIMAGE, 0)
        paid = await writer.append(payment, period=2, timestamp_ms=T0_MS)
        assert paid.period == 2
        await writer.append(Dispute(2, 0, 1, "wrong"), period=1, timestamp_ms=T0_MS)
        with pytest.raises(LedgerError, match="already wrote in period"):
            await writer.append(MeterReading(T0_MS + 1, 900, 1, 5), period=2, timestamp_ms=T0_MS)
    finally:
        await store.close()


async def test_a_carry_over_may_close_an_earlier_period_once(tmp_path: Path) -> None:
    """A producer wrote its next period's first order (here: a reading of
    period 3) before it closed period 2: its carry-over of period 2 follows it,
    once; a second one of period 2 is refused by the writer and by a replica."""
    site = Site.make(b"periods")
    chain = site.chain(Author.device(0))
    later = chain.next(MeterReading(T0_MS, 900, 10, 2_500), period=3)
    carry = chain.next(CarryOver(5_000), period=2)
    again = chain.next(CarryOver(1_000), period=2)
    store = await site.open(tmp_path / "d.db")
    try:
        report = await store.ingest_many([later.raw, carry.raw, again.raw])
        outcomes = [(r.outcome, r.reason) for r in report.results]
        assert outcomes == [
            (Outcome.STORED, None),
            (Outcome.STORED, None),
            (Outcome.REJECTED, RejectReason.DUPLICATE_RECORD),
        ]
    finally:
        await store.close()
    store = await site.open(tmp_path / "e.db")
    try:
        writer = LogWriter(store, site.device(0), Author.device(0))
        await writer.append(MeterReading(T0_MS, 900, 10, 2_500), period=3, timestamp_ms=T0_MS)
        closed = await writer.append(CarryOver(5_000), period=2, timestamp_ms=T0_MS)
        assert closed.period == 2
        # the carry-over does not lower the bound for the kinds after it
        with pytest.raises(LedgerError, match="already wrote in period"):
            await writer.append(MeterReading(T0_MS + 1, 900, 1, 5), period=2, timestamp_ms=T0_MS)
        with pytest.raises(LedgerError, match="not stored"):
            await writer.append(CarryOver(1_000), period=2, timestamp_ms=T0_MS)
        await writer.append(CarryOver(1_000), period=3, timestamp_ms=T0_MS)  # its own period's
    finally:
        await store.close()


async def test_replicas_accept_a_late_payment_and_refuse_a_backdated_reading(
    tmp_path: Path,
) -> None:
    site = Site.make(b"periods")
    chain = site.chain(Author.device(0))
    reading = chain.next(MeterReading(T0_MS, 900, 10, 2_500), period=3)
    payment = Payment(2_500, hashlib.sha256(PREIMAGE).digest(), PREIMAGE, 0)
    late_payment = chain.next(payment, period=2)
    backdated = chain.next(MeterReading(T0_MS, 900, 10, 2_500), period=2)
    store = await site.open(tmp_path / "b.db")
    try:
        report = await store.ingest_many([reading.raw, late_payment.raw, backdated.raw])
        outcomes = [(r.outcome, r.reason) for r in report.results]
        assert outcomes[:2] == [(Outcome.STORED, None), (Outcome.STORED, None)]
        assert outcomes[2][0] is Outcome.REJECTED
        assert outcomes[2][1] is RejectReason.TIME_REGRESSION
    finally:
        await store.close()


async def test_the_utility_may_invoice_a_period_after_granting_the_next_budget(
    tmp_path: Path,
) -> None:
    """A device's last readings of a period reached the utility late: its invoice
    follows the next period's budget on the utility's chain; a budget may not go back."""
    site = Site.make(b"periods")
    store = await site.open(tmp_path / "c.db")
    try:
        writer = LogWriter(store, site.utility, Author.utility())
        await writer.append(Budget(900_000), period=4, timestamp_ms=T0_MS)
        late = Invoice(0, 2_500, 10, b"\x01" * 32, "lnbcrt1")
        invoiced = await writer.append(late, period=3, timestamp_ms=T0_MS)
        assert invoiced.period == 3
        with pytest.raises(LedgerError, match="already wrote in period"):
            await writer.append(Budget(900_000), period=3, timestamp_ms=T0_MS)
    finally:
        await store.close()
