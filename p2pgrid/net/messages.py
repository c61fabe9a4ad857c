"""What the asyncio side of the net layer hands to agents: typed, frozen values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Self, TypeVar

from p2pgrid.net.errors import WrongKind
from p2pgrid.net.node import PeerRef

__all__ = ["Delivery", "PeerJoined", "PeerLeft", "PeerRef", "WireMessage"]


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

    def decode(self, cls: type[M]) -> M:
        if self.kind != cls.KIND:
            raise WrongKind(f"delivery of kind {self.kind:#06x} is not a {cls.__name__}")
        return cls.decode(self.data)


@dataclass(frozen=True, slots=True)
class PeerJoined:
    peer: PeerRef


@dataclass(frozen=True, slots=True)
class PeerLeft:
    peer: PeerRef


PeerEvent = PeerJoined | PeerLeft
