"""The one way an agent pays: intent first, then lnd, then the log entry.

:meth:`Paymaster.pay` records the payment's intent (:mod:`p2pgrid.agent.intents`)
and commits it, pays the invoice over Lightning, then writes the log entries the
intent names in the period of the obligation (whatever period the clock has
reached meanwhile), hands them to the caller's ``announce`` (if any: the entries
are in the log then, so their replicas need not wait for the next write), and
marks the intent logged. A payment that lnd reports
failed (or an invoice it refuses to pay, e.g. expired) marks it failed and
raises :class:`PayRefused` with lnd's reason; nothing was sent. Any other error
(lnd unreachable mid-payment) leaves the intent open: :meth:`Paymaster.recover`
resolves it by payment hash against lnd, as it does every open intent when the
agent starts. The first :meth:`Paymaster.pay` runs :meth:`~Paymaster.recover`
itself if nobody did, so nothing is paid before every older intent is resolved.

The checks of *what* to pay are the caller's (:mod:`p2pgrid.agent.payguard`);
this module guarantees that no sat moves without its log entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

from p2pgrid.agent.intents import (
    IntentBook,
    IntentError,
    IntentState,
    PaymentIntent,
    Purpose,
    PurposeKind,
)
from p2pgrid.agent.ports import Wallet
from p2pgrid.errors import P2PGridError, ReportableError
from p2pgrid.ledger import (
    Body,
    Entry,
    LogWriter,
    Payment,
    Sale,
    SaleSide,
    Share,
    SiteSale,
    SiteShare,
)
from p2pgrid.ledger.proof import parse_proof, proof_memo
from p2pgrid.lightning import (
    InvoiceError,
    LightningError,
    LndApiError,
    PaymentFailed,
    PaymentStatus,
)
from p2pgrid.lightning import Payment as LnPayment

log = logging.getLogger(__name__)


#: Publishes what the agent logged since it last did (``DeviceAgent.announce_new``).
Announce = Callable[[], Awaitable[None]]


class PayRefused(ReportableError):
    """lnd refused or failed the payment; nothing was sent (the reason says why)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Paid:
    payment: LnPayment
    entries: tuple[Entry, ...]

    @property
    def preimage(self) -> bytes:
        return bytes.fromhex(self.payment.preimage)


def bodies_for(purpose: Purpose, payment: LnPayment) -> list[Body]:
    """The log entries that record a succeeded payment of ``purpose``."""
    payment_hash = bytes.fromhex(payment.payment_hash)
    preimage = bytes.fromhex(payment.preimage)
    if hashlib.sha256(preimage).digest() != payment_hash:
        raise PaymentFailed(payment.payment_hash, "lnd returned a preimage that does not match")
    proof = Payment(purpose.amount_msat, payment_hash, preimage, payment.fee_msat)
    memo = proof_memo(payment_hash, preimage, payment.fee_msat)
    match purpose.kind:
        case PurposeKind.INVOICE | PurposeKind.ALLOWANCE:
            return [proof]
        case PurposeKind.SALE:
            return [Sale(purpose.device, purpose.energy_wh, purpose.amount_msat), proof]
        case PurposeKind.SHARE:
            return [Share(purpose.device, purpose.amount_msat, memo)]
        case PurposeKind.SITE_SHARE:
            return [
                SiteShare(bytes.fromhex(purpose.to_site), purpose.device, purpose.amount_msat, memo)
            ]
        case PurposeKind.SITE_SALE:
            bought = SiteSale(
                SaleSide.BOUGHT,
                bytes.fromhex(purpose.to_site),
                purpose.device,
                purpose.interval,
                purpose.energy_wh,
                purpose.amount_msat,
                payment_hash,
                bytes.fromhex(purpose.evidence),
            )
            return [bought, proof]


