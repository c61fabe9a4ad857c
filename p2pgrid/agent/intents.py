"""Intent before money: every payment is recorded durably before it is sent.

An agent records a :class:`PaymentIntent` in its own SQLite file (next to its
log, ``<name>.intents.db``) and commits it *before* it asks lnd to pay: the
payment hash, the invoice, the period of the obligation and what the payment is
for (the log entries to write once it succeeded, as a typed :class:`Purpose`).
The intent moves ``open -> logged`` once those entries are in the log, or
``open -> failed`` once lnd says the payment failed or was never sent. On
start, every open intent is resolved against lnd by its payment hash (lnd's
payments list, then TrackPayment for one in flight) before anything else is
paid, so a crash between paying and logging leaves no payment without its entry.

The payee's side, for the sales whose entry the payee writes (leftover
allowance, docs/market.md 2.9): an agent that hands a peer an invoice records
a :class:`Receivable` in the same file and commits it *before* the invoice
leaves it: the payment hash, its preimage, the period, the peer and the offer
it answered. A receivable moves ``open -> sold`` once its sale is in the log,
``open -> cancelled`` once its invoice is cancelled on lnd. A restarted payee
loads its open receivables, so an invoice paid while it was down (or just
before it died) is still looked up and logged, once. Ended receivables (sold,
cancelled) are kept one period for the record, then deleted: at the close of
period ``p`` the agent deletes the ended ones of the periods before ``p``
(:meth:`IntentBook.prune_receivables`); open ones stay whatever their period.
Resolved payment intents (logged, failed) are kept one period longer: at the
close of period ``p`` the agent deletes those of the periods before ``p - 1``
(:meth:`IntentBook.prune_intents`; the invoice of ``p - 1``, paid during ``p``,
stays a period); an open intent stays whatever its period. A payment whose
intent was deleted is still never paid twice: its entry is in the log, which
the payer checks first, and lnd refuses a second payment of a paid hash.

States and transitions (one log line each): ``open -> logged``,
``open -> failed``, ``failed -> open`` (the same invoice tried again); nothing
leaves ``logged``.

Durability. The file is SQLite in WAL mode. A commit survives a crash of the
process whatever ``synchronous`` says (it is in the OS's cache); what
``synchronous`` decides is what a power cut or an OS crash keeps. Only the
commits that open an intent (a new one, or ``failed -> open``) and that expect
a receivable must be on disk before they return, because money moves right
after them: they are made with ``synchronous=FULL`` (the WAL is synced at each
of them). The commits that resolve an intent (``open -> logged``,
``open -> failed``) and the prunings are made with ``synchronous=NORMAL`` (no
sync; the next FULL commit, or a checkpoint, syncs them with it); a
receivable's end (``sold``, ``cancelled``: once per offer) stays FULL. That is
safe:

- A power cut keeps a *prefix* of the file's commits, never a later one
  without an earlier one (the WAL is appended in order and its frames are
  chained by checksums; a sync writes every frame before it), and that prefix
  holds every FULL commit, so every intent opened before a payment.
- A resolution lost that way leaves its intent ``open``, exactly as a crash
  between paying and marking it does: the restarted agent resolves it by hash
  against lnd before it pays anything (:meth:`Paymaster.recover`), and logs
  the payment's entries only if its author's chain does not hold them yet
  (``Paymaster._in_log``), so once; an intent lnd never sent or failed is
  failed again. Only :meth:`IntentBook.record` reads ``logged`` or
  ``failed`` (to refuse or reopen), and nothing is recorded before that
  recovery; a second payment of a hash is refused by the payer's log check
  and by lnd too.
- A pruning lost that way leaves rows that are no longer open; the next close
  deletes them.

The log's own commit comes first. An intent is marked ``logged`` only after
the :meth:`~p2pgrid.ledger.writer.LogWriter.append` of each of its entries
returned (:meth:`Paymaster._logged`), and the log (another file) commits an
entry its writer signs with ``synchronous=FULL`` (:mod:`p2pgrid.ledger.store`,
"Durability"): the payment's entries are on disk before the mark is written,
let alone synced. So the mark never outlives, in a power cut, the entries it
stands for; an intent marked ``logged`` from an entry found in the log
(``in the log``, on recovery) counts on that entry the same way (this device's
entries reach its log synced, or come back from the peers that hold them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
from pathlib import Path
from typing import Literal

import aiosqlite

from p2pgrid.commit_sync import CommitSync
from p2pgrid.errors import FatalError
from p2pgrid.finish import to_the_end

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS payment_intents (
    payment_hash TEXT PRIMARY KEY,
    bolt11 TEXT NOT NULL,
    period INTEGER NOT NULL,
    purpose TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
)
"""


