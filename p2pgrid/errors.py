"""The exceptions of p2pgrid: one root, subclasses split by what the caller should do.

- ``RetryableError``: try again later (a peer or daemon is gone for now).
- ``ReportableError``: give up and report the reason (a payment failed).
- ``FatalError``: crash loudly (corrupt state, broken invariant).
"""

from __future__ import annotations


class P2PGridError(Exception):
    """Root of every error that p2pgrid raises on purpose."""


class RetryableError(P2PGridError):
    """The operation may succeed if tried again later."""


class ReportableError(P2PGridError):
    """The operation failed for a reason that retrying will not fix."""


class FatalError(P2PGridError):
    """State is corrupt or an invariant broke: stop and show it."""


class ConfigError(ReportableError):
    """The configuration is wrong (bad value, missing file, port in use)."""


class TimeoutExpired(RetryableError):
    """A wait with a deadline ran out (see ``p2pgrid.poll.wait_until``)."""
