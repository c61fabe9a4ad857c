"""The interface the rest of p2pgrid uses to talk to a Lightning node.

Nothing outside ``p2pgrid.lightning`` sees REST: an lnd backend implements this
Protocol today (:class:`p2pgrid.lightning.lnd.LndClient`); a Core Lightning
backend (``pyln-client``) could implement it where ``lightningd`` exists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from p2pgrid.lightning.models import (
    Channel,
    ChannelBalance,
    DecodedInvoice,
    Invoice,
    NodeInfo,
    Payment,
    Peer,
    PendingChannel,
    WalletBalance,
)


class LightningNode(Protocol):
    """One Lightning node, driven over asyncio. Every call has a timeout."""

    async def get_info(self) -> NodeInfo: ...
    async def new_address(self) -> str: ...
    async def wallet_balance(self) -> WalletBalance: ...
    async def channel_balance(self) -> ChannelBalance: ...

    async def connect_peer(self, pubkey: str, host: str) -> None: ...
    async def list_peers(self) -> list[Peer]: ...

    async def open_channel(
        self, pubkey: str, local_sat: int, *, push_sat: int = 0, private: bool = True
    ) -> str: ...
    async def list_channels(self) -> list[Channel]: ...
    async def channel_routable(self, chan_id: int) -> bool: ...
    async def pending_channels(self) -> list[PendingChannel]: ...
    async def close_channel(self, channel_point: str, *, force: bool = False) -> str: ...

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
    async def list_invoices(self) -> list[Invoice]: ...
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
    def subscribe_invoices(self, *, settle_index: int = 0) -> AsyncIterator[Invoice]: ...

    async def pay_invoice(
        self, payment_request: str, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment: ...
    async def keysend(
        self, pubkey: str, amount_msat: int, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment: ...
    async def track_payment(self, payment_hash: str) -> Payment: ...
    async def list_payments(self) -> list[Payment]: ...
