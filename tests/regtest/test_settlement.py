"""Per-period invoices over real lnd: the utility invoices from its replica, the
device agents check each invoice against their own replica before paying.

Replicas here are merged by handing over exported entries (the transport is the
net layer's business, tested elsewhere); the stores are real SQLite files, the
payments real Lightning payments on the session's regtest stack.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from p2pgrid.agent import InvoiceSettler, Settlement
from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.billing import FlatTariff, invoice_memo, invoice_preimage
from p2pgrid.ledger import (
    Author,
    Dispute,
    Invoice,
    LogStore,
    LogWriter,
    MeterReading,
    Payment,
    bill,
)
from p2pgrid.lightning import InvoiceExists, InvoiceState, LndApiError, LndClient, PaymentStatus
from p2pgrid.poll import wait_until
from p2pgrid.reconcile import snapshot
from p2pgrid.regtest import Stack
from p2pgrid.utility import INVOICE_EXPIRY_S, Collection, Invoicer
from tests.ledger.ledger_factory import T0_MS, Site

TARIFF = FlatTariff(250_000)  # 250 sat/kWh
SECRET = b"utility invoice secret for tests"
QUARTER_MS = 900_000


async def merge(into: LogStore, *sources: LogStore) -> None:
    for source in sources:
        await into.ingest_many(await source.export())


async def meter(writer: LogWriter, period: int, wh: list[int]) -> None:
    for i, energy in enumerate(wh):
        reading = MeterReading(T0_MS + i * QUARTER_MS, 900, energy, energy * 250)
        await writer.append(reading, period=period, timestamp_ms=T0_MS + i * QUARTER_MS)


async def test_devices_pay_each_period_invoice_once_after_checking_it(
    tmp_path: Path, stack: Stack, utility: LndClient, dev_a: LndClient, dev_b: LndClient
) -> None:
    site = Site.make(b"settlement test site")
    period = 7
    stores = {n: await site.open(tmp_path / f"{n}.db", n) for n in ("utility", "dev-a", "dev-b")}
    try:
        writers = {
            "utility": LogWriter(stores["utility"], site.utility, Author.utility()),
            "dev-a": LogWriter(stores["dev-a"], site.device(0), Author.device(0)),
            "dev-b": LogWriter(stores["dev-b"], site.device(1), Author.device(1)),
        }
        await meter(writers["dev-a"], period, [400, 350, 1210])  # 1,960 Wh
        await meter(writers["dev-b"], period, [90, 0, 33])  # 123 Wh
        await merge(stores["utility"], stores["dev-a"], stores["dev-b"])
        invoicer = Invoicer(
            site=site.identity,
            store=stores["utility"],
            writer=writers["utility"],
            node=utility,
            tariff=TARIFF,
            secret=SECRET,
        )
        issued = sorted(  # issued concurrently: logged in the order lnd answered
            await invoicer.invoice_period(period, timestamp_ms=T0_MS + 10 * QUARTER_MS),
            key=lambda e: e.body.device,  # type: ignore[union-attr]
        )
        assert [(e.body.device, e.body.amount_msat, e.body.energy_wh) for e in issued] == [  # type: ignore[union-attr]
            (0, 490_000, 1960),
            (1, 30_750, 123),
        ]
        assert await invoicer.invoice_period(period, timestamp_ms=T0_MS) == []  # once per period
        for name in ("dev-a", "dev-b"):
            await merge(stores[name], stores["utility"])

        info = await utility.get_info()
        before = {
            n: (await c.channel_balance()).local_msat
            for n, c in (("utility", utility), ("dev-a", dev_a), ("dev-b", dev_b))
        }
        fees = {}
        for index, (name, node) in enumerate((("dev-a", dev_a), ("dev-b", dev_b))):
            intents = await IntentBook.open(tmp_path / f"{name}.intents.db", name=name)
            settler = InvoiceSettler(
                device=index,
                site_id=site.identity.site_id,
                store=stores[name],
                writer=writers[name],
                node=node,
                paymaster=Paymaster(node=node, writer=writers[name], intents=intents, name=name),
                tariff=TARIFF,
                utility_pubkey=info.pubkey,
                name=name,
            )
            [result] = await settler.settle(period, timestamp_ms=T0_MS)
            assert result.outcome is Settlement.PAID, result.detail
            fees[name] = result.fee_msat
            [again] = await settler.settle(period, timestamp_ms=T0_MS)
            assert again.outcome is Settlement.ALREADY_PAID
            await intents.close()
        await stack.wait_settled()  # the payee's side of the channel updates last
        after = {
            n: (await c.channel_balance()).local_msat
            for n, c in (("utility", utility), ("dev-a", dev_a), ("dev-b", dev_b))
        }
        assert fees == {"dev-a": 0, "dev-b": 0}  # direct channels: no routing fee
        assert before["dev-a"] - after["dev-a"] == 490_000
        assert before["dev-b"] - after["dev-b"] == 30_750
        assert after["utility"] - before["utility"] == 490_000 + 30_750

        await merge(stores["utility"], stores["dev-a"], stores["dev-b"])
        logged = await stores["utility"].entries()
        proofs = [e.body for e in logged if isinstance(e.body, Payment)]
        assert sorted(p.amount_msat for p in proofs) == [30_750, 490_000]
        statuses = await invoicer.status(period)
        assert {s.device: s.collection for s in statuses} == {
            0: Collection.PAID,
            1: Collection.PAID,
        }

        # A utility that crashed after creating an invoice re-creates the same one.
        memo = invoice_memo(site.identity.site_id, 0, period)
        preimage = invoice_preimage(SECRET, site.identity.site_id, 0, period)
        same = await utility.add_invoice(490_000, memo, preimage=preimage)
        assert same.payment_hash == issued[0].body.payment_hash.hex()  # type: ignore[union-attr]
        assert same.state is InvoiceState.SETTLED
        with pytest.raises(InvoiceExists) as other:  # another bill: the invoice, no new one
            await utility.add_invoice(490_001, memo, preimage=preimage)
        assert other.value.existing.payment_hash == same.payment_hash
        assert other.value.existing.state is InvoiceState.SETTLED
    finally:
        for store in stores.values():
            await store.close()


async def test_an_unlogged_invoice_of_an_older_bill_is_cancelled_and_revised_on_real_lnd(
    tmp_path: Path, stack: Stack, utility: LndClient, dev_a: LndClient
) -> None:
    """A utility killed after lnd created device 0's invoice of 400 Wh, before its
    entry; the device's last reading then reached its replica. Started again, it
    cancels that invoice on lnd (never delivered) and logs revision 1 of the full
    bill, which the device checks and pays once."""
    site = Site.make(b"revised invoice test site")
    period = 9
    site_id = site.identity.site_id
    stores = {n: await site.open(tmp_path / f"{n}.db", n) for n in ("utility", "dev-a")}
    intents = await IntentBook.open(tmp_path / "dev-a.intents.db", name="dev-a")
    try:
        utility_writer = LogWriter(stores["utility"], site.utility, Author.utility())
        device_writer = LogWriter(stores["dev-a"], site.device(0), Author.device(0))
        memo = invoice_memo(site_id, 0, period)
        killed = await utility.add_invoice(  # what the killed utility left on lnd
            100_000,
            memo,
            expiry_s=INVOICE_EXPIRY_S,
            preimage=invoice_preimage(SECRET, site_id, 0, period),
        )
        await meter(device_writer, period, [400, 350])  # 750 Wh: 187,500 msat
        await merge(stores["utility"], stores["dev-a"])
        invoicer = Invoicer(
            site=site.identity,
            store=stores["utility"],
            writer=utility_writer,
            node=utility,
            tariff=TARIFF,
            secret=SECRET,
        )
        [entry] = await invoicer.invoice_period(period, timestamp_ms=T0_MS)
        assert isinstance(entry.body, Invoice)
        assert entry.body.amount_msat == 187_500
        revised = await utility.lookup_invoice(entry.body.payment_hash.hex())
        assert (revised.value_msat, revised.memo, revised.state) == (
            187_500,
            memo,
            InvoiceState.OPEN,
        )
        assert revised.preimage == invoice_preimage(SECRET, site_id, 0, period, revision=1).hex()
        assert (await utility.lookup_invoice(killed.payment_hash)).state is InvoiceState.CANCELED

        await merge(stores["dev-a"], stores["utility"])
        before = (await dev_a.channel_balance()).local_msat
        settler = InvoiceSettler(
            device=0,
            site_id=site_id,
            store=stores["dev-a"],
            writer=device_writer,
            node=dev_a,
            paymaster=Paymaster(node=dev_a, writer=device_writer, intents=intents, name="dev-a"),
            tariff=TARIFF,
            utility_pubkey=(await utility.get_info()).pubkey,
            name="dev-a",
        )
        [result] = await settler.settle(period, timestamp_ms=T0_MS)
        assert result.outcome is Settlement.PAID, result.detail
        [again] = await settler.settle(period, timestamp_ms=T0_MS)
        assert again.outcome is Settlement.ALREADY_PAID
        await stack.wait_settled()
        assert before - (await dev_a.channel_balance()).local_msat == 187_500 + result.fee_msat
        assert (await utility.lookup_invoice(revised.payment_hash)).state is InvoiceState.SETTLED
    finally:
        await intents.close()
        for store in stores.values():
            await store.close()


async def test_an_invoice_that_disagrees_with_the_replica_is_disputed_not_paid(
    tmp_path: Path, utility: LndClient, dev_a: LndClient
) -> None:
    site = Site.make(b"dispute test site")
    period = 3
    device_store = await site.open(tmp_path / "dev-a.db", "dev-a")
    utility_store = await site.open(tmp_path / "utility.db", "utility")
    try:
        device_writer = LogWriter(device_store, site.device(0), Author.device(0))
        utility_writer = LogWriter(utility_store, site.utility, Author.utility())
        await meter(device_writer, period, [1000])
        await merge(utility_store, device_store)
        entries = await utility_store.entries()
        due = bill(entries, device=0, period=period, tariff=TARIFF)
        assert due.amount_msat == 250_000
        # The utility bills 10% more than the log says.
        inflated = await utility.add_invoice(275_000, "inflated")
        await utility_writer.append(
            Invoice(
                0, 275_000, 1000, bytes.fromhex(inflated.payment_hash), inflated.payment_request
            ),
            period=period,
            timestamp_ms=T0_MS,
        )
        await merge(device_store, utility_store)
        before = (await dev_a.channel_balance()).local_msat
        intents = await IntentBook.open(tmp_path / "dev-a.intents.db", name="dev-a")
        settler = InvoiceSettler(
            device=0,
            site_id=site.identity.site_id,
            store=device_store,
            writer=device_writer,
            node=dev_a,
            paymaster=Paymaster(node=dev_a, writer=device_writer, intents=intents, name="dev-a"),
            tariff=TARIFF,
            utility_pubkey=(await utility.get_info()).pubkey,
            name="dev-a",
        )
        [result] = await settler.settle(period, timestamp_ms=T0_MS)
        assert result.outcome is Settlement.DISPUTED
        assert "our log says 1000 Wh / 250000 msat" in result.detail
        [again] = await settler.settle(period, timestamp_ms=T0_MS)
        await intents.close()
        assert again.outcome is Settlement.ALREADY_DISPUTED
        assert (await dev_a.channel_balance()).local_msat == before
        assert (await utility.lookup_invoice(inflated.payment_hash)).state is InvoiceState.OPEN
        disputes = [e.body for e in await device_store.entries() if isinstance(e.body, Dispute)]
        assert len(disputes) == 1
        assert disputes[0].target_seq == 1
        await utility.cancel_invoice(inflated.payment_hash)
    finally:
        await device_store.close()
        await utility_store.close()


async def _of_another_device(site: Site, utility: LndClient, dev_b: LndClient) -> str:
    memo = invoice_memo(site.identity.site_id, 1, WRONG_PERIOD)
    return (await utility.add_invoice(250_000, memo)).payment_request


async def _of_another_period(site: Site, utility: LndClient, dev_b: LndClient) -> str:
    memo = invoice_memo(site.identity.site_id, 0, WRONG_PERIOD + 1)
    return (await utility.add_invoice(250_000, memo)).payment_request


async def _to_another_node(site: Site, utility: LndClient, dev_b: LndClient) -> str:
    memo = invoice_memo(site.identity.site_id, 0, WRONG_PERIOD)
    return (await dev_b.add_invoice(250_000, memo)).payment_request


async def _expired_in_lnd(site: Site, utility: LndClient, dev_b: LndClient) -> str:
    memo = invoice_memo(site.identity.site_id, 0, WRONG_PERIOD)
    invoice = await utility.add_invoice(250_000, memo, expiry_s=1)

    async def cancelled_by_lnd() -> bool:  # lnd cancels an invoice once it expired
        found = await utility.lookup_invoice(invoice.payment_hash)
        return found.state is InvoiceState.CANCELED

    await wait_until(cancelled_by_lnd, timeout_s=30, what="lnd to expire the invoice")
    return invoice.payment_request


WRONG_PERIOD = 4


@pytest.mark.parametrize(
    ("wrong", "why"),
    [
        (_of_another_device, "device 1"),
        (_of_another_period, "period 5"),
        (_to_another_node, "pays node"),
        (_expired_in_lnd, "expired"),
    ],
)
async def test_a_wrong_invoice_on_real_lnd_is_disputed_and_nothing_paid(
    tmp_path: Path,
    utility: LndClient,
    dev_a: LndClient,
    dev_b: LndClient,
    wrong: Callable[[Site, LndClient, LndClient], Awaitable[str]],
    why: str,
) -> None:
    site = Site.make(b"wrong invoice test site")
    store = await site.open(tmp_path / "dev-a.db", "dev-a")
    intents = await IntentBook.open(tmp_path / "dev-a.intents.db", name="dev-a")
    try:
        writer = LogWriter(store, site.device(0), Author.device(0))
        await meter(writer, WRONG_PERIOD, [1000])  # owes 250,000 msat
        bolt11 = await wrong(site, utility, dev_b)
        decoded = await dev_a.decode_invoice(bolt11)
        invoice = await LogWriter(store, site.utility, Author.utility()).append(
            Invoice(0, 250_000, 1000, bytes.fromhex(decoded.payment_hash), bolt11),
            period=WRONG_PERIOD,
            timestamp_ms=T0_MS,
        )
        before = await snapshot("dev-a", dev_a)
        settler = InvoiceSettler(
            device=0,
            site_id=site.identity.site_id,
            store=store,
            writer=writer,
            node=dev_a,
            paymaster=Paymaster(node=dev_a, writer=writer, intents=intents, name="dev-a"),
            tariff=TARIFF,
            utility_pubkey=(await utility.get_info()).pubkey,
            name="dev-a",
            now=lambda: time.time() - 3600,  # our own expiry check passes: lnd's must refuse
        )
        [result] = await settler.settle(WRONG_PERIOD, timestamp_ms=T0_MS)
        assert result.outcome is Settlement.DISPUTED, result
        assert why in result.detail
        after = await snapshot("dev-a", dev_a)
        assert after.local_msat == before.local_msat
        assert decoded.payment_hash not in {
            p.payment_hash for p in after.payments if p.status is PaymentStatus.SUCCEEDED
        }
        [dispute] = [e.body for e in await store.entries() if isinstance(e.body, Dispute)]
        assert dispute.target_seq == invoice.seq
        if decoded.destination != (await dev_b.get_info()).pubkey:
            with contextlib.suppress(LndApiError):  # leave no open invoice behind
                await utility.cancel_invoice(decoded.payment_hash)
        else:
            await dev_b.cancel_invoice(decoded.payment_hash)
    finally:
        await intents.close()
        await store.close()
