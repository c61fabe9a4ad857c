"""Every exception of the net layer, in one place, each under :class:`p2pgrid.errors.P2PGridError`.

Split by what the caller does (see :mod:`p2pgrid.errors`):

- retry later: :class:`BridgeClosed` (the trio side is not running),
  :class:`NetClosed` (the host is not running), :class:`PeerUnreachable`
  (the peer could not be reached or dropped the stream), :class:`DeviceAbsent`
  (the peer answered that the device asked is not there now);
- give up and report: :class:`RequestRejected` (the peer refused or answered
  something invalid; on the trio side :class:`RequestRefused`),
  :class:`EnvelopeError` and :class:`FrameError` (malformed bytes from a peer),
  :class:`MalformedMessage` / :class:`WrongKind` (a delivery that does not decode
  as what it should be), :class:`PeerMisbehaved` (a refusal that is counted
  against the peer; both are :class:`RequestRejected`).

Expected outcomes of validation (a rejected envelope) are values
(:class:`p2pgrid.net.validator.Reason`), not exceptions.
"""

from __future__ import annotations

from p2pgrid.errors import ReportableError, RetryableError

__all__ = [
    "BridgeClosed",
    "DeviceAbsent",
    "EnvelopeError",
    "FrameError",
    "MalformedMessage",
    "NetClosed",
    "PeerMisbehaved",
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


class DeviceAbsent(PeerUnreachable):
    """The peer answered with an error answer (docs/protocol-net.md section 7): the
    device the request named is not served there, not running, or not serving the
    protocol yet (a gateway's device that restarts, or starts after its hub)."""


class RequestRejected(ReportableError):
    """The peer refused the request or answered with something invalid."""


class RequestRefused(ReportableError):
    """Trio-side: the remote refused (an empty answer frame) or closed without answering.

    :class:`p2pgrid.net.PeerHost` turns it into :class:`RequestRejected`."""


class EnvelopeError(ReportableError):
    """Bytes that are not a well-formed envelope (or too large)."""


class FrameError(EnvelopeError):
    """A frame was truncated or longer than allowed."""


class PeerMisbehaved(RequestRejected):
    """The peer sent something no honest peer sends; ``reason`` is counted against it.

    A request handler that raises it refuses the request (like any
    :class:`RequestRejected`) and the host counts ``reason`` for the sender.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class MalformedMessage(PeerMisbehaved):
    """A delivered record does not decode as the message it should be (a refusal:
    callers that handle :class:`RequestRejected` handle it)."""


class WrongKind(MalformedMessage):
    """A delivery was decoded as a message type of another kind."""
