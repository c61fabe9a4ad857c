"""Budget sharing between the devices of a site, with real Lightning payments.

Requester: asks each site peer (direct stream, :data:`SHARE_REQUEST_PROTOCOL`)
with a market ``ShareRequest``; peers with headroom answer a ``ShareOffer``
(:func:`p2pgrid.market.offer_amount`); it accepts the best offers
(:func:`p2pgrid.market.accept_offers`) and sends each giver a
:class:`~p2pgrid.agent.messages.ShareInvoice` for the granted amount
(:data:`SHARE_PAY_PROTOCOL`). The invoice's description is
:func:`~p2pgrid.agent.payguard.share_memo` of (request id, requester, giver,
amount): it binds the invoice to this request and grant.

Giver: checks the invoice against its offer (amount), its headroom, the
requester's Lightning node (destination), the binding (description) and the
expiry, then pays it through its :class:`~p2pgrid.agent.paymaster.Paymaster`
(intent first) and records a ``share`` entry in the *request's* period whose
memo carries the payment hash, preimage and routing fee (the proof,
:mod:`p2pgrid.ledger.proof`). It answers with a ``ShareReceipt`` holding that
entry; the requester checks the preimage against its invoice and ingests it.
An offer is good for one payment: a retried invoice for the same request is
refused once paid, so a share is never paid twice. A wrong invoice is refused,
the refusal logged, and nothing is paid.

Amounts below :data:`~p2pgrid.agent.payguard.MIN_PAYMENT_MSAT` are not sent: a
request for less is raised to it, smaller offers and grants are not made.
A requester whose giver did not answer looks its invoice up before cancelling
it: an invoice that was paid meanwhile is kept (and counted), never cancelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from p2pgrid.agent.config import ShareConfig
from p2pgrid.agent.intents import Purpose, PurposeKind
from p2pgrid.agent.messages import ShareInvoice, ShareReceipt
from p2pgrid.agent.payguard import MIN_PAYMENT_MSAT, check_invoice, share_memo
from p2pgrid.agent.paymaster import Paymaster, PayRefused
from p2pgrid.agent.ports import Peers, Wallet
from p2pgrid.errors import RetryableError
from p2pgrid.identity import MAX_DEVICE_INDEX, SiteIdentity
from p2pgrid.ledger import (
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
from p2pgrid.ledger.proof import parse_proof
from p2pgrid.lightning import InvoiceError, InvoiceState, LightningError
from p2pgrid.market import Party, ShareOffer, ShareRequest, accept_offers, offer_amount
from p2pgrid.net import Delivery, PeerMisbehaved, PeerRef, RequestRejected

log = logging.getLogger(__name__)

SHARE_REQUEST_PROTOCOL = "/p2pgrid/1/share/request"
SHARE_PAY_PROTOCOL = "/p2pgrid/1/share/pay"


def grants(need_msat: int, offers: Mapping[Party, int]) -> dict[Party, int]:
    """The market's acceptance, with no grant below the smallest payment: a
    last part below it is raised to it where the offer allows, else dropped."""
    out = {}
    for giver, amount in accept_offers(need_msat, offers).items():
        if amount < MIN_PAYMENT_MSAT and offers[giver] >= MIN_PAYMENT_MSAT:
            amount = MIN_PAYMENT_MSAT
        if amount >= MIN_PAYMENT_MSAT:
            out[giver] = amount
    return out


class ShareDesk:
    """Both sides of budget sharing for one device."""

    def __init__(
        self,
        *,
        me: Party,
        host: Peers,
        node: Wallet,
        paymaster: Paymaster,
        store: LogStore,
        writer: LogWriter,
        headroom: Callable[[int], Awaitable[int]],
        name: str,
        nodes: Mapping[Party, str],
        owner_sites: Mapping[str, SiteIdentity] | None = None,
        now: Callable[[], float] = time.time,
        config: ShareConfig | None = None,
    ) -> None:
        """``nodes``: the Lightning node (pubkey) of each device this one deals
        with, where its shares must go (read at each payment)."""
        self.config = config if config is not None else ShareConfig()
        self.me = me
        self.host = host
        self.node = node
        self.paymaster = paymaster
        self.store = store
        self.writer = writer
        self._headroom = headroom
        self.name = name
        self.nodes = nodes
        #: The owner's sites by site id (this one included): shares may cross them.
        self.owner_sites = dict(owner_sites or {})
        self._now = now
        self._offers: dict[bytes, tuple[Party, int, int]] = {}  # id -> (requester, msat, period)
        #: One payment at a time (headroom is checked per payment); the agent holds
        #: it while it closes a period, so no share of that period is in flight.
        self.giving = asyncio.Lock()
        self.refused: list[str] = []  # why invoices were refused (for tests and reports)

    def install(self) -> None:
        self.host.handle(SHARE_REQUEST_PROTOCOL, self._on_request)
        self.host.handle(SHARE_PAY_PROTOCOL, self._on_pay)

    # -- requester ---------------------------------------------------------------

    async def ask(self, need_msat: int, period: int, peers: list[PeerRef]) -> int:
        """Ask ``peers`` for ``need_msat`` (at least the smallest payment) in
        ``period``; returns what was received and logged."""
        need_msat = max(need_msat, MIN_PAYMENT_MSAT)
        wait_s = self.config.offer_timeout_s
        deadline_ms = int(self._now() * 1000 + wait_s * 1000)
        request = ShareRequest(self.me, period, need_msat, deadline_ms)
        offers: dict[Party, int] = {}
        by_party = {Party(p.site_id, p.device_index): p for p in peers}
        for party, peer in by_party.items():
            try:
                reply = await self.host.request(
                    peer.peer_id,
                    SHARE_REQUEST_PROTOCOL,
                    request,
                    timeout_s=self.config.offer_timeout_s,
                )
                offer = reply.decode(ShareOffer)
            except (RetryableError, RequestRejected) as exc:
                log.info("[%s] no offer from device %d: %s", self.name, peer.device_index, exc)
                continue
            if offer.request_id == request.id and offer.giver == party:
                offers[party] = offer.amount_msat
        received = 0
        for giver, amount in grants(need_msat, offers).items():
            received += await self._collect(request, by_party[giver], giver, amount)
        log.info(
            "[%s] asked %d msat in period %d: %d offer(s), received %d msat",
            self.name,
            need_msat,
            period,
            len(offers),
            received,
        )
        return received

    async def _collect(
        self, request: ShareRequest, giver: PeerRef, party: Party, amount: int
    ) -> int:
        memo = share_memo(request.id, self.me, party, amount)
        invoice = await self.node.add_invoice(amount, memo)
        try:
            reply = await self.host.request(
                giver.peer_id,
                SHARE_PAY_PROTOCOL,
                ShareInvoice(request.id, amount, invoice.payment_request),
                timeout_s=self.config.pay_timeout_s,
            )
            receipt = reply.decode(ShareReceipt)
        except (RetryableError, RequestRejected) as exc:
            log.warning("[%s] device %d did not pay: %s", self.name, giver.device_index, exc)
            return await self._unpaid(invoice.payment_hash, amount)
        if hashlib.sha256(receipt.preimage).hexdigest() != invoice.payment_hash:
            log.warning("[%s] device %d sent a wrong preimage", self.name, giver.device_index)
            return await self._unpaid(invoice.payment_hash, amount)
        if giver.site_id != self.me.site_id:  # another site: log the credit with its evidence
            try:
                evidence = SiteShareIn(receipt.share_entry.hex())
                await self.writer.append(
                    evidence, period=request.period, timestamp_ms=int(self._now() * 1000)
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

    async def _unpaid(self, payment_hash: str, amount: int) -> int:
        """The giver's answer did not prove payment: cancel the invoice, unless lnd
        says it was paid meanwhile (then the giver's entry comes by replication)."""
        try:
            state = (await self.node.lookup_invoice(payment_hash)).state
            if state is InvoiceState.SETTLED:
                log.warning(
                    "[%s] share invoice %s... was paid anyway", self.name, payment_hash[:16]
                )
                return amount
            await self.node.cancel_invoice(payment_hash)
        except LightningError as exc:  # settled in between, or lnd unreachable: report
            log.warning("[%s] could not cancel %s...: %s", self.name, payment_hash[:16], exc)
        return 0

    # -- giver -------------------------------------------------------------------

    async def _on_request(self, delivery: Delivery) -> ShareOffer:
        request = delivery.decode(ShareRequest)
        sender = Party(delivery.site_id, delivery.device_index)
        if delivery.device_index > MAX_DEVICE_INDEX:  # the utility's or owner's host
            raise RequestRejected("only devices share")
        if request.requester != sender or request.requester == self.me:
            raise RequestRejected("the request names another device than its sender")
        if sender.site_id != self.me.site_id and sender.site_id not in self.owner_sites:
            raise RequestRejected("not a site of this owner")
        amount = offer_amount(request.amount_msat, await self._headroom(request.period))
        if amount < MIN_PAYMENT_MSAT:
            raise RequestRejected("no headroom (or less than the smallest payment)")
        self._offers[request.id] = (sender, amount, request.period)
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

    def _refuse(self, requester: Party, why: str) -> RequestRejected:
        self.refused.append(why)
        log.warning(
            "[%s] refused to pay device %d of site %s: %s",
            self.name,
            requester.device,
            requester.site_id,
            why,
        )
        return RequestRejected(why)

    async def _on_pay(self, delivery: Delivery) -> ShareReceipt:
        ask = delivery.decode(ShareInvoice)
        requester = Party(delivery.site_id, delivery.device_index)
        async with self.giving:
            offered = self._offers.get(ask.request_id)
            if offered is None or offered[0] != requester:
                raise self._refuse(requester, "no open offer for this request (or already paid)")
            _, offered_msat, period = offered
            if not MIN_PAYMENT_MSAT <= ask.amount_msat <= offered_msat:
                raise self._refuse(
                    requester, f"asks {ask.amount_msat} msat, offered {offered_msat}"
                )
            if ask.amount_msat > await self._headroom(period):
                raise self._refuse(requester, "headroom is gone")
            try:
                decoded = await self.node.decode_invoice(ask.bolt11)
            except InvoiceError as exc:
                raise self._refuse(requester, f"undecodable invoice: {exc}") from exc
            problem = check_invoice(
                decoded,
                destination=self.nodes.get(requester),
                amount_msat=ask.amount_msat,
                description=share_memo(ask.request_id, requester, self.me, ask.amount_msat),
                now=self._now(),
            )
            if problem is not None:
                raise self._refuse(requester, problem)
            if await self._paid_before(decoded.payment_hash):
                raise PeerMisbehaved("this invoice was paid before", reason="share:invoice_reused")
            del self._offers[ask.request_id]  # one payment per offer, even if it fails
            kind, to_site = PurposeKind.SHARE, ""
            if requester.site_id != self.me.site_id:  # network to network: by site hash
                kind = PurposeKind.SITE_SHARE
                to_site = site_hash(self.owner_sites[requester.site_id]).hex()
            purpose = Purpose(
                kind,
                ask.amount_msat,
                device=requester.device,
                to_site=to_site,
                reference=ask.request_id.hex(),
            )
            try:
                paid = await self.paymaster.pay(
                    ask.bolt11,
                    decoded.payment_hash,
                    period=period,
                    purpose=purpose,
                    fee_limit_msat=self.config.fee_limit_msat,
                )
            except PayRefused as exc:
                raise RequestRejected(str(exc)) from exc
        log.info(
            "[%s] shared %d msat with device %d of site %s (fee %d msat)",
            self.name,
            ask.amount_msat,
            requester.device,
            requester.site_id,
            paid.payment.fee_msat,
        )
        if len(paid.entries) != 1:
            raise RequestRejected("paid, but the share entry was logged before")
        return ShareReceipt(ask.request_id, paid.preimage, paid.entries[0].raw)
