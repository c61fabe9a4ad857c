"""The utility's per-period invoicing over Lightning.

At a period's close the utility computes, from its replica of the site's log, each
metered device's bill (:meth:`Invoicer.due`, :func:`p2pgrid.ledger.bill`), creates one
BOLT11 invoice per (device, period) on its own lnd and records it in the log as an
``invoice`` entry. The invoices of a period are created concurrently (at most
``concurrency`` lnd calls at a time), and each entry is handed to the caller's
``deliver`` as soon as it is logged (the utility node publishes it and pushes it to its
device), not once the whole period is invoiced. The invoice's preimage is derived from
the utility's secret, (site, device, period) and a revision (0 first,
:func:`p2pgrid.billing.invoice_preimage`), so a utility that crashed between creating
the lnd invoice and logging it re-creates the same invoice, never a second one; a
(device, period) that already has an invoice entry is skipped.

An invoice on lnd that is not in the log was never delivered (entries reach devices
only once logged). If the bill changed between the crash and the restart (the
device's last reading, or a sale changing its grid fee, came in), that OPEN invoice
is cancelled on lnd and the next revision created; a cancelled (or expired) revision
is passed over. Revisions are tried in order at each issue, so lnd never holds two
OPEN invoices of one (device, period), and what is logged is always the bill of the
log. An unlogged invoice that lnd shows paid is never cancelled nor replaced: logged
as is if it bills what the log bills, else :class:`UnloggedInvoiceError` (fatal).

An lnd that does not answer (killed, paused, restarting) is waited for: each
call goes through a :class:`~p2pgrid.lightning.NodeWatch` (one WARNING when the
node goes away, one INFO when it is back, retries with capped back-off) for at
most ``lnd_away_wait_s`` (the utility file's ``[utility] lnd_away_wait_s``,
:data:`LND_AWAY_WAIT_S` by default); every call is idempotent (a derived preimage
names one invoice; a lookup is a read; lnd cancels a cancelled invoice again as a
no-op).

An ``invoice`` entry may name a period earlier than the utility's latest entry
(a device whose readings came late is invoiced after the next period's budget;
:data:`p2pgrid.ledger.periods.OBLIGATION_KINDS`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
from collections.abc import Awaitable, Callable

from p2pgrid.billing import Bill, Tariff, invoice_memo, invoice_preimage
from p2pgrid.errors import ConfigError, FatalError
from p2pgrid.identity import SiteIdentity
from p2pgrid.ledger import (
    Entry,
    Invoice,
    LogStore,
    LogWriter,
    bill,
    invoices_of,
    metered_devices,
)
from p2pgrid.lightning import Invoice as LnInvoice
from p2pgrid.lightning import InvoiceExists, InvoiceState, LightningNode, NodeWatch

log = logging.getLogger(__name__)

#: How long a period's invoice stays payable (a day of modelled time is generous
#: for agents that settle within seconds; a real deployment may want weeks).
INVOICE_EXPIRY_S = 86_400
#: How long an invoicing or status call waits for an lnd that does not answer, by default.
LND_AWAY_WAIT_S = 300.0
#: Invoices of one period created on lnd at the same time, by default.
INVOICE_CONCURRENCY = 8

#: Revisions of one (device, period)'s invoice tried before the utility stops:
#: each past the first takes a kill between lnd and the log with a bill changed
#: before the restart (or an unlogged invoice expired), so reaching this many
#: means lnd or the utility is wrong.
MAX_INVOICE_REVISIONS = 64

#: Hands a just-logged invoice entry to the site (gossip, and a push to its device).
Deliver = Callable[[Entry], Awaitable[None]]


class UnloggedInvoiceError(FatalError):
    """lnd holds an invoice of a (device, period) with no invoice entry that the
    utility can neither log nor replace: paid (SETTLED or ACCEPTED) for another
    amount or memo than the log's bill, or :data:`MAX_INVOICE_REVISIONS` used up.

    Invoices reach devices only once logged, so money arrived for an invoice that
    nobody was given: the utility's log lost entries (a data directory restored
    from an old copy), a holder of its lnd macaroon paid it, or a bug. The
    utility cannot settle this alone: lnd refuses to cancel a settled invoice
    (and cancelling an accepted one fails the payer back from under its payment),
    a replacement would bill the period twice, and an entry of it would be
    disputed by the device (its amount is not the bill every side folds). So it
    stops (exit 1), naming the invoice (``invoice``), and stops so at every
    start until the operator has found out."""

    def __init__(self, message: str, *, invoice: LnInvoice | None = None) -> None:
        super().__init__(message)
        self.invoice = invoice


class Collection(enum.Enum):
    PAID = "paid"
    OPEN = "open"  # not paid yet: retried by the agent, reported here
    CANCELED = "canceled"


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceStatus:
    device: int
    period: int
    amount_msat: int
    payment_hash: bytes
    collection: Collection


class Invoicer:
    """Issues and follows the invoices of one site."""

    def __init__(
        self,
        *,
        site: SiteIdentity,
        store: LogStore,
        writer: LogWriter,
        node: LightningNode,
        tariff: Tariff,
        secret: bytes,
        name: str = "utility",
        expiry_s: int = INVOICE_EXPIRY_S,
        watch: NodeWatch | None = None,
        concurrency: int = INVOICE_CONCURRENCY,
        lnd_away_wait_s: float = LND_AWAY_WAIT_S,
    ) -> None:
        self.site = site
        #: The availability of ``node`` (shared by the sites of one utility).
        self.watch = watch or NodeWatch(name)
        self.store = store
        self.writer = writer
        self.node = node
        self.tariff = tariff
        self._secret = secret
        self.name = name
        self.expiry_s = expiry_s
        if concurrency < 1:
            raise ConfigError(f"invoice concurrency must be >= 1, got {concurrency}")
        #: Invoices created on lnd at the same time (a semaphore bounds them).
        self.concurrency = concurrency
        self.lnd_away_wait_s = lnd_away_wait_s

    def due(self, entries: list[Entry], *, device: int, period: int) -> Bill:
        """What ``device`` owes for ``period``: the bill folded from the log."""
        return bill(entries, device=device, period=period, tariff=self.tariff)

    async def invoice_period(
        self,
        period: int,
        *,
        timestamp_ms: int,
        deliver: Deliver | None = None,
        skip: frozenset[int] = frozenset(),
    ) -> list[Entry]:
        """Invoice every metered device of ``period`` that has no invoice yet,
        except those in ``skip`` (their readings of the period may not all be in),
        at most :attr:`concurrency` lnd calls at a time; each invoice entry is
        handed to ``deliver`` as soon as it is logged. Returns the invoice entries
        written now, in log order.

        If one invoice fails (lnd away past :attr:`lnd_away_wait_s`), the others
        in flight are cancelled and its error is raised: an invoice created on lnd
        but not logged is found again by the next call, the same one (or, if the
        bill changed meanwhile, cancelled and revised: :meth:`_lnd_invoice`)."""
        entries = await self.store.entries(period=period)
        bills = [
            due
            for device in metered_devices(entries, period)
            if device not in skip
            and not invoices_of(entries, device=device, period=period)
            and (due := self.due(entries, device=device, period=period)).amount_msat > 0
        ]
        lnd_calls = asyncio.Semaphore(self.concurrency)
        written: list[Entry] = []

        async def issue(due: Bill) -> None:
            async with lnd_calls:
                entry = await self._issue(due, timestamp_ms)
            written.append(entry)
            if deliver is not None:
                await deliver(entry)

        try:
            async with asyncio.TaskGroup() as tasks:
                for due in bills:
                    tasks.create_task(issue(due))
        except ExceptionGroup as group:  # the first error as itself, as one at a time did
            raise group.exceptions[0] from None
        return sorted(written, key=lambda e: e.seq)

    async def _issue(self, due: Bill, timestamp_ms: int) -> Entry:
        """Create ``due``'s invoice on lnd (:meth:`_lnd_invoice`: the same invoice
        again after a crash, a revised one if the bill changed) and log it."""
        device, period = due.device, due.period
        memo = invoice_memo(
            self.site.site_id,
            device,
            period,
            transit_wh=due.transit_wh,
            grid_fee_msat=due.grid_fee_msat,
        )
        invoice = await self._lnd_invoice(due, memo)
        body = Invoice(
            device=device,
            amount_msat=due.amount_msat,
            energy_wh=due.energy_wh,
            payment_hash=bytes.fromhex(invoice.payment_hash),
            bolt11=invoice.payment_request,
        )
        entry = await self.writer.append(body, period=period, timestamp_ms=timestamp_ms)
        log.info(
            "[%s] invoiced device %d for period %d: %d Wh, %d msat (grid fee %d msat on %d Wh)"
            " (%s...)",
            self.name,
            device,
            period,
            due.energy_wh,
            due.amount_msat,
            due.grid_fee_msat,
            due.transit_wh,
            invoice.payment_hash[:12],
        )
        return entry

    async def _lnd_invoice(self, due: Bill, memo: str) -> LnInvoice:
        """The lnd invoice to log for ``due`` (described ``memo``), of the first
        revision of its derived preimage that lnd does not hold (created now) or
        holds with this amount and memo and not cancelled (created before a
        crash). The caller logs no invoice of (device, period) yet, and invoices
        reach devices only once logged, so a revision that lnd holds is one that
        no device ever saw:

        - OPEN with another amount or memo (the bill changed between the crash
          and now): cancelled on lnd, then the next revision, so that lnd never
          holds two OPEN invoices of one (device, period);
        - CANCELED (cancelled so, or expired): its hash is burned, the next one;
        - paid (SETTLED or ACCEPTED) with this amount and memo: logged as is (the
          invoice the bill asks for; a WARNING, as nobody could have paid it);
          with another: :class:`UnloggedInvoiceError`, nothing cancelled, created
          or logged (see its docstring)."""
        device, period = due.device, due.period
        what = f"invoice of device {device} period {period}"
        for revision in range(MAX_INVOICE_REVISIONS):
            preimage = invoice_preimage(
                self._secret, self.site.site_id, device, period, revision=revision
            )
            try:
                invoice = await self.watch.call(
                    functools.partial(
                        self.node.add_invoice,
                        due.amount_msat,
                        memo,
                        expiry_s=self.expiry_s,
                        preimage=preimage,
                    ),
                    what=what,
                    deadline_s=self.lnd_away_wait_s,
                )
            except InvoiceExists as exc:  # created before a crash, for another bill
                invoice = exc.existing
            terms = (invoice.value_msat, invoice.memo) == (due.amount_msat, memo)
            if invoice.state is InvoiceState.CANCELED:
                log.info(
                    "[%s] %s: revision %d (%s...) is cancelled on lnd, never logged; "
                    "trying the next",
                    self.name,
                    what,
                    revision,
                    invoice.payment_hash[:12],
                )
                continue
            if invoice.state is not InvoiceState.OPEN:  # paid, though never delivered
                if not terms:
                    raise UnloggedInvoiceError(
                        f"site {self.site.site_id} {what}: lnd's invoice {invoice.payment_hash}"
                        f" (revision {revision}) is {invoice.state.value}, "
                        f"{invoice.amt_paid_msat} msat paid of {invoice.value_msat} / "
                        f"{invoice.memo!r}, but it was never logged and the bill is "
                        f"{due.amount_msat} msat / {memo!r}: not cancelled, replaced nor "
                        "logged; find who paid it (docs/operations.md, restarting the utility)",
                        invoice=invoice,
                    )
                log.warning(
                    "[%s] %s: revision %d (%s...) was %s on lnd before it was logged; "
                    "logging it as is",
                    self.name,
                    what,
                    revision,
                    invoice.payment_hash[:12],
                    invoice.state.value,
                )
                return invoice
            if terms:
                return invoice
            log.warning(
                "[%s] %s: revision %d (%s...) of %d msat / %r, created before a crash "
                "and never logged, is cancelled on lnd: the bill is now %d msat / %r",
                self.name,
                what,
                revision,
                invoice.payment_hash[:12],
                invoice.value_msat,
                invoice.memo,
                due.amount_msat,
                memo,
            )
            # lnd cancels a cancelled invoice again as a no-op: safe to retry.
            await self.watch.call(
                functools.partial(self.node.cancel_invoice, invoice.payment_hash),
                what=f"cancel of an unlogged {what}",
                deadline_s=self.lnd_away_wait_s,
            )
        raise UnloggedInvoiceError(
            f"site {self.site.site_id} {what}: {MAX_INVOICE_REVISIONS} revisions of its "
            "invoice are on lnd, none logged"
        )

    async def status(self, period: int) -> list[InvoiceStatus]:
        """Each invoice of ``period`` as lnd sees it: paid, open or canceled."""
        out = []
        for entry in await self.store.entries(period=period):
            body = entry.body
            if not isinstance(body, Invoice) or entry.author != self.writer.author:
                continue
            payment_hash = body.payment_hash.hex()
            found = await self.watch.call(
                functools.partial(self.node.lookup_invoice, payment_hash),
                what="invoice status",
                deadline_s=self.lnd_away_wait_s,
            )
            state = found.state
            collection = {
                InvoiceState.SETTLED: Collection.PAID,
                InvoiceState.CANCELED: Collection.CANCELED,
            }.get(state, Collection.OPEN)
            out.append(
                InvoiceStatus(body.device, period, body.amount_msat, body.payment_hash, collection)
            )
        return out
