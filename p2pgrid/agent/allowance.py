"""Selling leftover allowance near a period's end, paid with real Lightning sats.

A device's allocation is a cap per device and period. In the last
``share.leftover_window`` intervals of a period, a device whose forecast
leaves it headroom sells part of it (its :class:`~p2pgrid.market.LeftoverPolicy`:
``floor(headroom x f)``, :func:`p2pgrid.market.leftover_msat`) to a device of
its site whose forecast is short; the buyer pays a share of face value with
sats of its own node, outside its budget (docs/market.md, section 2.9).

Buyer (:meth:`AllowanceDesk.buy`): sends each site peer in turn an
:class:`~p2pgrid.agent.messages.AllowanceRequest` for what it still lacks and
its highest price (``share.allowance_max_price_pct``). It pays an
:class:`~p2pgrid.agent.messages.AllowanceOffer` only if the offer is the
market's deal (:func:`p2pgrid.market.allowance_deal`: no more than asked, at
most its price, ``price = ceil(allowance x pct / 100)``) and the invoice pays
exactly that price to the seller's node, is described by
:func:`~p2pgrid.agent.payguard.allowance_memo` of (request, seller, buyer,
allowance, price, period), is not about to expire and was never paid before.
It pays through its :class:`~p2pgrid.agent.paymaster.Paymaster` (intent first,
then a ``payment`` entry), sends the preimage
(:class:`~p2pgrid.agent.messages.AllowancePaid`) and ingests the seller's
signed ``allowance_sale`` from the answer.

Seller: answers a request of a device of its site with the deal of what it
offers now less what open offers hold, and an invoice of its lnd for the price
(its own random preimage); a second request with the same id gets the same
offer. Each offer is recorded (a
:class:`~p2pgrid.agent.intents.Receivable` in the agent's intents file, with
its preimage) before it is sent, and loaded again by a restarted seller
(:meth:`AllowanceDesk.restore`). Once the buyer says it paid (or when the
seller closes the period, :meth:`AllowanceDesk.close`) it looks the invoice up:
settled for the price, it logs the ``allowance_sale`` (buyer, allowance, price,
hash, preimage) in the request's period, once (a sale of that hash already in
the log is not written again); an offer still unpaid at the close is cancelled
on lnd, so it cannot be paid after the period's carry-over. So a seller killed
with an offer out, paid while it was down or between the payment and its
entry, logs the sale when it next closes that period. An offer whose lnd did
not answer at its period's close stays open (and recorded) until a later
close, which resolves every open offer of its period or an earlier one: the
sale logged in the offer's period if the invoice was paid, else the invoice
cancelled.

Two light devices of one site node (:mod:`p2pgrid.agent.sitewallet`) do not
trade allowance: lnd cannot pay itself and allowance is no internal transfer, so
a buyer does not ask a seller on its own node, and a seller refuses such a
request before it makes an invoice (an offer that can never be paid would hold
its leftover until the period's close).

Across the owner's other sites: not sold (an ``allowance_sale`` names its buyer
by index in the seller's site).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping

from p2pgrid.agent.config import ShareConfig
from p2pgrid.agent.intents import (
    IntentError,
    Purpose,
    PurposeKind,
    Receivable,
    ReceivableState,
)
from p2pgrid.agent.messages import (
    AllowanceOffer,
    AllowancePaid,
    AllowanceReceipt,
    AllowanceRequest,
)
from p2pgrid.agent.payguard import MIN_PAYMENT_MSAT, allowance_memo, check_invoice
from p2pgrid.agent.paymaster import Paymaster, PayRefused
from p2pgrid.agent.ports import Peers, Wallet
from p2pgrid.errors import RetryableError
from p2pgrid.identity import MAX_DEVICE_INDEX
from p2pgrid.ledger import (
    AllowanceSale,
    Author,
    Entry,
    LogStore,
    LogWriter,
    MalformedError,
    Outcome,
    decode_entry,
    paid_hashes,
)
from p2pgrid.lightning import InvoiceError, InvoiceState, LightningError
from p2pgrid.market import MessageError, Party, allowance_deal, allowance_price_msat
from p2pgrid.net import Delivery, PeerRef, RequestRejected

log = logging.getLogger(__name__)

ALLOWANCE_REQUEST_PROTOCOL = "/p2pgrid/1/allowance/request"
ALLOWANCE_PAID_PROTOCOL = "/p2pgrid/1/allowance/paid"


@dataclasses.dataclass(frozen=True, slots=True)
class _Open:
    """A seller's offer whose invoice is not logged as sold yet."""

    buyer: Party
    period: int
    offer: AllowanceOffer
    preimage: bytes

    @property
    def payment_hash(self) -> str:
        return hashlib.sha256(self.preimage).hexdigest()

    def receivable(self) -> Receivable:
        return Receivable(
            self.payment_hash,
            PurposeKind.ALLOWANCE,
            self.period,
            (self.buyer.site_id, self.buyer.device),
            self.offer.encode(),
            self.preimage,
        )

    @classmethod
    def of(cls, receivable: Receivable) -> _Open:
        try:
            offer = AllowanceOffer.decode(receivable.offer)
            buyer = Party(*receivable.payer)
        except MessageError as exc:
            raise IntentError(f"unreadable allowance offer {receivable.payment_hash[:16]}") from exc
        return cls(buyer, receivable.period, offer, receivable.preimage)


