"""A device agent pays the utility's invoices, only after checking them.

For each ``invoice`` entry addressed to the device, the agent recomputes the
bill from its **own replica** of the log (:func:`p2pgrid.billing.bill`) and
decodes the BOLT11 invoice on its own lnd. It pays only if the amount and energy
match its replica, the invoice's amount and payment hash match the entry, the
destination is the utility's node, the invoice is bound to this (site, device,
period) (its description is :func:`p2pgrid.billing.invoice_memo` of them) and
it has not expired (:func:`p2pgrid.agent.payguard.check_invoice`). Otherwise it
writes a ``dispute`` entry naming the invoice entry and the reason, and pays
nothing. An invoice that lnd refuses as expired at the moment of paying is
disputed the same way.

Payments go through the :class:`~p2pgrid.agent.paymaster.Paymaster`: an intent
is recorded before lnd pays, and the ``payment`` entry (amount, routing fee,
preimage) is written in the invoice's period, whatever period the agent's clock
has reached, and announced (the settler's ``announce``) as soon as it is in the
log, before the intent is marked logged. Nothing is paid twice: an invoice whose
payment hash already has a ``payment`` entry is skipped, and lnd refuses a
second payment of one hash (the client returns the first). A payment that fails
is reported (:attr:`Settlement.FAILED` with lnd's reason) and tried again at the next call.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Callable

from p2pgrid.agent.config import SettleConfig
from p2pgrid.agent.intents import Purpose, PurposeKind
from p2pgrid.agent.payguard import check_invoice
from p2pgrid.agent.paymaster import Announce, Paymaster, PayRefused
from p2pgrid.agent.ports import Wallet
from p2pgrid.billing import Tariff, invoice_memo
from p2pgrid.ledger import (
    Dispute,
    Entry,
    Invoice,
    LogStore,
    LogWriter,
    Payment,
    Role,
    bill,
    invoices_of,
    paid_hashes,
)
from p2pgrid.lightning import InvoiceError, InvoiceExpired

log = logging.getLogger(__name__)


class Settlement(enum.Enum):
    PAID = "paid"
    ALREADY_PAID = "already_paid"
    DISPUTED = "disputed"
    ALREADY_DISPUTED = "already_disputed"
    FAILED = "failed"  # lnd could not pay; retried at the next call


@dataclasses.dataclass(frozen=True, slots=True)
class SettleResult:
    invoice: Entry
    outcome: Settlement
    detail: str = ""
    fee_msat: int = 0


class InvoiceSettler:
    """Checks and pays the invoices addressed to one device."""

    def __init__(
        self,
        *,
        device: int,
        site_id: str,
        store: LogStore,
        writer: LogWriter,
        node: Wallet,
        paymaster: Paymaster,
        tariff: Tariff,
        utility_pubkey: str,
        name: str,
        now: Callable[[], float] = time.time,
        config: SettleConfig | None = None,
        announce: Announce | None = None,
    ) -> None:
        self.device = device
        self.site_id = site_id
        self.store = store
        self.writer = writer
        self.node = node
        self.paymaster = paymaster
        self.tariff = tariff
        self.utility_pubkey = utility_pubkey
        self.name = name
        self.config = config if config is not None else SettleConfig()
        self._now = now
        #: Publishes the payment entry as soon as it is in the log (see module doc).
        self._announce = announce

    async def settle(self, period: int, *, timestamp_ms: int) -> list[SettleResult]:
        """Settle the invoices of ``period``; proofs and disputes belong to ``period``.

        It reads only what it checks: the period's invoices and this device's own
        entries of the period (its bill: :func:`p2pgrid.ledger.bill` folds nothing
        else), not the whole period of every device of the site."""
        invoices = await self.store.entries(period=period, kinds=(Invoice.KIND,))
        mine = await self.store.entries(period=period, author=self.writer.author)
        paid = paid_hashes(await self.store.entries(kinds=(Payment.KIND,)))
        disputed = {
            e.body.target_seq
            for e in await self.store.entries(kinds=(Dispute.KIND,), author=self.writer.author)
            if isinstance(e.body, Dispute) and e.body.target_role == Role.UTILITY
        }
        results = []
        for entry in invoices_of(invoices, device=self.device, period=period):
            assert isinstance(entry.body, Invoice)
            if entry.body.payment_hash in paid:
                results.append(SettleResult(entry, Settlement.ALREADY_PAID))
            elif entry.seq in disputed:
                results.append(SettleResult(entry, Settlement.ALREADY_DISPUTED))
            else:
                results.append(await self._settle_one(entry, mine, timestamp_ms))
        return results

    async def _dispute(self, entry: Entry, problem: str, timestamp_ms: int) -> SettleResult:
        dispute = Dispute(
            target_role=Role.UTILITY,
            target_index=entry.author.index,
            target_seq=entry.seq,
            reason=problem[:500],
        )
        await self.writer.append(dispute, period=entry.period, timestamp_ms=timestamp_ms)
        log.warning("[%s] disputed %s: %s", self.name, entry, problem)
        return SettleResult(entry, Settlement.DISPUTED, problem)

    async def _settle_one(self, entry: Entry, mine: list[Entry], timestamp_ms: int) -> SettleResult:
        body = entry.body
        assert isinstance(body, Invoice)
        problem = await self._check(body, mine, entry.period)
        if problem is not None:
            return await self._dispute(entry, problem, timestamp_ms)
        purpose = Purpose(
            PurposeKind.INVOICE, body.amount_msat, device=self.device, reference=str(entry)
        )
        try:
            paid = await self.paymaster.pay(
                body.bolt11,
                body.payment_hash.hex(),
                period=entry.period,
                purpose=purpose,
                fee_limit_msat=self.config.fee_limit_msat,
                announce=self._announce,
            )
        except PayRefused as exc:
            if isinstance(exc.__cause__, InvoiceExpired):
                return await self._dispute(entry, f"the invoice expired: {exc}", timestamp_ms)
            log.warning("[%s] could not pay %s (will retry): %s", self.name, entry, exc)
            return SettleResult(entry, Settlement.FAILED, str(exc))
        log.info(
            "[%s] paid invoice of period %d: %d msat (+%d fee)",
            self.name,
            entry.period,
            body.amount_msat,
            paid.payment.fee_msat,
        )
        return SettleResult(entry, Settlement.PAID, fee_msat=paid.payment.fee_msat)

    async def _check(self, body: Invoice, mine: list[Entry], period: int) -> str | None:
        """Why the invoice must not be paid, or None if it matches our replica
        (``mine``: this device's entries of ``period``, what its bill is folded from)."""
        due = bill(mine, device=self.device, period=period, tariff=self.tariff)
        if (body.amount_msat, body.energy_wh) != (due.amount_msat, due.energy_wh):
            return (
                f"invoice says {body.energy_wh} Wh / {body.amount_msat} msat, "
                f"our log says {due.energy_wh} Wh / {due.amount_msat} msat"
            )
        try:
            decoded = await self.node.decode_invoice(body.bolt11)
        except InvoiceError as exc:
            return f"undecodable invoice: {exc}"
        if decoded.payment_hash != body.payment_hash.hex():
            return "bolt11 payment hash differs from the entry's"
        return check_invoice(
            decoded,
            destination=self.utility_pubkey,
            amount_msat=body.amount_msat,
            description=invoice_memo(
                self.site_id,
                self.device,
                period,
                transit_wh=due.transit_wh,
                grid_fee_msat=due.grid_fee_msat,
            ),
            now=self._now(),
        )
