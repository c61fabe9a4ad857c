"""A fake Lightning network in memory, for unit tests of code that pays.

:class:`FakeLightning` holds nodes (:class:`FakeNode`, each implementing
:class:`p2pgrid.lightning.LightningNode`) that pay each other's invoices at
once. It keeps lnd's rules that matter to the payers: an invoice names its
destination node, amount, description, payment hash and expiry (checked
against the network's controllable clock); adding an invoice of a payment hash
the node has returns it if amount and description match, else raises
:class:`~p2pgrid.lightning.InvoiceExists` (nothing created); paying an expired
invoice raises :class:`~p2pgrid.lightning.InvoiceExpired`; an amount below
``min_htlc_msat`` fails with ``NO_ROUTE``; a paid hash is never paid twice (the
first payment is returned); a settled invoice cannot be cancelled (a cancelled
one can, again: a no-op). A *hold* invoice
(``add_hold_invoice``) takes a payment as lnd does: the payer's sats leave its
balance and the invoice is ACCEPTED, the payer's ``pay_invoice`` waiting, until
the payee settles it (``settle_invoice``: the payee is credited, the payment
SUCCEEDED) or cancels it (``cancel_invoice``: the sats return to the payer, its
payment FAILED with ``INCORRECT_PAYMENT_DETAILS``). A payment between two nodes
other than the hub routes through it and pays ``route_fee_msat``. Each node
has one local balance, moved to the msat, so
:func:`p2pgrid.reconcile.reconcile` works on fakes too.

Hooks for tests: ``wait_accepted`` returns once a hold invoice holds a payment;
``before_pay`` runs after a payment is accepted and before it
settles (to move a clock across a period boundary mid-payment);
``fail_next`` makes the next payment fail with a reason; ``raise_next`` makes
the next pay call raise an error (as lnd's client would, e.g. ``InvoiceExpired``);
``attempts`` lists every payment that sent money.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from p2pgrid.lightning import (
    Channel,
    ChannelBalance,
    DecodedInvoice,
    Invoice,
    InvoiceError,
    InvoiceExists,
    InvoiceExpired,
    InvoiceState,
    LndApiError,
    NodeInfo,
    Payment,
    PaymentFailed,
    PaymentStatus,
    Peer,
    PendingChannel,
    WalletBalance,
)

PREFIX = "lnfake1"


@dataclasses.dataclass
class _Invoice:
    node: FakeNode
    payment_hash: str
    preimage: bytes
    amount_msat: int
    memo: str
    created: float
    expiry_s: int
    bolt11: str
    state: InvoiceState = InvoiceState.OPEN
    paid_msat: int = 0
    settle_index: int = 0
    hold: bool = False  # the payee settles with the preimage (or cancels)
    payer: FakeNode | None = None
    fee_msat: int = 0
    accepted: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    resolved: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def view(self) -> Invoice:
        return Invoice(
            payment_hash=self.payment_hash,
            payment_request=self.bolt11,
            memo=self.memo,
            value_msat=self.amount_msat,
            amt_paid_msat=self.paid_msat,
            state=self.state,
            add_index=0,
            settle_index=self.settle_index,
            creation_date=int(self.created),
            expiry_s=self.expiry_s,
            preimage=self.preimage.hex(),
        )


class FakeLightning:
    """The network: its nodes, their invoices, a clock and a hub that routes."""

    def __init__(
        self,
        *,
        now: Callable[[], float],
        hub: str = "utility",
        route_fee_msat: int = 1_000,
        min_htlc_msat: int = 1_000,
    ) -> None:
        self.now = now
        self.hub = hub
        self.route_fee_msat = route_fee_msat
        self.min_htlc_msat = min_htlc_msat
        self.nodes: dict[str, FakeNode] = {}
        self.invoices: dict[str, _Invoice] = {}  # by bolt11
        self._settled = 0

    def node(self, name: str, *, local_msat: int = 100_000_000) -> FakeNode:
        node = FakeNode(self, name, local_msat)
        self.nodes[name] = node
        return node

    def forge(self, *, by: FakeNode, **changes: object) -> str:
        """A bolt11 string of an invoice like ``by``'s would be, with ``changes``
        (destination, amount_msat, memo, payment_hash, created, expiry_s): what a
        lying peer could hand over. Paying it pays ``destination``'s node."""
        preimage = secrets.token_bytes(32)
        inv = _Invoice(
            node=by,
            payment_hash=hashlib.sha256(preimage).hexdigest(),
            preimage=preimage,
            amount_msat=1_000,
            memo="",
            created=self.now(),
            expiry_s=3600,
            bolt11="",
        )
        for key, value in changes.items():
            setattr(inv, key, value)
        inv.bolt11 = f"{PREFIX}{secrets.token_hex(16)}"
        self.invoices[inv.bolt11] = inv
        return inv.bolt11

    def _next_settle(self) -> int:
        self._settled += 1
        return self._settled


