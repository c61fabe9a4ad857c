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

States and transitions (one log line each): ``open -> logged``,
``open -> failed``, ``failed -> open`` (the same invoice tried again); nothing
leaves ``logged``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from pathlib import Path

import aiosqlite

from p2pgrid.errors import FatalError

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

    @classmethod
    async def open(cls, path: Path, *, name: str) -> IntentBook:
        db = await aiosqlite.connect(path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")  # an intent survives a power cut
        await db.execute(_SCHEMA)
        await db.commit()
        return cls(db, name)

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
        await self._db.execute(
            "INSERT INTO payment_intents VALUES (?, ?, ?, ?, ?, ?)",
            (
                intent.payment_hash,
                intent.bolt11,
                intent.period,
                intent.purpose.to_json(),
                IntentState.OPEN.value,
                "",
            ),
        )
        await self._db.commit()
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
        intent = await self.get(payment_hash)
        if intent is None:
            raise IntentError(f"no intent for payment {payment_hash[:16]}")
        if to not in _ALLOWED[intent.state]:
            raise IntentError(
                f"intent {payment_hash[:16]}: {intent.state.value} -> {to.value} forbidden"
            )
        await self._db.execute(
            "UPDATE payment_intents SET state = ?, detail = ? WHERE payment_hash = ?",
            (to.value, detail, payment_hash),
        )
        await self._db.commit()
        log.info(
            "[%s] intent %s...: %s -> %s %s",
            self.name,
            payment_hash[:16],
            intent.state.value,
            to.value,
            detail,
        )