_RECEIVABLES = """
CREATE TABLE IF NOT EXISTS receivables (
    payment_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    period INTEGER NOT NULL,
    payer TEXT NOT NULL,
    offer TEXT NOT NULL,
    preimage TEXT NOT NULL,
    state TEXT NOT NULL
)
"""


class IntentState(enum.Enum):
    OPEN = "open"
    LOGGED = "logged"
    FAILED = "failed"


_ALLOWED = {
    IntentState.OPEN: {IntentState.LOGGED, IntentState.FAILED},
    IntentState.LOGGED: set(),
    IntentState.FAILED: {IntentState.OPEN},  # a retry of the same invoice
}


class IntentError(FatalError):
    """An intent's state or record is not what it must be (a bug or a corrupt file)."""


class PurposeKind(enum.Enum):
    INVOICE = "invoice"  # the utility's invoice of (device, period): a ``payment`` entry
    SALE = "sale"  # a neighbour's energy: ``sale`` + ``payment`` entries
    SHARE = "share"  # a share of budget: a ``share`` entry (proof in its memo)
    SITE_SHARE = "site_share"  # to the owner's other site: a ``site_share`` entry
    SITE_SALE = "site_sale"  # a producer's energy of another site: ``site_sale`` + ``payment``
    ALLOWANCE = "allowance"  # leftover allowance bought: a ``payment`` entry (the seller
    # logs the ``allowance_sale``)


@dataclasses.dataclass(frozen=True, slots=True)
class Purpose:
    """What a payment is for: enough to write its log entries after it succeeded."""

    kind: PurposeKind
    amount_msat: int
    device: int = 0  # the payee device (share, sale or allowance seller); the payer for invoices
    energy_wh: int = 0  # sale
    to_site: str = ""  # site_share, site_sale: hex site hash of the other site
    interval: int = 0  # site_sale: the round's interval
    evidence: str = ""  # site_sale: hex of the seller's signed ``order`` entry
    reference: str = ""  # the obligation, for people: invoice entry, request or bid id

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "kind": self.kind.value})

    @classmethod
    def from_json(cls, text: str) -> Purpose:
        try:
            raw = json.loads(text)
            return cls(**{**raw, "kind": PurposeKind(raw["kind"])})
        except (ValueError, KeyError, TypeError) as exc:
            raise IntentError(f"unreadable intent purpose {text[:80]!r}: {exc}") from exc


class ReceivableState(enum.Enum):
    OPEN = "open"
    SOLD = "sold"  # its sale is in the log
    CANCELLED = "cancelled"  # its invoice is cancelled on lnd: it can no longer be paid


@dataclasses.dataclass(frozen=True, slots=True)
class Receivable:
    """An invoice this agent handed a peer and whose sale it logs once paid."""

    payment_hash: str  # hex
    kind: PurposeKind  # what is sold (``allowance``)
    period: int  # the sale is logged in it
    payer: tuple[str, int]  # the buying device: (site id, device index)
    offer: bytes  # the encoded offer message the invoice answered
    preimage: bytes
    state: ReceivableState = ReceivableState.OPEN


@dataclasses.dataclass(frozen=True, slots=True)
class PaymentIntent:
    payment_hash: str  # hex
    bolt11: str
    period: int  # the period of the obligation: its entries are logged in it
    purpose: Purpose
    state: IntentState = IntentState.OPEN
    detail: str = ""


