"""Exceptions of the replicated log.

A refused entry is an expected event (a peer sent garbage), reported as a value
(see :mod:`p2pgrid.ledger.outcome`), not raised. Exceptions are kept for the
caller's own mistakes (:class:`LedgerError`), undecodable bytes at the codec
(:class:`MalformedError`) and a database that breaks an invariant
(:class:`CorruptLogError`), and a log file another process writes
(:class:`StoreInUse`, :mod:`p2pgrid.ledger.store_lock`).
"""

from __future__ import annotations

from p2pgrid.errors import ConfigError, FatalError, ReportableError


class LedgerError(ReportableError):
    """A ledger operation was used wrongly (bad argument, closed store)."""


class MalformedError(LedgerError):
    """Bytes that do not decode to a valid entry or message."""


class CorruptLogError(FatalError):
    """The local database breaks an invariant of the log: stop and show it."""


class StoreInUse(ConfigError):
    """Another process (or another open in this one) holds the log file's lock."""
