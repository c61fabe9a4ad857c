"""Exceptions of the replicated log.

A refused entry is an expected event (a peer sent garbage), reported as a value
(see :mod:`p2pgrid.ledger.outcome`), not raised. Exceptions are kept for the
caller's own mistakes (:class:`LedgerError`), undecodable bytes at the codec
(:class:`MalformedError`) and a database that breaks an invariant
(:class:`CorruptLogError`).
"""

from __future__ import annotations

from p2pgrid.errors import FatalError, ReportableError


class LedgerError(ReportableError):
    """A ledger operation was used wrongly (bad argument, closed store)."""


class MalformedError(LedgerError):
    """Bytes that do not decode to a valid entry or message."""


class CorruptLogError(FatalError):
    """The local database breaks an invariant of the log: stop and show it."""