class IntentBook:
    """The agent's payment intents, in their own SQLite file."""

    def __init__(self, db: aiosqlite.Connection, name: str) -> None:
        self._db = db
        self.name = name
        self._sync = CommitSync(db, full=True)  # set by open
        self._writing = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, name: str) -> IntentBook:
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")  # an intent survives a power cut
        await db.execute(_SCHEMA)
        await db.execute(_RECEIVABLES)
        await db.commit()
        return cls(db, name)

    async def _write(
        self, sql: str, params: tuple[object, ...], *, durable: bool
    ) -> aiosqlite.Cursor:
        """Run one write statement and commit it, as its own transaction;
        ``durable``: on disk before this returns (``synchronous=FULL``), else
        only ordered before the next durable commit (``NORMAL``; see the
        module's "Durability")."""
        # Once started, a write runs to its commit even if the caller is
        # cancelled: a transaction left open would be committed by the next
        # writer's commit (a resolution synced or not as *that* one says) and
        # SQLite refuses to change ``synchronous`` inside it.
        return await to_the_end(self._write_now(sql, params, durable))

    async def _write_now(
        self, sql: str, params: tuple[object, ...], durable: bool
    ) -> aiosqlite.Cursor:
        # One write at a time: the agent's desks and settler share this
        # connection, and a pragma or commit of one must not land inside
        # another's transaction.
        async with self._writing:
            await self._sync.before_transaction(full=durable)  # refused inside a transaction
            try:
                cursor = await self._db.execute(sql, params)
            except aiosqlite.Error:
                await self._db.rollback()
                raise
            await self._db.commit()
            return cursor

    async def close(self) -> None:
        await self._db.close()

    async def record(self, intent: PaymentIntent) -> None:
        """Store ``intent`` (open) and commit. A failed intent of the same hash is
        reopened (a retry); an open or logged one is an :class:`IntentError`."""
        existing = await self.get(intent.payment_hash)
        if existing is not None:
            if existing.state is not IntentState.FAILED or existing.purpose != intent.purpose:
                raise IntentError(
                    f"payment {intent.payment_hash[:16]} has an intent already "
                    f"({existing.state.value}, {existing.purpose.kind.value})"
                )
            await self.resolve(intent.payment_hash, IntentState.OPEN, "retry")
            return
        await self._write(
            "INSERT INTO payment_intents VALUES (?, ?, ?, ?, ?, ?)",
            (
                intent.payment_hash,
                intent.bolt11,
                intent.period,
                intent.purpose.to_json(),
                IntentState.OPEN.value,
                "",
            ),
            durable=True,  # before any sat moves
        )
        log.info(
            "[%s] intent %s...: %s %d msat (period %d) -> open",
            self.name,
            intent.payment_hash[:16],
            intent.purpose.kind.value,
            intent.purpose.amount_msat,
            intent.period,
        )

    async def get(self, payment_hash: str) -> PaymentIntent | None:
        rows = await self._select("WHERE payment_hash = ?", (payment_hash,))
        return rows[0] if rows else None

    async def open_intents(self) -> list[PaymentIntent]:
        return await self._select("WHERE state = ?", (IntentState.OPEN.value,))

    async def all(self) -> list[PaymentIntent]:
        return await self._select("", ())

    async def _select(self, where: str, params: tuple[object, ...]) -> list[PaymentIntent]:
        query = "SELECT payment_hash, bolt11, period, purpose, state, detail FROM payment_intents "
        async with self._db.execute(query + where + " ORDER BY rowid", params) as cursor:
            rows = await cursor.fetchall()
        return [
            PaymentIntent(h, b, p, Purpose.from_json(j), IntentState(s), d)
            for h, b, p, j, s, d in rows
        ]

    async def resolve(self, payment_hash: str, to: IntentState, detail: str = "") -> None:
        """Move the intent to ``to`` and commit: durably for ``failed -> open``
        (a retry pays next), without a sync for ``logged`` and ``failed`` (lost in
        a power cut, the intent is open again and resolved against lnd)."""
        intent = await self.get(payment_hash)
        if intent is None:
            raise IntentError(f"no intent for payment {payment_hash[:16]}")
        if to not in _ALLOWED[intent.state]:
            raise IntentError(
                f"intent {payment_hash[:16]}: {intent.state.value} -> {to.value} forbidden"
            )
        await self._write(
            "UPDATE payment_intents SET state = ?, detail = ? WHERE payment_hash = ?",
            (to.value, detail, payment_hash),
            durable=to is IntentState.OPEN,
        )
        log.info(
            "[%s] intent %s...: %s -> %s %s",
            self.name,
            payment_hash[:16],
            intent.state.value,
            to.value,
            detail,
        )

    # -- receivables (the payee's side) ----------------------------------------------

    async def expect(self, receivable: Receivable) -> None:
        """Store ``receivable`` (open) and commit, before its invoice leaves the agent."""
        site_id, device = receivable.payer
        try:
            await self._write(
                "INSERT INTO receivables VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    receivable.payment_hash,
                    receivable.kind.value,
                    receivable.period,
                    f"{site_id}/{device}",
                    receivable.offer.hex(),
                    receivable.preimage.hex(),
                    ReceivableState.OPEN.value,
                ),
                durable=True,  # before the invoice leaves
            )
        except aiosqlite.IntegrityError as exc:
            what = f"invoice {receivable.payment_hash[:16]} is expected already"
            raise IntentError(what) from exc
        log.info(
            "[%s] receivable %s...: %s (period %d) -> open",
            self.name,
            receivable.payment_hash[:16],
            receivable.kind.value,
            receivable.period,
        )

    async def receivables(self, kind: PurposeKind) -> list[Receivable]:
        """The open receivables of ``kind``, oldest first."""
        query = (
            "SELECT payment_hash, period, payer, offer, preimage FROM receivables "
            "WHERE kind = ? AND state = ? ORDER BY rowid"
        )
        async with self._db.execute(query, (kind.value, ReceivableState.OPEN.value)) as cursor:
            rows = await cursor.fetchall()
        found = []
        for payment_hash, period, payer, offer, preimage in rows:
            site_id, _, device = str(payer).rpartition("/")
            try:
                found.append(
                    Receivable(
                        payment_hash,
                        kind,
                        period,
                        (site_id, int(device)),
                        bytes.fromhex(offer),
                        bytes.fromhex(preimage),
                    )
                )
            except ValueError as exc:
                raise IntentError(f"unreadable receivable {payment_hash[:16]}: {exc}") from exc
        return found

    async def end_receivable(self, payment_hash: str, to: ReceivableState) -> None:
        """``open -> sold`` or ``open -> cancelled``; anything else is an :class:`IntentError`."""
        if to is ReceivableState.OPEN:
            raise IntentError(f"receivable {payment_hash[:16]}: nothing goes back to open")
        cursor = await self._write(
            "UPDATE receivables SET state = ? WHERE payment_hash = ? AND state = ?",
            (to.value, payment_hash, ReceivableState.OPEN.value),
            durable=True,  # once per offer, not per payment: left as it was
        )
        if cursor.rowcount != 1:
            raise IntentError(f"receivable {payment_hash[:16]} is not open")
        log.info("[%s] receivable %s...: open -> %s", self.name, payment_hash[:16], to.value)

    async def prune_receivables(self, before: int) -> int:
        """Delete the ended (sold, cancelled) receivables of the periods before
        ``before`` and commit; open ones stay, whatever their period. The number
        deleted."""
        return await self._prune("receivables", ReceivableState.OPEN.value, before)

    async def prune_intents(self, before: int) -> int:
        """Delete the resolved (logged, failed) payment intents of the periods
        before ``before`` and commit; open ones stay, whatever their period. The
        number deleted."""
        return await self._prune("payment_intents", IntentState.OPEN.value, before)

    async def _prune(
        self, table: Literal["receivables", "payment_intents"], open_state: str, before: int
    ) -> int:
        """Delete the rows of ``table`` of the periods before ``before`` whose
        state is not ``open_state``, and commit."""
        cursor = await self._write(
            f"DELETE FROM {table} WHERE period < ? AND state != ?",
            (before, open_state),
            durable=False,  # lost in a power cut: the next close deletes them
        )
        if cursor.rowcount:
            log.info(
                "[%s] %d %s no longer open, of periods before %d, deleted",
                self.name,
                cursor.rowcount,
                table,
                before,
            )
        return cursor.rowcount
