"""Budget sharing between the devices of a site, with real Lightning payments.

Requester: asks each site peer (direct stream, :data:`SHARE_REQUEST_PROTOCOL`)
with a market ``ShareRequest``; peers with headroom answer a ``ShareOffer``
(:func:`p2pgrid.market.offer_amount`); it accepts the best offers
(:func:`p2pgrid.market.accept_offers`) and sends each giver a
:class:`~p2pgrid.agent.messages.ShareInvoice` for the granted amount
(:data:`SHARE_PAY_PROTOCOL`).

Giver: checks the invoice against its offer and its current headroom, pays it
over Lightning, records a ``share`` entry whose memo carries the payment hash
and preimage (the proof), and answers with a ``ShareReceipt`` holding that
entry (the memo also names the routing fee, so the log accounts for every msat
that left the giver's channels). The requester checks the preimage against its
invoice and ingests the entry. An offer is good for one payment: a retried invoice for the same
request is refused once paid, so a share is never paid twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from p2pgrid.agent.messages import ShareInvoice, ShareReceipt
from p2pgrid.errors import P2PGridError, RetryableError
from p2pgrid.identity import SiteIdentity
from p2pgrid.ledger import (
    Body,
    LogStore,
    LogWriter,
    MalformedError,
    Outcome,
    Payment,
    Share,
    SiteShare,
    SiteShareIn,
    site_hash,
)
from p2pgrid.lightning import LightningError, LightningNode, PaymentFailed
from p2pgrid.market import Party, ShareOffer, ShareRequest, accept_offers, offer_amount
from p2pgrid.net import Delivery, PeerHost, PeerMisbehaved, PeerRef, RequestRejected

log = logging.getLogger(__name__)

SHARE_REQUEST_PROTOCOL = "/p2pgrid/1/share/request"
SHARE_PAY_PROTOCOL = "/p2pgrid/1/share/pay"
OFFER_TIMEOUT_S = 5.0
PAY_TIMEOUT_S = 60.0
#: Routing fee a giver accepts (a device -> device payment takes two hops).
SHARE_FEE_LIMIT_MSAT = 20_000


@dataclasses.dataclass(frozen=True, slots=True)
class ShareProof:
    """What a ``share`` entry's memo proves: the Lightning payment behind it."""

    payment_hash: bytes
    preimage: bytes
    fee_msat: int  # routing fee the giver paid on top of the amount


def proof_memo(payment_hash: bytes, preimage: bytes, fee_msat: int) -> str:
    return f"ln {payment_hash.hex()} {preimage.hex()} {fee_msat}"


def parse_proof(memo: str) -> ShareProof | None:
    """The proof in a share memo, if it carries a valid one."""
    parts = memo.split()
    if len(parts) != 4 or parts[0] != "ln":
        return None
    try:
        payment_hash, preimage, fee = (
            bytes.fromhex(parts[1]),
            bytes.fromhex(parts[2]),
            int(parts[3]),
        )
    except ValueError:
        return None
    if hashlib.sha256(preimage).digest() != payment_hash or fee < 0:
        return None
    return ShareProof(payment_hash, preimage, fee)


