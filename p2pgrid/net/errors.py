"""Every exception of the net layer, in one place, each under :class:`p2pgrid.errors.P2PGridError`.

Split by what the caller does (see :mod:`p2pgrid.errors`):

- retry later: :class:`BridgeClosed` (the trio side is not running),
  :class:`NetClosed` (the host is not running), :class:`PeerUnreachable`
  (the peer could not be reached or dropped the stream);
- give up and report: :class:`RequestRejected` (the peer refused or answered
  something invalid; on the trio side :class:`RequestRefused`),
  :class:`EnvelopeError` and :class:`FrameError` (malformed bytes from a peer),
  :class:`WrongKind` (a delivery decoded as the wrong message type).

Expected outcomes of validation (a rejected envelope) are values
(:class:`p2pgrid.net.validator.Reason`), not exceptions.
"""

from __future__ import annotations

from p2pgrid.errors import ReportableError, RetryableError

__all__ = [
    "BridgeClosed",
    "EnvelopeError",
    "FrameError",
    "NetClosed",
    "PeerUnreachable",
    "RequestRefused",
    "RequestRejected",
    "WrongKind",
]


class BridgeClosed(RetryableError):
    """The trio side is not running (never started, stopped, or crashed)."""


class NetClosed(RetryableError):
    """The host is not running."""


class PeerUnreachable(RetryableError):
    """The peer could not be reached or dropped the stream."""


class RequestRejected(ReportableError):
    """The peer refused the request or answered with something invalid."""


class RequestRefused(ReportableError):
    """Trio-side: the remote refused (an empty answer frame) or closed without answering.

    :class:`p2pgrid.net.PeerHost` turns it into :class:`RequestRejected`."""


class EnvelopeError(ReportableError):
    """Bytes that are not a well-formed envelope (or too large)."""


class FrameError(EnvelopeError):
    """A frame was truncated or longer than allowed."""


class WrongKind(ReportableError):
    """A delivery was decoded as a message type of another kind."""
