"""Errors and rejection reasons of the replicated log.

An entry that fails a check is *rejected*: it is not stored, the store counts it
under a :class:`RejectReason` and logs the reason. Rejection is an expected
event (a peer sent garbage), so ingest reports it as a value, not an exception.
Exceptions are kept for the caller's own mistakes (:class:`LedgerError`) and for
a database that breaks an invariant (:class:`CorruptLogError`).
"""

from __future__ import annotations

import enum

from p2pgrid.errors import FatalError, ReportableError


class LedgerError(ReportableError):
    """A ledger operation was used wrongly (bad argument, closed store)."""


class MalformedError(LedgerError):
    """Bytes that do not decode to a valid entry or message."""


class CorruptLogError(FatalError):
    """The local database breaks an invariant of the log: stop and show it."""


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


class Outcome(enum.StrEnum):
    """What ingest did with one entry."""

    STORED = "stored"  # appended to the log
    DUPLICATE = "duplicate"  # already held (in the log or pending): nothing changed
    PENDING = "pending"  # valid, but its predecessor is missing: held until it comes
    EQUIVOCATION = "equivocation"  # stored as evidence; the author is now flagged
    REJECTED = "rejected"  # refused, see the reason