class AllowanceDesk:
    """Both sides of leftover allowance sales for one device."""

    def __init__(
        self,
        *,
        me: Party,
        host: Peers,
        node: Wallet,
        paymaster: Paymaster,
        leftover: Callable[[int], Awaitable[int]],
        name: str,
        nodes: Mapping[Party, str],
        announce: Callable[[], Awaitable[None]],
        now: Callable[[], float] = time.time,
        config: ShareConfig | None = None,
    ) -> None:
        """``leftover(period)``: what this device offers of its allowance now
        (0 unless its policy sells and the period's end is near); ``nodes``: the
        Lightning node of each device it deals with; ``announce`` publishes the
        entries this device wrote."""
        self.config = config if config is not None else ShareConfig()
        self.me = me
        self.host = host
        self.node = node
        self.paymaster = paymaster
        self.writer: LogWriter = paymaster.writer
        self.store: LogStore = paymaster.writer.store
        self.intents = paymaster.intents
        self._leftover = leftover
        self.name = name
        self.nodes = nodes
        self._announce = announce
        self._now = now
        self._open: dict[bytes, _Open] = {}  # request id -> open offer
        self._sold: dict[bytes, bytes] = {}  # request id -> the raw allowance_sale entry
        self._closed: set[int] = set()  # periods closed: no more offers of them
        self._restored = False  # the open offers of the intents file are loaded
        #: Offers are made, logged and closed one at a time.
        self.selling = asyncio.Lock()
        self.refused: list[str] = []  # why offers were refused (buyer) or requests (seller)
        self.bought_msat = 0  # allowance bought, with the seller's entry in the log
        self.sold_msat = 0  # allowance sold and logged

    def install(self) -> None:
        self.host.handle(ALLOWANCE_REQUEST_PROTOCOL, self._on_request)
        self.host.handle(ALLOWANCE_PAID_PROTOCOL, self._on_paid)

    async def restore(self) -> None:
        """Load the open offers recorded before a restart (once; before the first
        request or close is served)."""
        async with self.selling:
            await self._restore()

    async def _restore(self) -> None:
        if self._restored:
            return
        for receivable in await self.intents.receivables(PurposeKind.ALLOWANCE):
            held = _Open.of(receivable)
            self._open[held.offer.request_id] = held
            log.info(
                "[%s] allowance offer %s... to device %d of period %d is open (restored)",
                self.name,
                held.payment_hash[:16],
                held.buyer.device,
                held.period,
            )
        self._restored = True

    def held(self, period: int) -> int:
        """Allowance of ``period`` that open offers hold (not to be given or sold again)."""
        return sum(o.offer.allowance_msat for o in self._open.values() if o.period == period)

    # -- buyer -------------------------------------------------------------------

    async def buy(self, need_msat: int, period: int, peers: list[PeerRef]) -> int:
        """Buy up to ``need_msat`` of allowance of ``period`` from ``peers`` (lowest
        device first); returns the allowance bought and logged by its sellers."""
        if self.config.allowance_max_price_pct == 0:
            return 0
        got = 0
        for peer in sorted(peers, key=lambda p: (p.device_index, p.site_id)):
            if need_msat - got <= 0:
                break
            if peer.site_id != self.me.site_id or peer.device_index > MAX_DEVICE_INDEX:
                continue
            if self._same_node(Party(peer.site_id, peer.device_index)):
                continue  # its invoice would be on this node: never payable (see _same_node)
            deadline_ms = int((self._now() + self.config.offer_timeout_s) * 1000)
            request = AllowanceRequest(
                self.me, period, need_msat - got, self.config.allowance_max_price_pct, deadline_ms
            )
            got += await self._buy_from(peer, request)
        if got:
            log.info("[%s] bought %d msat of allowance in period %d", self.name, got, period)
        return got

    def _same_node(self, other: Party) -> bool:
        """Whether ``other`` is paid on this device's own Lightning node (two
        light devices of one site node): lnd cannot pay itself and allowance is
        no internal transfer (the seller logs a sale only for an invoice SETTLED
        on lnd, :mod:`p2pgrid.agent.sitewallet`), so they never trade it."""
        mine = self.nodes.get(self.me)
        return mine is not None and self.nodes.get(other) == mine

    def _refuse(self, seller: int, why: str) -> int:
        self.refused.append(why)
        log.warning("[%s] no allowance from device %d: %s", self.name, seller, why)
        return 0

    def _offer_problem(
        self, offer: AllowanceOffer, request: AllowanceRequest, seller: Party
    ) -> str | None:
        """Why ``offer`` is not the market's deal for ``request``, or None."""
        if offer.request_id != request.id or offer.seller != seller:
            return "the offer answers another request or names another seller"
        if offer.allowance_msat > request.amount_msat:
            return f"offers {offer.allowance_msat} msat, {request.amount_msat} were asked"
        if offer.price_pct > request.max_price_pct:
            return f"asks {offer.price_pct} % of face value, at most {request.max_price_pct}"
        if offer.price_msat != allowance_price_msat(offer.allowance_msat, offer.price_pct):
            return f"price {offer.price_msat} msat is not {offer.price_pct} % of the allowance"
        return None

    async def _buy_from(self, peer: PeerRef, request: AllowanceRequest) -> int:
        seller = Party(peer.site_id, peer.device_index)
        try:
            reply = await self.host.request(
                peer.peer_id,
                ALLOWANCE_REQUEST_PROTOCOL,
                request,
                timeout_s=self.config.offer_timeout_s,
            )
            offer = reply.decode(AllowanceOffer)
        except (RetryableError, RequestRejected) as exc:
            log.info("[%s] no allowance offer from device %d: %s", self.name, seller.device, exc)
            return 0
        problem = self._offer_problem(offer, request, seller)
        if problem is not None:
            return self._refuse(seller.device, problem)
        try:
            decoded = await self.node.decode_invoice(offer.bolt11)
        except InvoiceError as exc:
            return self._refuse(seller.device, f"undecodable invoice: {exc}")
        memo = allowance_memo(
            request.id,
            seller,
            self.me,
            offer.allowance_msat,
            offer.price_msat,
            period=request.period,
        )
        problem = check_invoice(
            decoded,
            destination=self.nodes.get(seller),
            amount_msat=offer.price_msat,
            description=memo,
            now=self._now(),
        )
        if problem is not None:
            return self._refuse(seller.device, problem)
        if bytes.fromhex(decoded.payment_hash) in paid_hashes(await self.store.entries()):
            self.host.report_misbehaviour(peer.peer_id, "allowance:invoice_reused")
            return self._refuse(seller.device, "the invoice was paid before")
        purpose = Purpose(
            PurposeKind.ALLOWANCE,
            offer.price_msat,
            device=seller.device,
            reference=request.id.hex(),
        )
        try:
            paid = await self.paymaster.pay(
                offer.bolt11,
                decoded.payment_hash,
                period=request.period,
                purpose=purpose,
                fee_limit_msat=self.config.fee_limit_msat,
            )
        except PayRefused as exc:
            log.warning("[%s] could not pay device %d: %s", self.name, seller.device, exc)
            return 0
        await self._announce()
        log.info(
            "[%s] paid %d msat (fee %d) for %d msat of allowance of device %d",
            self.name,
            offer.price_msat,
            paid.payment.fee_msat,
            offer.allowance_msat,
            seller.device,
        )
        return await self._receipt(peer, request, offer, paid.preimage)

    async def _receipt(
        self, peer: PeerRef, request: AllowanceRequest, offer: AllowanceOffer, preimage: bytes
    ) -> int:
        """Tell the seller it was paid and take its ``allowance_sale`` into the log
        at once; without it (the seller away), its entry comes by replication
        once it closes the period."""
        try:
            reply = await self.host.request(
                peer.peer_id,
                ALLOWANCE_PAID_PROTOCOL,
                AllowancePaid(request.id, preimage),
                timeout_s=self.config.pay_timeout_s,
            )
            receipt = reply.decode(AllowanceReceipt)
            entry = decode_entry(receipt.sale_entry, self.store.membership.site_hash)
        except (RetryableError, RequestRejected, MalformedError) as exc:
            log.warning("[%s] paid device %d, no receipt: %s", self.name, peer.device_index, exc)
            return 0
        body = entry.body
        if (
            entry.author != Author.device(offer.seller.device)
            or not isinstance(body, AllowanceSale)
            or body.payment_hash != hashlib.sha256(preimage).digest()
            or (body.buyer, body.allowance_msat, body.price_msat)
            != (self.me.device, offer.allowance_msat, offer.price_msat)
            or entry.period != request.period
        ):
            return self._refuse(peer.device_index, "the receipt is not the sale paid for")
        report = await self.store.ingest(receipt.sale_entry)
        outcome = report.results[0].outcome
        if outcome not in (Outcome.STORED, Outcome.DUPLICATE, Outcome.PENDING):
            log.warning("[%s] the allowance_sale was refused: %s", self.name, report.results[0])
            return 0
        self.bought_msat += body.allowance_msat
        return body.allowance_msat

    # -- seller ------------------------------------------------------------------

    def _reject(self, buyer: Party, why: str) -> RequestRejected:
        self.refused.append(why)
        log.info("[%s] no allowance for device %d: %s", self.name, buyer.device, why)
        return RequestRejected(why)

    async def _on_request(self, delivery: Delivery) -> AllowanceOffer:
        request = delivery.decode(AllowanceRequest)
        buyer = Party(delivery.site_id, delivery.device_index)
        if delivery.device_index > MAX_DEVICE_INDEX or buyer.site_id != self.me.site_id:
            raise self._reject(buyer, "only devices of this site buy allowance")
        if request.buyer != buyer or buyer == self.me:
            raise self._reject(buyer, "the request names another device than its sender")
        if self._same_node(buyer):  # an offer never payable would hold leftover until the close
            raise self._reject(buyer, "the buyer is on the same Lightning node")
        async with self.selling:
            await self._restore()
            held = self._open.get(request.id)
            if held is not None:  # a retried request: the same offer
                return held.offer
            if request.id in self._sold:
                raise self._reject(buyer, "this request was sold already")
            if request.period in self._closed:
                raise self._reject(buyer, f"period {request.period} is closed")
            if self._now() * 1000 >= request.deadline_ms:
                raise self._reject(buyer, "the request's deadline has passed")
            offered = max(0, await self._leftover(request.period) - self.held(request.period))
            deal = allowance_deal(
                offered_msat=offered,
                requested_msat=request.amount_msat,
                price_pct=self.config.leftover_price_pct,
                max_price_pct=request.max_price_pct,
            )
            if deal is None:
                raise self._reject(buyer, "no leftover allowance for sale at that price")
            if deal.price_msat < MIN_PAYMENT_MSAT:
                raise self._reject(buyer, f"{deal.price_msat} msat is below the smallest payment")
            preimage = secrets.token_bytes(32)
            memo = allowance_memo(
                request.id,
                self.me,
                buyer,
                deal.allowance_msat,
                deal.price_msat,
                period=request.period,
            )
            invoice = await self.node.add_invoice(
                deal.price_msat, memo, expiry_s=self.config.allowance_expiry_s, preimage=preimage
            )
            offer = AllowanceOffer(
                request.id,
                self.me,
                deal.allowance_msat,
                deal.price_pct,
                deal.price_msat,
                invoice.payment_request,
            )
            opened = _Open(buyer, request.period, offer, preimage)
            await self.intents.expect(opened.receivable())  # before the invoice leaves
            self._open[request.id] = opened
        log.info(
            "[%s] offered %d msat of allowance to device %d for %d msat",
            self.name,
            deal.allowance_msat,
            buyer.device,
            deal.price_msat,
        )
        return offer

    async def _on_paid(self, delivery: Delivery) -> AllowanceReceipt:
        paid = delivery.decode(AllowancePaid)
        buyer = Party(delivery.site_id, delivery.device_index)
        async with self.selling:
            await self._restore()
            sold = self._sold.get(paid.request_id)
            if sold is None:  # sold before a restart?
                logged = await self._logged_sale(hashlib.sha256(paid.preimage).digest())
                if logged is not None and self._buyer_of(logged) == buyer:
                    sold = logged.raw
            if sold is not None:
                return AllowanceReceipt(paid.request_id, sold)
            held = self._open.get(paid.request_id)
            if held is None or held.buyer != buyer:
                raise self._reject(buyer, "no open allowance offer for this request")
            if paid.preimage != held.preimage:
                raise self._reject(buyer, "not the preimage of the offer's invoice")
            entry = await self._log_if_settled(paid.request_id, held)
        if entry is None:
            raise self._reject(buyer, "the offer's invoice is not paid")
        return AllowanceReceipt(paid.request_id, entry.raw)

    async def _log_if_settled(self, request_id: bytes, held: _Open) -> Entry | None:
        """If the offer's invoice is settled for its price, log the sale (once)."""
        invoice = await self.node.lookup_invoice(held.payment_hash)
        if invoice.state is not InvoiceState.SETTLED:
            return None
        offer = held.offer
        if invoice.amt_paid_msat != offer.price_msat:  # lnd pays at least the amount
            log.warning(
                "[%s] allowance invoice %s... paid %d msat, priced %d",
                self.name,
                held.payment_hash[:16],
                invoice.amt_paid_msat,
                offer.price_msat,
            )
        body = AllowanceSale(
            held.buyer.device,
            offer.allowance_msat,
            offer.price_msat,
            bytes.fromhex(held.payment_hash),
            held.preimage,
        )
        entry = await self._logged_sale(body.payment_hash)  # logged, then killed?
        if entry is None:
            entry = await self.writer.append(
                body, period=held.period, timestamp_ms=int(self._now() * 1000)
            )
        await self.intents.end_receivable(held.payment_hash, ReceivableState.SOLD)
        del self._open[request_id]
        self._sold[request_id] = entry.raw
        self.sold_msat += offer.allowance_msat
        await self._announce()
        log.info(
            "[%s] sold %d msat of allowance to device %d for %d msat",
            self.name,
            offer.allowance_msat,
            held.buyer.device,
            offer.price_msat,
        )
        return entry

    async def _logged_sale(self, payment_hash: bytes) -> Entry | None:
        """This device's ``allowance_sale`` of ``payment_hash``, if in the log."""
        me = Author.device(self.me.device)
        for entry in await self.store.entries(kinds=(AllowanceSale.KIND,), author=me):
            if isinstance(entry.body, AllowanceSale) and entry.body.payment_hash == payment_hash:
                return entry
        return None

    def _buyer_of(self, sale: Entry) -> Party | None:
        body = sale.body
        return Party(self.me.site_id, body.buyer) if isinstance(body, AllowanceSale) else None

    async def close(self, period: int) -> None:
        """Before ``period``'s carry-over: log each open offer of it whose invoice
        was paid, and cancel the others on lnd (a payment racing the cancel
        settles first, and is then logged). An lnd that does not answer leaves
        the offer open (its invoice expires); so does every later close resolve
        the offers of earlier periods still open (left open at their close, or
        restored from the intents file): a paid one's sale is logged in its own
        period, the others are cancelled. Then the ended offers of the periods
        before ``period`` leave the intents file."""
        async with self.selling:
            await self._restore()
            self._closed.add(period)
            for request_id, held in list(self._open.items()):
                if held.period > period:
                    continue
                if held.period < period:
                    log.info(
                        "[%s] allowance offer %s... of period %d still open at the close of %d",
                        self.name,
                        held.payment_hash[:16],
                        held.period,
                        period,
                    )
                try:
                    if await self._log_if_settled(request_id, held) is not None:
                        continue
                    await self.node.cancel_invoice(held.payment_hash)
                except LightningError as exc:
                    try:  # refused because it settled meanwhile?
                        if await self._log_if_settled(request_id, held) is not None:
                            continue
                    except LightningError:
                        pass
                    log.warning(
                        "[%s] allowance offer %s... left open: %s",
                        self.name,
                        held.payment_hash[:16],
                        exc,
                    )
                    continue
                await self.intents.end_receivable(held.payment_hash, ReceivableState.CANCELLED)
                del self._open[request_id]
                log.info(
                    "[%s] allowance offer to device %d of period %d cancelled",
                    self.name,
                    held.buyer.device,
                    held.period,
                )
            # The ended offers of earlier periods are of no more use (those of
            # this one are kept a period, for the record).
            await self.intents.prune_receivables(before=period)
