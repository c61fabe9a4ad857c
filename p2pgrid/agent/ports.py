"""What an agent and its desks need from the outside world, as small Protocols.

The device agent, the share desk, the energy desk and the invoice settler talk
to their peers, to their Lightning node and to the site's replicated log only
through these, so unit tests drive them with fakes
(:mod:`p2pgrid.testing.fake_lightning`, :mod:`p2pgrid.testing.fake_peers`,
:mod:`p2pgrid.testing.fake_replica`) while the product passes a real
:class:`p2pgrid.net.PeerHost`, a :class:`p2pgrid.lightning.WatchedNode` over an
:class:`p2pgrid.lightning.LndClient` and a :class:`p2pgrid.replication.NetReplica`
(``mypy --strict`` checks that each satisfies its Protocol where the process
builds the agent). The log itself is never faked: it is a real
:class:`p2pgrid.ledger.LogStore` on SQLite.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from p2pgrid.ledger import Entry
from p2pgrid.lightning import DecodedInvoice, Invoice, Payment
from p2pgrid.net import Delivery, PeerRef
from p2pgrid.net.messages import WireMessage

#: Answers one request; raising a ``ReportableError`` refuses it.
Handler = Callable[[Delivery], Awaitable[WireMessage]]


class Peers(Protocol):
    """The site's peers: direct request/answer streams to member devices."""

    def handle(self, protocol: str, handler: Handler) -> None: ...

    async def request(
        self, peer_id: str, protocol: str, message: WireMessage, *, timeout_s: float = ...
    ) -> Delivery: ...

    def peers(self) -> tuple[PeerRef, ...]: ...

    def report_misbehaviour(self, peer_id: str, reason: str, *, scored: bool = True) -> None: ...


class Wallet(Protocol):
    """The part of a Lightning node an agent pays and gets paid with."""

    async def add_invoice(
        self,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        private: bool = False,
        preimage: bytes | None = None,
    ) -> Invoice: ...
    async def decode_invoice(self, payment_request: str) -> DecodedInvoice: ...
    async def lookup_invoice(self, payment_hash: str) -> Invoice: ...
    async def cancel_invoice(self, payment_hash: str) -> None: ...
    async def add_hold_invoice(
        self,
        payment_hash: str,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        cltv_expiry: int = 80,
        private: bool = False,
    ) -> Invoice: ...
    async def settle_invoice(self, preimage: bytes) -> None: ...
    async def pay_invoice(
        self, payment_request: str, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment: ...
    async def track_payment(self, payment_hash: str) -> Payment: ...
    async def list_payments(self) -> list[Payment]: ...


class LogReplica(Protocol):
    """The site's replication of this agent's log: announce, and wait for news."""

    async def publish(self, entries: Sequence[Entry]) -> None:
        """Announce entries already in the store; best effort (anti-entropy repairs)."""
        ...

    async def push(self, entries: Sequence[Entry], peers: Sequence[str] | None = None) -> int:
        """Hand entries already in the store directly, now, to those of ``peers``
        (default: the site's members) that an announcement does not reach at once;
        best effort (gossip and anti-entropy still carry them). Returns how many
        peers took them."""
        ...

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds, checked whenever the log changed
        (or the replica stopped); the caller owns the deadline."""
        ...
