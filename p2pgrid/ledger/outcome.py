"""What ingest did with each offered entry: values, not exceptions.

An entry that fails a check is *rejected*: it is not stored, the store counts it
under its :class:`RejectReason` and logs the reason.
"""

from __future__ import annotations

import dataclasses
import enum

from p2pgrid.ledger.entry import Entry


class RejectReason(enum.StrEnum):
    """Why an entry was refused; the store keeps one counter per reason."""

    OVERSIZED = "oversized"
    MALFORMED = "malformed"
    BAD_BODY = "bad_body"
    NON_MEMBER = "non_member"
    ROLE_NOT_ALLOWED = "role_not_allowed"
    BAD_SIGNATURE = "bad_signature"
    BROKEN_CHAIN = "broken_chain"
    TIME_REGRESSION = "time_regression"
    PENDING_FULL = "pending_full"
    BEFORE_ENROLMENT = "before_enrolment"  # a period before the member's ``from_period``
    REVOKED = "revoked"  # seq above the ``last_seq`` of the member's revocation
    DUPLICATE_RECORD = "duplicate_record"  # a second reading/budget/invoice of one key


class Outcome(enum.StrEnum):
    """What ingest did with one entry."""

    STORED = "stored"  # appended to the log
    DUPLICATE = "duplicate"  # already held (in the log or pending): nothing changed
    PENDING = "pending"  # valid, but its predecessor is missing: held until it comes
    EQUIVOCATION = "equivocation"  # stored as evidence; the author is now flagged
    REJECTED = "rejected"  # refused, see the reason


@dataclasses.dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to one offered entry (``entry_id`` is None if it did not decode)."""

    outcome: Outcome
    entry_id: bytes | None = None
    reason: RejectReason | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class IngestReport:
    """Results in the order offered, and every entry that joined the log (also
    entries promoted from pending and equivocation evidence)."""

    results: tuple[IngestResult, ...]
    appended: tuple[Entry, ...]
