"""What the asyncio side of the net layer hands to agents: typed, frozen values."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Self, TypeVar

from p2pgrid.errors import P2PGridError
from p2pgrid.net.errors import MalformedMessage, WrongKind
from p2pgrid.net.node import PeerRef

__all__ = ["Delivery", "PeerJoined", "PeerLeft", "PeerRef", "WireMessage"]


#: What a message decoder may raise on hostile bytes: its own typed error, or
#: (a decoder's bug, still the peer's bytes) a low-level one; none gets past the edge.
_DECODE_ERRORS = (P2PGridError, ValueError, struct.error, IndexError, OverflowError)


class WireMessage(Protocol):
    """An application message: a kind (>= 0x0100) and a byte codec.

    Versioning: a kind names one encoding; an incompatible change takes a new
    kind, so old and new agents can run side by side.
    """

    KIND: ClassVar[int]

    def encode(self) -> bytes: ...

    @classmethod
    def decode(cls, data: bytes) -> Self: ...


M = TypeVar("M", bound=WireMessage)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One accepted record, from a member device whose signature was checked."""

    topic: str
    site_id: str
    device_index: int
    peer_id: str
    kind: int
    data: bytes
    sent_at_ms: int
    #: Called with a reason when the record turns out malformed (the host counts it
    #: against ``peer_id``); None for deliveries made outside a host (tests).
    on_malformed: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def decode(self, cls: type[M]) -> M:
        """The record as a ``cls``; raises :class:`MalformedMessage` (a
        :class:`RequestRejected`) on anything else, and reports it."""
        if self.kind != cls.KIND:
            self._malformed("wrong_kind")
            raise WrongKind(
                f"delivery of kind {self.kind:#06x} is not a {cls.__name__}", reason="wrong_kind"
            )
        try:
            return cls.decode(self.data)
        except _DECODE_ERRORS as exc:
            self._malformed("malformed")
            raise MalformedMessage(
                f"malformed {cls.__name__} from {self.peer_id}: {exc}", reason="malformed"
            ) from exc

    def _malformed(self, reason: str) -> None:
        if self.on_malformed is not None:
            self.on_malformed(f"{self.topic}:{reason}")


@dataclass(frozen=True, slots=True)
class PeerJoined:
    peer: PeerRef


@dataclass(frozen=True, slots=True)
class PeerLeft:
    peer: PeerRef


PeerEvent = PeerJoined | PeerLeft
