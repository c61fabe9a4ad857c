"""Light devices: devices of a site that pay and are paid through the site's lnd.

A *light* device has no lnd of its own: the site file names a site node
(``[site_lightning]``) and the device's row says ``lightning = "site"``; its
``lnd_pubkey``, where every peer pays it, is the site node's (docs/deploy.md).
Its obligations are still its own: the utility invoices it per (device,
period), its payment entries carry their preimages, its invoices are its own.

:class:`SiteNode` is the one client of the site node in a gateway (one
:class:`~p2pgrid.lightning.WatchedNode`, shared by its light devices);
:meth:`SiteNode.wallet` gives each light device its :class:`SiteWallet`, the
:class:`~p2pgrid.agent.ports.Wallet` its agent pays and is paid with:

- its invoices (a share's, a sale's, an allowance offer's) are made on the
  site node with the description the protocol gives them, whose last field
  names the payee (:func:`~p2pgrid.agent.payguard.payee_of`): a wallet makes
  only invoices that name its own device, and looks up, cancels or settles
  only those, so the node tells which device each invoice pays;
- a payment to another node leaves the site node over Lightning, as any
  device's would;
- a payment to an invoice of the site node itself (the payee is on the same
  node: lnd cannot pay itself) is an **internal transfer**: no Lightning hop.
  The wallet accepts it only if the invoice is a share's or a sale's (their
  payee takes the payer's receipt or entry as the proof; the payee of a sale
  across sites or of leftover allowance logs its side only for an invoice
  SETTLED on lnd, which an internal transfer never is), names a device that
  is light on this node and not the payer, is OPEN, is not a hold invoice and
  has not expired. It then cancels the invoice on the node (from then on no Lightning
  payment can settle it, so the payee is never paid twice) and answers a
  SUCCEEDED payment with fee 0 and the invoice's preimage, which the node
  released to its own client. The payer logs it as any payment (``share``
  with its proof, or ``sale`` + ``payment``): the preimage is the proof, and
  only a holder of the site node's macaroon can read it, so a device that is
  not on the node cannot claim an internal transfer (docs/protocol.md,
  "Light devices").

An internal transfer moves no sat in lnd: between two light devices of one node
the sats stay where they are and the log says whose they are. A crash between
the cancel and the log entry leaves the payer's intent open; lnd has no payment
of that hash, so recovery resolves it as never sent and nothing is logged: the
payee's invoice is cancelled, nobody credited, no sat moved.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Collection

from p2pgrid.agent.payguard import payee_of
from p2pgrid.agent.ports import Wallet
from p2pgrid.lightning import (
    DecodedInvoice,
    Invoice,
    InvoiceError,
    InvoiceExpired,
    InvoiceState,
    LightningError,
    NodeWatch,
    Payment,
    PaymentFailed,
    PaymentStatus,
)
from p2pgrid.market import Party

log = logging.getLogger(__name__)

#: The invoices paid by internal transfer (by their description's start): those
#: whose payee never asks lnd whether they were paid.
INTERNAL_KINDS = ("p2pgrid share ", "p2pgrid sale ")


class SiteNode:
    """The site's lnd (``node``, at ``pubkey``) and the devices light on it.

    ``light``: every device of the site whose row says ``lightning = "site"``
    (those of other gateways too: an internal transfer needs only the node)."""

    def __init__(
        self,
        node: Wallet,
        pubkey: str,
        light: Collection[Party],
        *,
        name: str = "site",
        watch: NodeWatch | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``watch``: the node's watch, shared by its light devices' agents."""
        self.node = node
        self.watch = watch if watch is not None else NodeWatch(name)
        self.pubkey = pubkey
        self.light = frozenset(light)
        self.name = name
        self._now = now
        #: Internal transfers made through this client: hash -> (payer, payment).
        self._internal: dict[str, tuple[Party, Payment]] = {}
        self._transfers = asyncio.Lock()  # one internal transfer at a time

    def wallet(self, device: Party) -> SiteWallet:
        if device not in self.light:
            raise ValueError(f"device {device.device} is not light on {self.name}")
        return SiteWallet(self, device)


