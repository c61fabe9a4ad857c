"""Intent before money: a payment recorded before it is sent is resolved
against lnd by its hash when the agent starts: logged if it was paid (in the
period of its obligation), failed if lnd never sent it or it failed. The payee's
ended receivables leave the file a period after theirs, resolved payment intents
two periods after theirs; open ones stay. A resolution (committed unsynced)
lost in a power cut, the file back as it was at the intent's synced open, is
resolved again against lnd, once; concurrent writes of one file are each their
own transaction. A payment's entries are committed to the log synced before
they are announced and before its intent is marked logged."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.agent.intents import (
    IntentBook,
    IntentError,
    IntentState,
    PaymentIntent,
    Purpose,
    PurposeKind,
    Receivable,
    ReceivableState,
)
from p2pgrid.agent.paymaster import Paymaster, PayRefused
from p2pgrid.billing import invoice_memo
from p2pgrid.ledger import EntryKind, Invoice, LogChange, Payment, Sale
from p2pgrid.lightning.models import Payment as LnPayment
from tests.agent.rig import Device, Rig
from tests.commit_trace import Commit, CommitTrace, Timeline

OPEN, SOLD, CANCELLED = ReceivableState.OPEN, ReceivableState.SOLD, ReceivableState.CANCELLED
OPEN_INTENT, LOGGED, FAILED = IntentState.OPEN, IntentState.LOGGED, IntentState.FAILED


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.close()


async def test_a_payment_whose_agent_died_before_logging_is_logged_on_start(rig: Rig) -> None:
    buyer, seller = await rig.device(1), await rig.device(0)
    await rig.start()
    invoice = await seller.node.add_invoice(10_000, "a sale")
    purpose = Purpose(PurposeKind.SALE, 10_000, device=0, energy_wh=50)
    await buyer.intents.record(
        PaymentIntent(invoice.payment_hash, invoice.payment_request, 2, purpose)
    )
    await buyer.node.pay_invoice(invoice.payment_request, fee_limit_msat=5_000)
    # ... the process dies here: lnd paid, the log does not show it.
    await buyer.meter(3, 10)  # (the restarted agent is in a later period already)
    assert not (await rig.reconcile()).ok
    restarted = Paymaster(node=buyer.node, writer=buyer.writer, intents=buyer.intents, name="dev1")
    [resolved] = await restarted.recover()
    assert resolved.state is IntentState.LOGGED
    entries = await buyer.store.entries()
    logged = [e for e in entries if isinstance(e.body, Sale | Payment)]
    assert [(type(e.body), e.period) for e in logged] == [(Sale, 2), (Payment, 2)]
    assert await restarted.recover() == []  # nothing open any more
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_an_intent_lnd_never_sent_is_failed_and_logs_nothing(rig: Rig) -> None:
    device = await rig.device(0)
    await rig.start()
    memo = invoice_memo(rig.site_id, 0, 1)
    invoice = await rig.utility_node.add_invoice(5_000, memo)
    body = Invoice(0, 5_000, 20, bytes.fromhex(invoice.payment_hash), invoice.payment_request)
    await rig.utility_writer(device.store).append(body, period=1, timestamp_ms=0)
    purpose = Purpose(PurposeKind.INVOICE, 5_000)
    await device.intents.record(
        PaymentIntent(invoice.payment_hash, invoice.payment_request, 1, purpose)
    )
    [resolved] = await device.paymaster.recover()
    assert (resolved.state, resolved.detail) == (IntentState.FAILED, "lnd never sent it")
    logged = [e.body for e in await device.store.entries() if e.kind is not EntryKind.ENROL]
    assert logged == [body]  # besides the genesis enrolments: the utility's invoice only
    assert (await rig.reconcile()).ok
    # A retry reopens the failed intent; then it pays and is logged once.
    await device.paymaster.pay(
        invoice.payment_request, invoice.payment_hash, period=1, purpose=purpose, fee_limit_msat=0
    )
    assert [i.state for i in await device.intents.all()] == [IntentState.LOGGED]
    with pytest.raises(PayRefused, match="has an intent already"):  # never paid twice
        await device.paymaster.pay(
            invoice.payment_request,
            invoice.payment_hash,
            period=1,
            purpose=purpose,
            fee_limit_msat=0,
        )
    with pytest.raises(IntentError):  # nothing reopens a logged intent
        await device.intents.record(
            PaymentIntent(invoice.payment_hash, invoice.payment_request, 1, purpose)
        )
    assert (await rig.reconcile()).ok


async def test_a_failed_payment_is_failed_on_start(rig: Rig) -> None:
    device = await rig.device(0)
    await rig.start()
    invoice = await rig.utility_node.add_invoice(5_000, "x")
    purpose = Purpose(PurposeKind.INVOICE, 5_000)
    await device.intents.record(
        PaymentIntent(invoice.payment_hash, invoice.payment_request, 1, purpose)
    )
    device.node.fail_next = "NO_ROUTE"
    with pytest.raises(Exception, match="NO_ROUTE"):
        await device.node.pay_invoice(invoice.payment_request, fee_limit_msat=0)
    [resolved] = await device.paymaster.recover()
    assert (resolved.state, resolved.detail) == (IntentState.FAILED, "NO_ROUTE")
    assert (await rig.reconcile()).ok


async def test_nothing_is_paid_before_the_open_intents_are_resolved(rig: Rig) -> None:
    buyer, seller = await rig.device(1), await rig.device(0)
    await rig.start()
    first = await seller.node.add_invoice(4_000, "first sale")
    purpose = Purpose(PurposeKind.SALE, 4_000, device=0, energy_wh=20)
    await buyer.intents.record(PaymentIntent(first.payment_hash, first.payment_request, 1, purpose))
    await buyer.node.pay_invoice(first.payment_request, fee_limit_msat=5_000)  # then a crash
    restarted = Paymaster(node=buyer.node, writer=buyer.writer, intents=buyer.intents, name="dev1")
    second = await seller.node.add_invoice(6_000, "second sale")
    paid = await restarted.pay(
        second.payment_request,
        second.payment_hash,
        period=1,
        purpose=Purpose(PurposeKind.SALE, 6_000, device=0, energy_wh=30),
        fee_limit_msat=5_000,
    )
    amounts = [e.body.amount_msat for e in await buyer.store.entries() if isinstance(e.body, Sale)]
    assert amounts == [4_000, 6_000]  # the crashed payment is logged first
    assert paid.entries[0].body == Sale(0, 30, 6_000)
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def test_recover_while_a_payment_is_in_flight_leaves_it_to_that_payment(rig: Rig) -> None:
    # The agent resolves open intents again whenever lnd was away, while its desks
    # may be paying: the payment in flight must be logged once, by its own pay().
    device = await rig.device(0)
    await rig.start()
    memo = invoice_memo(rig.site_id, 0, 1)
    invoice = await rig.utility_node.add_invoice(5_000, memo)
    await device.paymaster.recover()
    resolved_meanwhile: list[object] = []

    async def recover_mid_payment() -> None:
        resolved_meanwhile.extend(await device.paymaster.recover())

    device.node.before_pay = recover_mid_payment
    purpose = Purpose(PurposeKind.INVOICE, 5_000)
    await device.paymaster.pay(
        invoice.payment_request, invoice.payment_hash, period=1, purpose=purpose, fee_limit_msat=0
    )
    assert resolved_meanwhile == []
    assert [i.state for i in await device.intents.all()] == [IntentState.LOGGED]
    payments = [e for e in await device.store.entries() if isinstance(e.body, Payment)]
    assert len(payments) == 1


async def test_recover_skips_an_intent_its_payment_resolved_while_recovery_ran(rig: Rig) -> None:
    # Recovery reads the open intents once, then asks lnd about each in turn. A
    # payment in flight at that read may finish (and resolve its intent) while
    # recovery is busy with an earlier intent: recovery must then leave it alone,
    # not resolve it a second time (logged -> logged is forbidden: the agent died).
    device = await rig.device(0)
    await rig.start()
    await device.paymaster.recover()
    left = await rig.utility_node.add_invoice(4_000, invoice_memo(rig.site_id, 0, 0))
    purpose = Purpose(PurposeKind.INVOICE, 4_000)
    await device.intents.record(PaymentIntent(left.payment_hash, left.payment_request, 0, purpose))
    paying = await rig.utility_node.add_invoice(5_000, invoice_memo(rig.site_id, 0, 1))
    recovery_busy, payment_done = asyncio.Event(), asyncio.Event()
    lnd_list = device.node.list_payments

    async def list_payments_held() -> list[LnPayment]:
        recovery_busy.set()  # recovery holds both intents as open, works on the first
        await payment_done.wait()
        return await lnd_list()

    recovery: list[asyncio.Task[list[PaymentIntent]]] = []

    async def recover_mid_payment() -> None:
        device.node.list_payments = list_payments_held  # type: ignore[method-assign]
        recovery.append(asyncio.create_task(device.paymaster.recover()))
        await recovery_busy.wait()
        device.node.list_payments = lnd_list  # type: ignore[method-assign]

    device.node.before_pay = recover_mid_payment
    await device.paymaster.pay(
        paying.payment_request,
        paying.payment_hash,
        period=1,
        purpose=Purpose(PurposeKind.INVOICE, 5_000),
        fee_limit_msat=0,
    )
    payment_done.set()
    [resolved] = await recovery[0]
    assert (resolved.payment_hash, resolved.state) == (left.payment_hash, IntentState.FAILED)
    states = {i.payment_hash: i.state for i in await device.intents.all()}
    assert states == {
        left.payment_hash: IntentState.FAILED,
        paying.payment_hash: IntentState.LOGGED,
    }
    payments = [e for e in await device.store.entries() if isinstance(e.body, Payment)]
    assert len(payments) == 1


async def test_ended_receivables_of_earlier_periods_are_pruned_open_ones_stay(
    tmp_path: Path,
) -> None:
    book = await IntentBook.open(tmp_path / "dev0.intents.db", name="dev0")
    try:
        kept = {}
        for period, state in ((1, SOLD), (1, CANCELLED), (1, OPEN), (2, SOLD), (3, CANCELLED)):
            payment_hash = f"{len(kept):064x}"
            await book.expect(
                Receivable(payment_hash, PurposeKind.ALLOWANCE, period, ("s", 1), b"o", b"p")
            )
            if state is not OPEN:
                await book.end_receivable(payment_hash, state)
            kept[payment_hash] = (period, state)
        assert await book.prune_receivables(before=2) == 2  # period 1's sold and cancelled
        assert await book.prune_receivables(before=2) == 0
        left = await asyncio.to_thread(rows, tmp_path / "dev0.intents.db")
        assert left == {h: (p, s.value) for h, (p, s) in kept.items() if p >= 2 or s is OPEN}
        [still] = await book.receivables(PurposeKind.ALLOWANCE)  # the open one of period 1
        assert still.period == 1
    finally:
        await book.close()


def rows(path: Path) -> dict[str, tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        found = db.execute("SELECT payment_hash, period, state FROM receivables").fetchall()
    return {h: (p, s) for h, p, s in found}


async def test_resolved_intents_before_the_previous_period_are_pruned_open_ones_stay(
    tmp_path: Path,
) -> None:
    book = await IntentBook.open(tmp_path / "dev0.intents.db", name="dev0")
    try:
        states = {}
        for period, state in ((0, LOGGED), (0, FAILED), (0, OPEN_INTENT), (1, LOGGED), (2, FAILED)):
            payment_hash = f"{len(states):064x}"
            purpose = Purpose(PurposeKind.INVOICE, 1_000)
            await book.record(PaymentIntent(payment_hash, f"lnbc{len(states)}", period, purpose))
            if state is not OPEN_INTENT:
                await book.resolve(payment_hash, state, "test")
            states[payment_hash] = (period, state)
        assert await book.prune_intents(before=1) == 2  # period 0's logged and failed
        assert await book.prune_intents(before=1) == 0
        left = {i.payment_hash: (i.period, i.state) for i in await book.all()}
        assert left == {h: (p, s) for h, (p, s) in states.items() if p >= 1 or s is OPEN_INTENT}
        [still] = await book.open_intents()  # the open one of period 0 stays, to be resolved
        assert still.period == 0
        # A pruned hash paid again is recorded afresh (the log and lnd refuse it twice).
        purpose = Purpose(PurposeKind.INVOICE, 1_000)
        await book.record(PaymentIntent(f"{0:064x}", "lnbc0", 0, purpose))
    finally:
        await book.close()


async def test_a_period_close_prunes_the_resolved_intents_before_the_previous_period(
    rig: Rig,
) -> None:
    """An agent that ran three periods keeps the invoice intents of the last two;
    the closes deleted the older resolved ones (here period 0's, paid and failed)."""
    device = await rig.device(0)
    for period in range(3):
        await rig.allocate(device.store, 0, 200_000, period=period)
    purpose = Purpose(PurposeKind.INVOICE, 1_000)
    await device.intents.record(PaymentIntent(f"{7:064x}", "lnbc7", 0, purpose))
    await device.intents.resolve(f"{7:064x}", FAILED, "an earlier try")
    agent, replica, _ = await rig.agent(device)
    replica.before_wait = rig.utility_for(device)
    await rig.start()
    report = await agent.run(periods=3)
    assert [s for _, s, _ in report.settlements] == ["paid"] * 3
    left = [(i.period, i.state, i.purpose.kind) for i in await device.intents.all()]
    assert left == [(1, LOGGED, PurposeKind.INVOICE), (2, LOGGED, PurposeKind.INVOICE)]
    assert (await rig.reconcile()).ok


def _copy_intents(src: Path, dst: Path) -> None:
    """The intents file as a power cut may leave it: its database and WAL as
    they are now (a later commit made without a sync may never reach the disk)."""
    dst.mkdir()
    for suffix in ("", "-wal"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", dst / f"{src.name}{suffix}")


def _put_back(kept: Path, path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    for suffix in ("", "-wal"):
        if (kept / f"{path.name}{suffix}").exists():
            shutil.copyfile(kept / f"{path.name}{suffix}", f"{path}{suffix}")


async def _power_cut(rig: Rig, device: Device, kept: Path) -> IntentBook:
    """Stop the device's intents file and put back the files of ``kept``; the
    device reopens it (its log and lnd are as they are)."""
    path = rig.tmp / f"{device.name}.intents.db"
    await device.intents.close()
    await asyncio.to_thread(_put_back, kept, path)
    book = await IntentBook.open(path, name=device.name)
    rig.books[rig.books.index(device.intents)] = book
    device.intents = book
    return book


@pytest.mark.parametrize("outcome", ["paid", "failed"])
async def test_a_resolution_lost_in_a_power_cut_is_resolved_again_once(
    rig: Rig, outcome: str
) -> None:
    """The resolution of an intent is committed without a sync: a power cut
    right after it may keep the file as it was when the intent was opened (the
    last synced commit, before lnd was asked). The restarted agent finds the
    intent open and resolves it against lnd: the payment logged once (its entry
    survived in the log: not written twice), or failed again."""
    device = await rig.device(0)
    await rig.start()
    invoice = await rig.utility_node.add_invoice(5_000, invoice_memo(rig.site_id, 0, 1))
    body = Invoice(0, 5_000, 20, bytes.fromhex(invoice.payment_hash), invoice.payment_request)
    await rig.utility_writer(device.store).append(body, period=1, timestamp_ms=0)
    purpose = Purpose(PurposeKind.INVOICE, 5_000)
    kept = rig.tmp / "kept"
    lnd_pay = device.node.pay_invoice

    async def pay_after_the_open_commit(payment_request: str, *, fee_limit_msat: int) -> LnPayment:
        await asyncio.to_thread(_copy_intents, rig.tmp / "dev0.intents.db", kept)
        return await lnd_pay(payment_request, fee_limit_msat=fee_limit_msat)

    device.node.pay_invoice = pay_after_the_open_commit  # type: ignore[method-assign]
    if outcome == "failed":
        device.node.fail_next = "NO_ROUTE"
    with contextlib.nullcontext() if outcome == "paid" else pytest.raises(PayRefused):
        await device.paymaster.pay(
            invoice.payment_request, invoice.payment_hash, period=1, purpose=purpose,
            fee_limit_msat=0,
        )  # fmt: skip
    resolved = LOGGED if outcome == "paid" else FAILED
    assert [i.state for i in await device.intents.all()] == [resolved]
    logged = [e for e in await device.store.entries() if isinstance(e.body, Payment)]
    assert len(logged) == (1 if outcome == "paid" else 0)

    book = await _power_cut(rig, device, kept)  # the resolution never reached the disk
    assert [i.state for i in await book.all()] == [OPEN_INTENT]
    device.node.pay_invoice = lnd_pay  # type: ignore[method-assign]
    restarted = Paymaster(node=device.node, writer=device.writer, intents=book, name="dev0")
    [again] = await restarted.recover()
    assert again.state is resolved
    assert [e for e in await device.store.entries() if isinstance(e.body, Payment)] == logged
    assert await restarted.recover() == []
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
    if outcome == "failed":  # the same invoice tried again: paid and logged once
        await restarted.pay(
            invoice.payment_request, invoice.payment_hash, period=1, purpose=purpose,
            fee_limit_msat=0,
        )  # fmt: skip
        payments = [e for e in await device.store.entries() if isinstance(e.body, Payment)]
        assert len(payments) == 1
        assert (await rig.reconcile()).ok


async def test_concurrent_writes_of_one_book_are_each_their_own_transaction(
    tmp_path: Path,
) -> None:
    """The agent's settler and desks write to one intents file at once: opens
    (synced), resolutions (not synced) and prunings interleave, and each stays
    its own transaction (a resolution's ``synchronous`` never lands inside an
    open's transaction, nor the other way)."""
    book = await IntentBook.open(tmp_path / "dev0.intents.db", name="dev0")
    try:
        purpose = Purpose(PurposeKind.INVOICE, 1_000)
        resolved = [f"{i:064x}" for i in range(20)]
        for payment_hash in resolved:
            await book.record(PaymentIntent(payment_hash, "lnbc", 1, purpose))
        opened = [f"{i:064x}" for i in range(20, 40)]
        await asyncio.gather(
            *(book.resolve(h, LOGGED) for h in resolved),
            *(book.record(PaymentIntent(h, "lnbc", 2, purpose)) for h in opened),
            *(book.prune_intents(before=0) for _ in range(5)),
        )
        states = {i.payment_hash: i.state for i in await book.all()}
        assert states == {h: LOGGED for h in resolved} | {h: OPEN_INTENT for h in opened}
    finally:
        await book.close()
    again = await IntentBook.open(tmp_path / "dev0.intents.db", name="dev0")
    try:
        assert {i.payment_hash for i in await again.open_intents()} == set(opened)
    finally:
        await again.close()


@pytest.mark.parametrize("path", ["pay", "recover"])
async def test_a_payments_entries_are_synced_before_announced_and_marked_logged(
    rig: Rig, path: str
) -> None:
    """The intent's ``logged`` mark stands for the payment's log entries, so
    they must outlive it in a power cut: their batch commits to the log with
    ``synchronous=FULL`` and has returned (the store's listeners hear of it)
    before the entries are announced to peers and before the mark is written;
    whether the payment is logged right after lnd paid or by recovery."""
    buyer, seller = await rig.device(1), await rig.device(0)
    await rig.start()
    invoice = await seller.node.add_invoice(10_000, "a sale")
    purpose = Purpose(PurposeKind.SALE, 10_000, device=0, energy_wh=50)
    timeline = Timeline()
    log_trace = CommitTrace("NORMAL", source="log commit", timeline=timeline)
    await log_trace.attach(buyer.store._conn)
    intents_trace = CommitTrace("FULL", source="intents commit", timeline=timeline)
    await intents_trace.attach(buyer.intents._db)

    def committed(change: LogChange) -> None:
        for entry in change.appended:
            timeline.add("log returned", entry.id)

    buyer.store.subscribe(committed)

    async def announce() -> None:
        timeline.add("announce", None)

    if path == "pay":
        paid = await buyer.paymaster.pay(
            invoice.payment_request, invoice.payment_hash, period=2, purpose=purpose,
            fee_limit_msat=5_000, announce=announce,
        )  # fmt: skip
        entries = paid.entries
    else:
        await buyer.intents.record(
            PaymentIntent(invoice.payment_hash, invoice.payment_request, 2, purpose)
        )
        await buyer.node.pay_invoice(invoice.payment_request, fee_limit_msat=5_000)
        [resolved] = await buyer.paymaster.recover()  # (the process died before logging)
        assert resolved.state is LOGGED
        entries = tuple(e for e in await buyer.store.entries() if e.author == buyer.writer.author)
    assert [type(e.body) for e in entries] == [Sale, Payment]

    def marked_logged(what: object) -> bool:
        return isinstance(what, Commit) and what.writes(f"'{LOGGED.value}'")

    mark = timeline.index("intents commit", marked_logged)
    for entry in entries:
        [commit] = [c for c in log_trace.commits if c.inserts("entries", entry.id)]
        assert commit.level == "FULL"
        stored = timeline.index("log commit", lambda what, c=commit: what is c)
        returned = timeline.index("log returned", lambda what, e=entry: what == e.id)
        assert stored < returned < mark
    if path == "pay":
        assert timeline.index("log returned", lambda what: what == entries[-1].id) < (
            timeline.index("announce", lambda what: True)
        )
    assert intents_trace.levels()[-1] == "NORMAL"  # the mark itself: not synced (see intents.py)
    assert (await rig.reconcile()).ok