class FakeNode:
    """One node of a :class:`FakeLightning`; implements ``LightningNode``."""

    def __init__(self, net: FakeLightning, name: str, local_msat: int) -> None:
        self.net = net
        self.name = name
        self.pubkey = "02" + hashlib.sha256(name.encode()).hexdigest()
        self.local_msat = local_msat
        self.payments: dict[str, Payment] = {}
        self.attempts: list[str] = []  # bolt11 of every pay call that sent money
        self.before_pay: Callable[[], Awaitable[None]] | None = None
        self.fail_next: str | None = None
        self.raise_next: Exception | None = None

    # -- node ----------------------------------------------------------------------------

    async def get_info(self) -> NodeInfo:
        return NodeInfo(
            pubkey=self.pubkey,
            alias=self.name,
            block_height=0,
            synced_to_chain=True,
            num_active_channels=1,
            num_pending_channels=0,
            num_peers=1,
        )

    async def new_address(self) -> str:
        raise LndApiError(f"{self.name}: a fake node has no wallet")

    async def wallet_balance(self) -> WalletBalance:
        return WalletBalance(confirmed_sat=0, unconfirmed_sat=0)

    async def channel_balance(self) -> ChannelBalance:
        return ChannelBalance(local_msat=self.local_msat, remote_msat=0, pending_open_local_msat=0)

    async def connect_peer(self, pubkey: str, host: str) -> None:
        return None

    async def list_peers(self) -> list[Peer]:
        return []

    async def open_channel(
        self, pubkey: str, local_sat: int, *, push_sat: int = 0, private: bool = True
    ) -> str:
        raise LndApiError(f"{self.name}: a fake node opens no channels")

    async def list_channels(self) -> list[Channel]:
        return []

    async def channel_routable(self, chan_id: int) -> bool:
        return True

    async def pending_channels(self) -> list[PendingChannel]:
        return []

    async def close_channel(self, channel_point: str, *, force: bool = False) -> str:
        raise LndApiError(f"{self.name}: a fake node closes no channels")

    # -- invoices ------------------------------------------------------------------------

    async def add_invoice(
        self,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        private: bool = False,
        preimage: bytes | None = None,
    ) -> Invoice:
        if amount_msat <= 0:
            raise InvoiceError(f"invoice amount must be positive, got {amount_msat} msat")
        preimage = preimage if preimage is not None else secrets.token_bytes(32)
        payment_hash = hashlib.sha256(preimage).hexdigest()
        for inv in self._mine():
            if inv.payment_hash == payment_hash:  # the same preimage names the same invoice
                if (inv.amount_msat, inv.memo) != (amount_msat, memo):
                    raise InvoiceExists(
                        f"{self.name}: invoice {payment_hash[:12]} exists with "
                        f"{inv.amount_msat} msat / {inv.memo!r}, not {amount_msat} / {memo!r}",
                        existing=inv.view(),
                    )
                return inv.view()
        inv = _Invoice(
            node=self,
            payment_hash=payment_hash,
            preimage=preimage,
            amount_msat=amount_msat,
            memo=memo,
            created=self.net.now(),
            expiry_s=expiry_s,
            bolt11=f"{PREFIX}{secrets.token_hex(16)}",
        )
        self.net.invoices[inv.bolt11] = inv
        return inv.view()

    def _get(self, payment_request: str) -> _Invoice:
        inv = self.net.invoices.get(payment_request)
        if inv is None:
            raise InvoiceError(f"{self.name}: cannot decode invoice {payment_request[:20]!r}")
        return inv

    async def decode_invoice(self, payment_request: str) -> DecodedInvoice:
        inv = self._get(payment_request)
        return DecodedInvoice(
            destination=inv.node.pubkey,
            payment_hash=inv.payment_hash,
            amount_msat=inv.amount_msat,
            timestamp=int(inv.created),
            expiry_s=inv.expiry_s,
            description=inv.memo,
        )

    def _mine(self) -> list[_Invoice]:
        return [i for i in self.net.invoices.values() if i.node is self]

    async def lookup_invoice(self, payment_hash: str) -> Invoice:
        for inv in self._mine():
            if inv.payment_hash == payment_hash:
                return inv.view()
        raise LndApiError(f"{self.name}: unable to locate invoice", status=404)

    async def list_invoices(self) -> list[Invoice]:
        return [i.view() for i in self._mine()]

    def _find(self, payment_hash: str) -> _Invoice:
        for inv in self._mine():
            if inv.payment_hash == payment_hash:
                return inv
        raise LndApiError(f"{self.name}: unable to locate invoice", status=404)

    async def cancel_invoice(self, payment_hash: str) -> None:
        inv = self._find(payment_hash)
        if inv.state is InvoiceState.SETTLED:
            raise LndApiError(f"{self.name}: invoice already settled")
        if inv.state is InvoiceState.ACCEPTED and inv.payer is not None:  # the HTLC fails back
            inv.payer.local_msat += inv.amount_msat + inv.fee_msat
            inv.payer.payments[payment_hash] = inv.payer._payment(
                inv, PaymentStatus.FAILED, 0, "INCORRECT_PAYMENT_DETAILS"
            )
        inv.state = InvoiceState.CANCELED
        inv.resolved.set()

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
        if amount_msat <= 0:
            raise InvoiceError(f"invoice amount must be positive, got {amount_msat} msat")
        for inv in self._mine():
            if inv.payment_hash == payment_hash:
                if (inv.amount_msat, inv.memo) != (amount_msat, memo):
                    raise InvoiceExists(
                        f"{self.name}: invoice exists with other terms", existing=inv.view()
                    )
                return inv.view()
        inv = _Invoice(
            node=self,
            payment_hash=payment_hash,
            preimage=b"",  # the payee keeps it until it settles
            amount_msat=amount_msat,
            memo=memo,
            created=self.net.now(),
            expiry_s=expiry_s,
            bolt11=f"{PREFIX}{secrets.token_hex(16)}",
            hold=True,
        )
        self.net.invoices[inv.bolt11] = inv
        return inv.view()

    async def wait_accepted(self, payment_hash: str) -> None:
        """Test hook: return once a payment to this node's hold invoice is ACCEPTED."""
        await self._find(payment_hash).accepted.wait()

    async def settle_invoice(self, preimage: bytes) -> None:
        inv = self._find(hashlib.sha256(preimage).hexdigest())
        if inv.state is InvoiceState.SETTLED:
            return
        if inv.state is not InvoiceState.ACCEPTED or inv.payer is None:
            raise LndApiError(f"{self.name}: invoice is {inv.state.value}, not accepted")
        inv.preimage = preimage
        self._credit(inv, inv.payer, inv.fee_msat)
        inv.resolved.set()

    def _credit(self, inv: _Invoice, payer: FakeNode, fee: int) -> Payment:
        """The payee side of a settled payment: credit, SETTLED, the payer's SUCCEEDED."""
        inv.node.local_msat += inv.amount_msat
        if fee:
            self.net.nodes[self.net.hub].local_msat += fee
        inv.state, inv.paid_msat = InvoiceState.SETTLED, inv.amount_msat
        inv.settle_index = self.net._next_settle()
        payment = payer._payment(inv, PaymentStatus.SUCCEEDED, fee)
        payer.payments[inv.payment_hash] = payment
        return payment

    def subscribe_invoices(self, *, settle_index: int = 0) -> AsyncIterator[Invoice]:
        raise LndApiError(f"{self.name}: a fake node streams no invoices")

    # -- payments ------------------------------------------------------------------------

    async def pay_invoice(
        self, payment_request: str, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment:
        inv = self._get(payment_request)
        if inv.node is self:  # as lnd: a node does not pay its own invoice
            raise LndApiError(f"{self.name}: no self-payments allowed")
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc
        done = self.payments.get(inv.payment_hash)
        if done is not None and done.status is PaymentStatus.SUCCEEDED:
            return done  # lnd returns the first payment of a hash
        if done is not None and done.status is PaymentStatus.IN_FLIGHT and inv.hold:
            return await self._held(inv)  # lnd tracks the payment in transition
        if self.net.now() > inv.created + inv.expiry_s:
            raise InvoiceExpired(f"{self.name}: invoice expired")
        fee = 0 if self.net.hub in (self.name, inv.node.name) else self.net.route_fee_msat
        reason = self.fail_next
        self.fail_next = None
        if reason is None and inv.state is not InvoiceState.OPEN:
            reason = "INCORRECT_PAYMENT_DETAILS"
        if reason is None and inv.amount_msat < self.net.min_htlc_msat:
            reason = "NO_ROUTE"
        if reason is None and fee > fee_limit_msat:
            reason = "NO_ROUTE"
        if reason is None and inv.amount_msat + fee > self.local_msat:
            reason = "INSUFFICIENT_BALANCE"
        if reason is not None:
            self.payments[inv.payment_hash] = self._payment(inv, PaymentStatus.FAILED, 0, reason)
            raise PaymentFailed(inv.payment_hash, reason)
        self.attempts.append(payment_request)
        self.payments[inv.payment_hash] = self._payment(inv, PaymentStatus.IN_FLIGHT, fee)
        if self.before_pay is not None:
            await self.before_pay()
        self.local_msat -= inv.amount_msat + fee
        if inv.hold:  # the HTLC is locked until the payee settles or cancels
            inv.state, inv.payer, inv.fee_msat = InvoiceState.ACCEPTED, self, fee
            inv.accepted.set()
            return await self._held(inv)
        return self._credit(inv, self, fee)

    async def _held(self, inv: _Invoice) -> Payment:
        await inv.resolved.wait()
        payment = self.payments[inv.payment_hash]
        if payment.status is PaymentStatus.FAILED:
            raise PaymentFailed(inv.payment_hash, payment.failure_reason)
        return payment

    def _payment(
        self, inv: _Invoice, status: PaymentStatus, fee: int, reason: str = "NONE"
    ) -> Payment:
        return Payment(
            payment_hash=inv.payment_hash,
            status=status,
            value_msat=inv.amount_msat,
            fee_msat=fee,
            preimage=inv.preimage.hex() if status is PaymentStatus.SUCCEEDED else "",
            failure_reason=reason,
            creation_time_ns=int(self.net.now() * 1e9),
        )

    async def keysend(
        self, pubkey: str, amount_msat: int, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> Payment:
        raise LndApiError(f"{self.name}: a fake node sends no keysend")

    async def track_payment(self, payment_hash: str) -> Payment:
        payment = self.payments.get(payment_hash)
        if payment is None:
            raise LndApiError(f"{self.name}: payment isn't initiated", status=404)
        if payment.status is PaymentStatus.IN_FLIGHT:  # a held payment: until it resolves
            inv = next(i for i in self.net.invoices.values() if i.payment_hash == payment_hash)
            return await self._held(inv)
        if payment.status is PaymentStatus.FAILED:
            raise PaymentFailed(payment_hash, payment.failure_reason)
        return payment

    async def list_payments(self) -> list[Payment]:
        return list(self.payments.values())