class SiteWallet:
    """Device ``me``'s :class:`~p2pgrid.agent.ports.Wallet` on the site node."""

    def __init__(self, site: SiteNode, me: Party) -> None:
        self.site = site
        self.me = me

    @property
    def _where(self) -> str:
        return f"{self.site.name} for device {self.me.device}"

    def _names_me(self, memo: str) -> None:
        if payee_of(memo) != self.me:
            raise InvoiceError(
                f"{self._where}: an invoice must name this device as its payee: {memo[:80]!r}"
            )

    async def _mine(self, payment_hash: str) -> Invoice:
        """This device's invoice of ``payment_hash`` on the node (another device's
        is as good as absent)."""
        invoice = await self.site.node.lookup_invoice(payment_hash)
        if payee_of(invoice.memo) != self.me:
            raise InvoiceError(f"{self._where}: no invoice {payment_hash[:16]}... of this device")
        return invoice

    async def add_invoice(
        self,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        private: bool = False,
        preimage: bytes | None = None,
    ) -> Invoice:
        self._names_me(memo)
        return await self.site.node.add_invoice(
            amount_msat, memo, expiry_s=expiry_s, private=private, preimage=preimage
        )

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
        self._names_me(memo)
        return await self.site.node.add_hold_invoice(
            payment_hash,
            amount_msat,
            memo,
            expiry_s=expiry_s,
            cltv_expiry=cltv_expiry,
            private=private,
        )

    async def decode_invoice(self, payment_request: str) -> DecodedInvoice:
        return await self.site.node.decode_invoice(payment_request)

    async def lookup_invoice(self, payment_hash: str) -> Invoice:
        return await self._mine(payment_hash)

    async def cancel_invoice(self, payment_hash: str) -> None:
        await self._mine(payment_hash)
        await self.site.node.cancel_invoice(payment_hash)

    async def settle_invoice(self, preimage: bytes) -> None:
        await self._mine(hashlib.sha256(preimage).hexdigest())
        await self.site.node.settle_invoice(preimage)

    async def pay_invoice(
        self, payment_request: str, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment:
        decoded = await self.site.node.decode_invoice(payment_request)
        if decoded.destination != self.site.pubkey:
            return await self.site.node.pay_invoice(
                payment_request, fee_limit_msat=fee_limit_msat, timeout_s=timeout_s
            )
        async with self.site._transfers:
            return await self._transfer(decoded)

    async def _transfer(self, decoded: DecodedInvoice) -> Payment:
        """An internal transfer to ``decoded``, an invoice of the site node (see
        the module's contract); :class:`PaymentFailed` when it is not one."""
        payment_hash = decoded.payment_hash
        done = self.site._internal.get(payment_hash)
        if done is not None:
            if done[0] != self.me:
                raise PaymentFailed(payment_hash, "INCORRECT_PAYMENT_DETAILS")
            return done[1]  # as lnd: a second payment of a hash answers the first

        def refuse(why: str) -> PaymentFailed:
            log.warning("[%s] no internal transfer %s...: %s", self._where, payment_hash[:16], why)
            return PaymentFailed(payment_hash, f"INTERNAL: {why}")

        invoice = await self.site.node.lookup_invoice(payment_hash)
        payee = payee_of(invoice.memo)
        if payee is None or payee not in self.site.light:
            raise refuse("the invoice names no device light on this node")
        if payee == self.me:
            raise refuse("a device does not pay itself")
        if not invoice.memo.startswith(INTERNAL_KINDS):
            raise refuse("only shares and sales are paid internally")
        if invoice.state is not InvoiceState.OPEN:
            raise refuse(f"the invoice is {invoice.state.value}")
        if not invoice.preimage:
            raise refuse("a hold invoice is not paid internally")
        if decoded.expires_at < self.site._now():
            raise InvoiceExpired(f"{self._where}: invoice {payment_hash[:16]}... expired")
        try:
            await self.site.node.cancel_invoice(payment_hash)
        except LightningError as exc:  # settled over Lightning meanwhile: not ours to take
            raise refuse(f"cannot cancel it: {exc}") from exc
        payment = Payment(
            payment_hash=payment_hash,
            status=PaymentStatus.SUCCEEDED,
            value_msat=invoice.value_msat,
            fee_msat=0,
            preimage=invoice.preimage,
            failure_reason="NONE",
            creation_time_ns=int(self.site._now() * 1e9),
        )
        self.site._internal[payment_hash] = (self.me, payment)
        log.info(
            "[%s] internal transfer of %d msat to device %d (%s...)",
            self._where,
            payment.value_msat,
            payee.device,
            payment_hash[:16],
        )
        return payment

    async def track_payment(self, payment_hash: str) -> Payment:
        done = self.site._internal.get(payment_hash)
        if done is not None and done[0] == self.me:
            return done[1]
        return await self.site.node.track_payment(payment_hash)

    async def list_payments(self) -> list[Payment]:
        """The site node's payments (every light device's: lnd does not tell them
        apart; the log does) and this device's internal transfers."""
        internal = [p for payer, p in self.site._internal.values() if payer == self.me]
        return [*await self.site.node.list_payments(), *internal]