class ShareDesk:
    """Both sides of budget sharing for one device."""

    def __init__(
        self,
        *,
        me: Party,
        host: PeerHost,
        node: LightningNode,
        store: LogStore,
        writer: LogWriter,
        headroom: Callable[[int], Awaitable[int]],
        current_period: Callable[[], int],
        name: str,
        owner_sites: Mapping[str, SiteIdentity] | None = None,
    ) -> None:
        self.me = me
        self.host = host
        self.node = node
        self.store = store
        self.writer = writer
        self._headroom = headroom
        self._current_period = current_period
        self.name = name
        #: The owner's sites by site id (this one included): shares may cross them.
        self.owner_sites = dict(owner_sites or {})
        self._offers: dict[bytes, tuple[Party, int]] = {}  # request id -> (requester, msat)
        self._giving = asyncio.Lock()  # one payment at a time: headroom is checked per pay

    def install(self) -> None:
        self.host.handle(SHARE_REQUEST_PROTOCOL, self._on_request)
        self.host.handle(SHARE_PAY_PROTOCOL, self._on_pay)

    # -- requester ---------------------------------------------------------------

    async def ask(self, need_msat: int, period: int, peers: list[PeerRef]) -> int:
        """Ask ``peers`` for ``need_msat``; returns what was received and logged."""
        deadline_ms = int(time.time() * 1000 + OFFER_TIMEOUT_S * 1000)
        request = ShareRequest(self.me, period, need_msat, deadline_ms)
        offers: dict[Party, int] = {}
        by_party = {Party(p.site_id, p.device_index): p for p in peers}
        for party, peer in by_party.items():
            try:
                reply = await self.host.request(
                    peer.peer_id, SHARE_REQUEST_PROTOCOL, request, timeout_s=OFFER_TIMEOUT_S
                )
                offer = reply.decode(ShareOffer)
            except (RetryableError, RequestRejected) as exc:
                log.info("[%s] no offer from device %d: %s", self.name, peer.device_index, exc)
                continue
            if offer.request_id == request.id and offer.giver == party:
                offers[party] = offer.amount_msat
        received = 0
        for giver, amount in accept_offers(need_msat, offers).items():
            received += await self._collect(request, by_party[giver], amount)
        log.info(
            "[%s] asked %d msat in period %d: %d offer(s), received %d msat",
            self.name,
            need_msat,
            period,
            len(offers),
            received,
        )
        return received

    async def _collect(self, request: ShareRequest, giver: PeerRef, amount: int) -> int:
        invoice = await self.node.add_invoice(amount, f"p2pgrid share {request.id.hex()[:16]}")
        try:
            reply = await self.host.request(
                giver.peer_id,
                SHARE_PAY_PROTOCOL,
                ShareInvoice(request.id, amount, invoice.payment_request),
                timeout_s=PAY_TIMEOUT_S,
            )
            receipt = reply.decode(ShareReceipt)
        except (RetryableError, RequestRejected) as exc:
            log.warning("[%s] device %d did not pay: %s", self.name, giver.device_index, exc)
            try:
                await self.node.cancel_invoice(invoice.payment_hash)
            except LightningError as cancel:  # e.g. settled: it paid, then refused to say so
                log.warning(
                    "[%s] invoice %s of device %d not cancelled: %s",
                    self.name,
                    invoice.payment_hash[:16],
                    giver.device_index,
                    cancel,
                )
            return 0
        if hashlib.sha256(receipt.preimage).hexdigest() != invoice.payment_hash:
            log.warning("[%s] device %d sent a wrong preimage", self.name, giver.device_index)
            return 0
        if giver.site_id != self.me.site_id:  # another site: log the credit with its evidence
            try:
                evidence = SiteShareIn(receipt.share_entry.hex())
                await self.writer.append(
                    evidence, period=self._current_period(), timestamp_ms=int(time.time() * 1000)
                )
            except MalformedError as exc:
                # Paid, but the giver's entry cannot be our evidence: its own log still
                # debits it (from what it knows); we credit nothing we cannot prove.
                log.warning(
                    "[%s] device %d paid invoice %s but its receipt is unusable: %s",
                    self.name,
                    giver.device_index,
                    invoice.payment_hash[:16],
                    exc,
                )
                return 0
            return amount
        report = await self.store.ingest(receipt.share_entry)
        outcome = report.results[0].outcome
        if outcome not in (Outcome.STORED, Outcome.DUPLICATE, Outcome.PENDING):
            log.warning("[%s] the share entry was refused: %s", self.name, report.results[0])
        return amount

    # -- giver -------------------------------------------------------------------

    async def _on_request(self, delivery: Delivery) -> ShareOffer:
        request = delivery.decode(ShareRequest)
        sender = Party(delivery.site_id, delivery.device_index)
        if request.requester != sender or request.requester == self.me:
            raise RequestRejected("the request names another device than its sender")
        if sender.site_id != self.me.site_id and sender.site_id not in self.owner_sites:
            raise RequestRejected("not a site of this owner")
        amount = offer_amount(request.amount_msat, await self._headroom(request.period))
        if amount == 0:
            raise RequestRejected("no headroom")
        self._offers[request.id] = (sender, amount)
        log.info("[%s] offered %d msat to device %d", self.name, amount, delivery.device_index)
        return ShareOffer(request.id, self.me, amount)

    async def _paid_before(self, payment_hash: str) -> bool:
        """Whether this device logged a payment of ``payment_hash`` already. lnd
        answers a second payment of a paid invoice with the first one: logging
        a share for it again would credit one payment twice."""
        for entry in await self.store.entries():
            if entry.author != self.writer.author:
                continue
            body = entry.body
            if isinstance(body, Payment) and body.payment_hash.hex() == payment_hash:
                return True
            if isinstance(body, Share | SiteShare):
                proof = parse_proof(body.memo)
                if proof is not None and proof.payment_hash.hex() == payment_hash:
                    return True
        return False

    async def _on_pay(self, delivery: Delivery) -> ShareReceipt:
        ask = delivery.decode(ShareInvoice)
        async with self._giving:
            offered = self._offers.get(ask.request_id)
            requester = Party(delivery.site_id, delivery.device_index)
            if offered is None or offered[0] != requester:
                raise RequestRejected("no open offer for this request (or already paid)")
            if ask.amount_msat > offered[1]:
                raise RequestRejected(f"asks {ask.amount_msat} msat, offered {offered[1]}")
            period = self._current_period()
            if ask.amount_msat > await self._headroom(period):
                raise RequestRejected("headroom is gone")
            decoded = await self.node.decode_invoice(ask.bolt11)
            if decoded.amount_msat != ask.amount_msat:
                raise RequestRejected("the invoice amount differs from the grant")
            if await self._paid_before(decoded.payment_hash):
                raise PeerMisbehaved("this invoice was paid before", reason="share:invoice_reused")
            del self._offers[ask.request_id]  # one payment per offer, even if it fails
            try:
                payment = await self.node.pay_invoice(
                    ask.bolt11, fee_limit_msat=SHARE_FEE_LIMIT_MSAT
                )
            except PaymentFailed as exc:
                raise RequestRejected(f"payment failed: {exc.reason}") from exc
            payment_hash = bytes.fromhex(payment.payment_hash)
            preimage = bytes.fromhex(payment.preimage)
            memo = proof_memo(payment_hash, preimage, payment.fee_msat)
            share: Body
            if requester.site_id == self.me.site_id:
                share = Share(to_device=requester.device, amount_msat=ask.amount_msat, memo=memo)
            else:  # network to network: the receiving site is named by its hash
                to_site = site_hash(self.owner_sites[requester.site_id])
                share = SiteShare(to_site, requester.device, ask.amount_msat, memo)
            try:
                # The period may have ended while the payment was in flight: log it
                # in the period it is logged in (the writer refuses going back).
                entry = await self.writer.append(
                    share,
                    period=max(period, self._current_period()),
                    timestamp_ms=int(time.time() * 1000),
                )
            except P2PGridError:
                log.exception("[%s] paid a share but could not log it", self.name)
                raise
        log.info(
            "[%s] shared %d msat with device %d of site %s (fee %d msat)",
            self.name,
            ask.amount_msat,
            requester.device,
            requester.site_id,
            payment.fee_msat,
        )
        return ShareReceipt(ask.request_id, preimage, entry.raw)
