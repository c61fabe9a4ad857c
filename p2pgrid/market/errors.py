"""The market's exceptions, split by what the caller should do."""

from __future__ import annotations

from p2pgrid.errors import ReportableError


class MarketError(ReportableError):
    """A market rule was asked to do something it does not allow."""


class MessageError(MarketError):
    """Bytes or values that are not a well-formed negotiation message.

    Raised by every ``decode`` on malformed input (truncated, trailing bytes,
    unknown version, a value out of range, a list out of canonical order) and by
    the constructors on values that no message may carry. A peer that sends one
    is misbehaving: drop the message, do not retry it.
    """
