"""A device agent pays the utility's invoices, only after checking them.

For each ``invoice`` entry addressed to the device, the agent recomputes the
bill from its **own replica** of the log (:func:`p2pgrid.billing.bill`) and
decodes the BOLT11 invoice on its own lnd. It pays only if the amount and energy
match its replica, the invoice's amount and payment hash match the entry, and
the destination is the utility's node. Otherwise it writes a ``dispute`` entry
naming the invoice entry and the reason, and pays nothing.

Nothing is paid twice: an invoice whose payment hash already has a ``payment``
entry is skipped, lnd refuses a second payment of one hash (the client returns
the first), and the ``payment`` entry carries the preimage as proof. A payment
that fails is reported (:attr:`Settlement.FAILED` with lnd's reason) and tried
again at the next call.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging

from p2pgrid.billing import Tariff
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
from p2pgrid.lightning import InvoiceError, LightningNode, PaymentFailed

log = logging.getLogger(__name__)

#: Routing fee the agent accepts on an invoice payment (the utility is a direct peer).
FEE_LIMIT_MSAT = 10_000


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
        store: LogStore,
        writer: LogWriter,
        node: LightningNode,
        tariff: Tariff,
        utility_pubkey: str,
        name: str,
        fee_limit_msat: int = FEE_LIMIT_MSAT,
    ) -> None:
        self.device = device
        self.store = store
        self.writer = writer
        self.node = node
        self.tariff = tariff
        self.utility_pubkey = utility_pubkey
        self.name = name
        self.fee_limit_msat = fee_limit_msat

    async def settle(
        self, period: int, *, now_period: int, timestamp_ms: int
    ) -> list[SettleResult]:
        """Settle the invoices of ``period``; proofs and disputes are logged in
        ``now_period`` (the agent's current period)."""
        everything = await self.store.entries()
        of_period = [e for e in everything if e.period == period]
        paid = paid_hashes(everything)
        disputed = {
            e.body.target_seq
            for e in everything
            if isinstance(e.body, Dispute)
            and e.author == self.writer.author
            and e.body.target_role == Role.UTILITY
        }
        results = []
        for entry in invoices_of(of_period, device=self.device, period=period):
            assert isinstance(entry.body, Invoice)
            if entry.body.payment_hash in paid:
                results.append(SettleResult(entry, Settlement.ALREADY_PAID))
            elif entry.seq in disputed:
                results.append(SettleResult(entry, Settlement.ALREADY_DISPUTED))
            else:
                results.append(await self._settle_one(entry, of_period, now_period, timestamp_ms))
        return results

    async def _settle_one(
        self, entry: Entry, of_period: list[Entry], now_period: int, timestamp_ms: int
    ) -> SettleResult:
        body = entry.body
        assert isinstance(body, Invoice)
        problem = await self._check(body, of_period, entry.period)
        if problem is not None:
            dispute = Dispute(
                target_role=Role.UTILITY,
                target_index=entry.author.index,
                target_seq=entry.seq,
                reason=problem,
            )
            await self.writer.append(dispute, period=now_period, timestamp_ms=timestamp_ms)
            log.warning("[%s] disputed %s: %s", self.name, entry, problem)
            return SettleResult(entry, Settlement.DISPUTED, problem)
        try:
            payment = await self.node.pay_invoice(body.bolt11, fee_limit_msat=self.fee_limit_msat)
        except PaymentFailed as exc:
            log.warning("[%s] could not pay %s (will retry): %s", self.name, entry, exc)
            return SettleResult(entry, Settlement.FAILED, str(exc))
        preimage = bytes.fromhex(payment.preimage)
        if hashlib.sha256(preimage).digest() != body.payment_hash:
            raise PaymentFailed(payment.payment_hash, "lnd returned a preimage that does not match")
        proof = Payment(
            amount_msat=body.amount_msat, payment_hash=body.payment_hash, preimage=preimage
        )
        await self.writer.append(proof, period=now_period, timestamp_ms=timestamp_ms)
        log.info(
            "[%s] paid invoice of period %d: %d msat (+%d fee)",
            self.name,
            entry.period,
            body.amount_msat,
            payment.fee_msat,
        )
        return SettleResult(entry, Settlement.PAID, fee_msat=payment.fee_msat)

    async def _check(self, body: Invoice, of_period: list[Entry], period: int) -> str | None:
        """Why the invoice must not be paid, or None if it matches our replica."""
        due = bill(of_period, device=self.device, period=period, tariff=self.tariff)
        if (body.amount_msat, body.energy_wh) != (due.amount_msat, due.energy_wh):
            return (
                f"invoice says {body.energy_wh} Wh / {body.amount_msat} msat, "
                f"our log says {due.energy_wh} Wh / {due.amount_msat} msat"
            )
        try:
            decoded = await self.node.decode_invoice(body.bolt11)
        except InvoiceError as exc:
            return f"undecodable invoice: {exc}"
        if decoded.amount_msat != body.amount_msat:
            return f"bolt11 asks {decoded.amount_msat} msat, the entry says {body.amount_msat}"
        if decoded.payment_hash != body.payment_hash.hex():
            return "bolt11 payment hash differs from the entry's"
        if decoded.destination != self.utility_pubkey:
            return f"bolt11 pays {decoded.destination[:16]}..., not the utility"
        return None