class Paymaster:
    """Pays for one agent, with an intent before and a log entry after each payment."""

    def __init__(
        self,
        *,
        node: Wallet,
        writer: LogWriter,
        intents: IntentBook,
        name: str,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.node = node
        self.writer = writer
        self.intents = intents
        self.name = name
        self._wall_ms = wall_ms
        self._recovered = False
        self._recovering = asyncio.Lock()
        #: Hashes a :meth:`pay` of this process is paying now: :meth:`recover` (which
        #: may run again while lnd was away, concurrently with payments) leaves
        #: them to that call, or both would log one payment.
        self._paying: set[str] = set()

    async def pay(
        self,
        bolt11: str,
        payment_hash: str,
        *,
        period: int,
        purpose: Purpose,
        fee_limit_msat: int,
        announce: Announce | None = None,
    ) -> Paid:
        """Pay ``bolt11`` (already checked by the caller) for ``purpose`` in ``period``.
        ``announce``: called once the payment's entries are in the log, before the
        intent is marked logged (publishing them need not wait for that write)."""
        if not self._recovered:
            await self.recover()
        self._paying.add(payment_hash)
        try:
            return await self._pay(bolt11, payment_hash, period=period, purpose=purpose,
                                   fee_limit_msat=fee_limit_msat, announce=announce)  # fmt: skip
        finally:
            self._paying.discard(payment_hash)

    async def _pay(
        self,
        bolt11: str,
        payment_hash: str,
        *,
        period: int,
        purpose: Purpose,
        fee_limit_msat: int,
        announce: Announce | None,
    ) -> Paid:
        try:
            await self.intents.record(PaymentIntent(payment_hash, bolt11, period, purpose))
        except IntentError as exc:  # this hash is paid (or being paid) already: never twice
            raise PayRefused(str(exc)) from exc
        try:
            payment = await self.node.pay_invoice(bolt11, fee_limit_msat=fee_limit_msat)
        except (PaymentFailed, InvoiceError) as exc:  # lnd sent nothing
            await self.intents.resolve(payment_hash, IntentState.FAILED, str(exc))
            raise PayRefused(f"{purpose.kind.value} payment {payment_hash[:16]}: {exc}") from exc
        except LightningError as exc:  # did it leave? ask lnd (unreachable: stays open)
            log.warning("[%s] payment %s...: %s; asking lnd", self.name, payment_hash[:16], exc)
            outcome = await self._lnd_outcome(payment_hash)
            if outcome is None or outcome.status is not PaymentStatus.SUCCEEDED:
                why = outcome.failure_reason if outcome else str(exc)
                await self.intents.resolve(payment_hash, IntentState.FAILED, why)
                raise PayRefused(
                    f"{purpose.kind.value} payment {payment_hash[:16]}: {why}"
                ) from exc
            payment = outcome
        return await self._logged(await self._intent(payment_hash), payment, announce)

    async def _intent(self, payment_hash: str) -> PaymentIntent:
        intent = await self.intents.get(payment_hash)
        assert intent is not None  # recorded above
        return intent

    async def _logged(
        self, intent: PaymentIntent, payment: LnPayment, announce: Announce | None = None
    ) -> Paid:
        entries = []
        if not await self._in_log(payment.payment_hash):
            for body in bodies_for(intent.purpose, payment):
                entries.append(
                    await self.writer.append(
                        body, period=intent.period, timestamp_ms=self._wall_ms()
                    )
                )
        if announce is not None and entries:
            try:  # the entries are in the log: whatever fails here, anti-entropy repairs
                await announce()
            except P2PGridError as exc:
                log.warning("[%s] announcing payment %s...: %s", self.name,
                            intent.payment_hash[:16], exc)  # fmt: skip
        await self.intents.resolve(intent.payment_hash, IntentState.LOGGED)
        log.info(
            "[%s] paid %s %d msat (+%d fee) for period %d, logged",
            self.name,
            intent.purpose.kind.value,
            payment.value_msat,
            payment.fee_msat,
            intent.period,
        )
        return Paid(payment, tuple(entries))

    async def _in_log(self, payment_hash: str) -> bool:
        """Whether this author's chain already records a payment of this hash."""
        wanted = bytes.fromhex(payment_hash)
        kinds = (Payment.KIND, Share.KIND, SiteShare.KIND)
        for entry in await self.writer.store.entries(kinds=kinds, author=self.writer.author):
            body = entry.body
            if isinstance(body, Payment) and body.payment_hash == wanted:
                return True
            if isinstance(body, Share | SiteShare):
                proof = parse_proof(body.memo)
                if proof is not None and proof.payment_hash == wanted:
                    return True
        return False

    async def recover(self) -> list[PaymentIntent]:
        """Resolve every open intent against lnd by payment hash; returns them as
        resolved. Run before the agent pays anything (:meth:`pay` makes sure)."""
        async with self._recovering:
            done = await self._resolve_open()
            self._recovered = True
        return done

    async def _resolve_open(self) -> list[PaymentIntent]:
        done = []
        for listed in await self.intents.open_intents():
            if not await self._still_open(listed.payment_hash):
                continue
            payment = await self._lnd_outcome(listed.payment_hash)
            if not await self._still_open(listed.payment_hash):
                continue
            intent = listed
            if payment is None and await self._in_log(intent.payment_hash):
                # An internal transfer of a light device (no lnd payment of it,
                # docs/protocol.md "Light devices"), logged before a crash
                # that came before this mark: the chain is the record.
                await self.intents.resolve(intent.payment_hash, IntentState.LOGGED, "in the log")
            elif payment is None:
                await self.intents.resolve(
                    intent.payment_hash, IntentState.FAILED, "lnd never sent it"
                )
            elif payment.status is PaymentStatus.SUCCEEDED:
                await self._logged(intent, payment)
            else:
                await self.intents.resolve(
                    intent.payment_hash, IntentState.FAILED, payment.failure_reason
                )
            resolved = await self.intents.get(intent.payment_hash)
            assert resolved is not None
            done.append(resolved)
        return done

    async def _still_open(self, payment_hash: str) -> bool:
        """Whether recovery should resolve this intent now: it is open and no
        :meth:`pay` of this process is paying it. The list of open intents is
        read once; a payment in flight then may have resolved its intent since
        (failed or logged), and resolving it a second time is forbidden."""
        if payment_hash in self._paying:
            return False  # a payment of ours in flight resolves it
        current = await self.intents.get(payment_hash)
        return current is not None and current.state is IntentState.OPEN

    async def _lnd_outcome(self, payment_hash: str) -> LnPayment | None:
        """lnd's final word on a payment hash, or None if it never sent it."""
        found = [p for p in await self.node.list_payments() if p.payment_hash == payment_hash]
        if any(p.status is PaymentStatus.SUCCEEDED for p in found):
            return next(p for p in found if p.status is PaymentStatus.SUCCEEDED)
        if not found:
            return None
        if all(p.status is PaymentStatus.FAILED for p in found):
            return found[-1]
        try:  # in flight: wait for its outcome
            return await self.node.track_payment(payment_hash)
        except PaymentFailed as exc:
            return found[-1].model_copy(
                update={"status": PaymentStatus.FAILED, "failure_reason": exc.reason}
            )
        except LndApiError:
            return None
