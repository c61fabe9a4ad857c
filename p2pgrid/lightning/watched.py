"""A :class:`LightningNode` whose every call feeds a :class:`NodeWatch`.

What its owner (an agent, the utility) gets by wrapping its node once:

- the node's availability as a state, with one WARNING when it goes away and one
  INFO when it is back (:mod:`p2pgrid.lightning.availability`);
- **reads** (``get_info``, balances, lists, ``decode_invoice``, ``lookup_invoice``,
  ``track_payment``) and ``add_invoice`` *with a preimage* (it names one invoice)
  and ``add_hold_invoice`` (its hash names one invoice)
  are retried with capped back-off while the node is away, for at most
  ``away_wait_s``, then raise :class:`NodeUnreachable`;
- **writes that move or promise money** (``pay_invoice``, ``keysend``,
  ``add_invoice`` without a preimage, ``cancel_invoice``, ``settle_invoice``,
  channel operations) are
  tried once: whether a payment left is a question for lnd by payment hash
  (the agent's payment intents resolve it), never a blind second try.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from p2pgrid.lightning.availability import NodeWatch
from p2pgrid.lightning.errors import LightningError, NodeUnreachable
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
from p2pgrid.lightning.node import LightningNode

T = TypeVar("T")

#: How long a read waits for a node that does not answer before it gives up.
AWAY_WAIT_S = 60.0


class WatchedNode:
    """``node`` with its calls watched by ``watch``; see the module docstring."""

    def __init__(
        self, node: LightningNode, watch: NodeWatch, *, away_wait_s: float = AWAY_WAIT_S
    ) -> None:
        self.node = node
        self.watch = watch
        self.away_wait_s = away_wait_s

    async def _read(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        return await self.watch.call(op, what=what, deadline_s=self.away_wait_s)

    async def _once(self, op: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await op()
        except NodeUnreachable as exc:
            self.watch.unreachable(exc)
            raise
        except LightningError:
            self.watch.answered()
            raise
        self.watch.answered()
        return result

    async def get_info(self) -> NodeInfo:
        return await self._read(self.node.get_info, "get_info")

    async def new_address(self) -> str:
        return await self._once(self.node.new_address)

    async def wallet_balance(self) -> WalletBalance:
        return await self._read(self.node.wallet_balance, "wallet_balance")

    async def channel_balance(self) -> ChannelBalance:
        return await self._read(self.node.channel_balance, "channel_balance")

    async def connect_peer(self, pubkey: str, host: str) -> None:
        await self._once(functools.partial(self.node.connect_peer, pubkey, host))

    async def list_peers(self) -> list[Peer]:
        return await self._read(self.node.list_peers, "list_peers")

    async def open_channel(
        self, pubkey: str, local_sat: int, *, push_sat: int = 0, private: bool = True
    ) -> str:
        op = functools.partial(
            self.node.open_channel, pubkey, local_sat, push_sat=push_sat, private=private
        )
        return await self._once(op)

    async def list_channels(self) -> list[Channel]:
        return await self._read(self.node.list_channels, "list_channels")

    async def channel_routable(self, chan_id: int) -> bool:
        return await self._read(functools.partial(self.node.channel_routable, chan_id), "edge")

    async def pending_channels(self) -> list[PendingChannel]:
        return await self._read(self.node.pending_channels, "pending_channels")

    async def close_channel(self, channel_point: str, *, force: bool = False) -> str:
        return await self._once(
            functools.partial(self.node.close_channel, channel_point, force=force)
        )

    async def add_invoice(
        self,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        private: bool = False,
        preimage: bytes | None = None,
    ) -> Invoice:
        op = functools.partial(
            self.node.add_invoice,
            amount_msat,
            memo,
            expiry_s=expiry_s,
            private=private,
            preimage=preimage,
        )
        if preimage is None:  # a second try would make a second invoice
            return await self._once(op)
        return await self._read(op, "add_invoice")

    async def decode_invoice(self, payment_request: str) -> DecodedInvoice:
        return await self._read(
            functools.partial(self.node.decode_invoice, payment_request), "decode_invoice"
        )

    async def lookup_invoice(self, payment_hash: str) -> Invoice:
        return await self._read(
            functools.partial(self.node.lookup_invoice, payment_hash), "lookup_invoice"
        )

    async def list_invoices(self) -> list[Invoice]:
        return await self._read(self.node.list_invoices, "list_invoices")

    async def cancel_invoice(self, payment_hash: str) -> None:
        await self._once(functools.partial(self.node.cancel_invoice, payment_hash))

    async def add_hold_invoice(
        self,
        payment_hash: str,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        cltv_expiry: int = 80,
        private: bool = False,
    ) -> Invoice:
        op = functools.partial(
            self.node.add_hold_invoice,
            payment_hash,
            amount_msat,
            memo,
            expiry_s=expiry_s,
            cltv_expiry=cltv_expiry,
            private=private,
        )
        return await self._read(op, "add_hold_invoice")  # the hash names one invoice

    async def settle_invoice(self, preimage: bytes) -> None:
        await self._once(functools.partial(self.node.settle_invoice, preimage))

    def subscribe_invoices(self, *, settle_index: int = 0) -> AsyncIterator[Invoice]:
        return self.node.subscribe_invoices(settle_index=settle_index)

    async def pay_invoice(
        self, payment_request: str, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment:
        return await self._once(
            functools.partial(
                self.node.pay_invoice,
                payment_request,
                fee_limit_msat=fee_limit_msat,
                timeout_s=timeout_s,
            )
        )

    async def keysend(
        self, pubkey: str, amount_msat: int, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment:
        return await self._once(
            functools.partial(
                self.node.keysend,
                pubkey,
                amount_msat,
                fee_limit_msat=fee_limit_msat,
                timeout_s=timeout_s,
            )
        )

    async def track_payment(self, payment_hash: str) -> Payment:
        return await self._read(
            functools.partial(self.node.track_payment, payment_hash), "track_payment"
        )

    async def list_payments(self) -> list[Payment]:
        return await self._read(self.node.list_payments, "list_payments")
