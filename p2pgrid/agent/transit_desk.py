"""Energy bought from producers of neighbouring sites (docs/market.md, section 6.3).

After its own site's pooled round of interval ``i`` (:mod:`p2pgrid.agent.energy`),
a device whose need the round left uncovered may buy from a producer of a
*neighbouring* site (one ``EnergyConfig.trade_sites`` names, whose log
membership the device holds) what that producer's ask of round ``i`` has left:

1. **Request.** The buyer sends the producer a
   :class:`~p2pgrid.agent.messages.SiteTradeRequest` (round, at most its need).
2. **Offer.** The producer, under the lock by which it sells on one book per
   round, takes what its ask has left: the ask's Wh less its trades on the
   book its ``cleared`` entry fixed (none yet: none) less what it invoiced to
   other sites in the round; it answers a
   :class:`~p2pgrid.agent.messages.SiteSaleOffer` with its signed ``order``
   entry, ``w = min(request, left)`` Wh at the ask's price
   (``w x price / 1000`` msat) and an invoice of its lnd described by
   :func:`~p2pgrid.agent.payguard.site_sale_memo`. From then on its own site's
   buyers get only what is left (:meth:`EnergyDesk.sold_across`).
3. **Payment.** The buyer checks everything against the evidence alone: the
   entry is signed by a member of that site, holds an ``Ask`` of this round by
   this producer; ``w`` is at most its need and the ask (less what its replica
   shows bought from that ask already), the amount is exact, the price plus
   the grid fee is below the tariff (else the grid is cheaper), its balance
   covers it, and the invoice pays the producer's node exactly that amount
   with that description, not about to expire, never paid before. It pays
   through the paymaster and logs ``site_sale`` (side BOUGHT, the ``order``
   entry as evidence) and ``payment``.
4. **Receipt.** It hands the producer its signed ``site_sale`` entry in a
   :class:`~p2pgrid.agent.messages.SiteSaleReceipt`; the producer checks it
   (signed by a member of the buyer's site, its own order, its own invoice,
   SETTLED on its lnd for the amount) and logs its ``site_sale`` (side SOLD,
   the buyer's entry as evidence): its proceeds in its site's log, credited by
   every replica that verifies the evidence. A receipt the producer did not
   answer (it was down, or the buyer died between its payment and the receipt:
   a restarted buyer logs the purchase when it resolves its payment intent) is
   handed again once the period closes (:meth:`TransitDesk.hand_receipts`,
   with back-off, until the producer answers or the agent's ``invoice_wait_s``
   has passed); a restarted buyer hands every purchase of the period and the
   one before once more (the producer logs a purchase once: a second receipt
   is answered with the sale it logged).

Every replica checks both sides with :func:`p2pgrid.agent.transit.check_site_sales`.
A wrong offer or receipt is refused (logged, its peer scored) and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from p2pgrid.agent.energy import EnergyDesk
from p2pgrid.agent.intents import Purpose, PurposeKind
from p2pgrid.agent.messages import SiteSaleOffer, SiteSaleReceipt, SiteTradeRequest
from p2pgrid.agent.payguard import MIN_PAYMENT_MSAT, check_invoice, site_sale_memo
from p2pgrid.agent.paymaster import PayRefused
from p2pgrid.agent.rounds import order_of, round_book
from p2pgrid.agent.transit import ask_of, site_id_of
from p2pgrid.errors import RetryableError
from p2pgrid.identity import MAX_DEVICE_INDEX
from p2pgrid.ledger import (
    Author,
    Cleared,
    Entry,
    MalformedError,
    Membership,
    Order,
    SaleSide,
    SiteSale,
    decode_entry,
    paid_hashes,
)
from p2pgrid.lightning import InvoiceError, InvoiceState, LightningError
from p2pgrid.market import Ask, MarketError, Party
from p2pgrid.net import PeerRef, RequestRejected
from p2pgrid.net.messages import Delivery

log = logging.getLogger(__name__)

SITE_TRADE_PROTOCOL = "/p2pgrid/1/energy/site-trade"
SITE_RECEIPT_PROTOCOL = "/p2pgrid/1/energy/site-receipt"


class TransitDesk:
    """Both sides of one device's energy trades with neighbouring sites."""

    def __init__(self, energy: EnergyDesk, neighbours: Mapping[bytes, Membership]) -> None:
        """``neighbours``: the log membership of each site this device trades
        energy with, by site hash (from ``EnergyConfig.trade_sites``)."""
        self.energy = energy
        self.neighbours = dict(neighbours)
        self._by_id = {site_id_of(h): h for h in self.neighbours}
        self.refused: list[str] = []
        self.bought_wh = 0
        self.sold_wh = 0
        #: (period, interval, buyer site id, buyer) -> the offer made (a retry: the same)
        self._offers: dict[tuple[int, int, str, int], SiteSaleOffer] = {}
        #: purchases (entry id) whose producer answered their receipt, since the start
        self._receipted: set[bytes] = set()

    def install(self) -> None:
        if self.neighbours:
            self.energy.host.handle(SITE_TRADE_PROTOCOL, self._on_request)
            self.energy.host.handle(SITE_RECEIPT_PROTOCOL, self._on_receipt)

    def peers_of(self, peers: list[PeerRef]) -> list[PeerRef]:
        """The devices among ``peers`` of a site this device trades with, in order."""
        return sorted(
            (p for p in peers if p.site_id in self._by_id and p.device_index <= MAX_DEVICE_INDEX),
            key=lambda p: (p.site_id, p.device_index),
        )

    # -- seller ------------------------------------------------------------------

    async def _own_order(self, period: int, interval: int) -> Entry | None:
        me = Author.device(self.energy.me.device)
        for entry in await self.energy.store.entries(period=period):
            body = entry.body
            if entry.author == me and isinstance(body, Order) and body.interval == interval:
                return entry
        return None

    async def _left(self, ask: Ask, period: int, interval: int) -> int:
        """What the ask has left: less its trades on its fixed pooled book, less
        what was invoiced to other sites in the round."""
        entries = await self.energy.store.entries(period=period)
        me = self.energy.me
        pooled = 0
        for entry in entries:
            body = entry.body
            if (
                entry.author == Author.device(me.device)
                and isinstance(body, Cleared)
                and body.interval == interval
            ):
                try:
                    book = round_book(
                        entries, me.site_id, period=period, interval=interval, devices=body.devices
                    )
                except MarketError:
                    return 0
                pooled = sum(t.energy_wh for t in book.clearing.trades if t.seller == me)
        # Invoiced across (in memory), at least what its log shows sold (a restart).
        logged = sum(
            e.body.energy_wh
            for e in entries
            if e.author == Author.device(me.device)
            and isinstance(e.body, SiteSale)
            and e.body.side == SaleSide.SOLD
            and e.body.interval == interval
        )
        across = max(self.energy.sold_across.get((period, interval), 0), logged)
        return max(0, ask.energy_wh - pooled - across)

    async def _on_request(self, delivery: Delivery) -> SiteSaleOffer:
        request = delivery.decode(SiteTradeRequest)
        if delivery.site_id not in self._by_id or delivery.device_index > MAX_DEVICE_INDEX:
            raise RequestRejected("this device trades energy with no such site")
        key = (request.period, request.interval, delivery.site_id, delivery.device_index)
        if key in self._offers:
            return self._offers[key]
        buyer = Party(delivery.site_id, delivery.device_index)
        async with self.energy.selling:
            order = await self._own_order(request.period, request.interval)
            ask = None if order is None else order_of(order, self.energy.me.site_id)
            if order is None or not isinstance(ask, Ask):
                raise RequestRejected("no ask of this round")
            energy = min(request.energy_wh, await self._left(ask, request.period, request.interval))
            amount = energy * ask.price_msat_per_kwh // 1000
            if energy <= 0 or amount < MIN_PAYMENT_MSAT:
                raise RequestRejected("nothing left of the ask to sell")
            memo = site_sale_memo(order.id, self.energy.me, buyer, energy, amount)
            invoice = await self.energy.node.add_invoice(
                amount, memo, expiry_s=self.energy.config.sale_expiry_s
            )
            round_ = (request.period, request.interval)
            self.energy.sold_across[round_] = self.energy.sold_across.get(round_, 0) + energy
            offer = SiteSaleOffer(order.raw, energy, amount, invoice.payment_request)
            self._offers[key] = offer
        log.info(
            "[%s] invoiced %d Wh to device %d of site %s for %d msat (round %d/%d)",
            self.energy.name,
            energy,
            buyer.device,
            buyer.site_id,
            amount,
            request.period,
            request.interval,
        )
        return offer

    async def _on_receipt(self, delivery: Delivery) -> SiteSaleReceipt:
        receipt = delivery.decode(SiteSaleReceipt)
        site = self._by_id.get(delivery.site_id)
        if site is None:
            raise RequestRejected("this device trades energy with no such site")
        try:
            bought = decode_entry(receipt.entry, site)
        except MalformedError as exc:
            raise RequestRejected(f"the receipt holds no entry of that site: {exc}") from exc
        body = bought.body
        me = self.energy.me
        if (
            self.neighbours[site].check(bought) is not None
            or bought.author != Author.device(delivery.device_index)
            or not isinstance(body, SiteSale)
            or body.side != SaleSide.BOUGHT
            or body.other_site != self.energy.store.membership.site_hash
            or body.other_device != me.device
        ):
            raise RequestRejected("the receipt is no signed purchase from this device")
        order = await self._own_order(bought.period, body.interval)
        if order is None or order.raw != body.evidence:
            raise RequestRejected("the purchase carries another order than this device's")
        try:
            invoice = await self.energy.node.lookup_invoice(body.payment_hash.hex())
        except LightningError as exc:
            raise RequestRejected(f"no invoice of this device: {exc}") from exc
        memo = site_sale_memo(
            order.id, me, Party(delivery.site_id, bought.author.index), body.energy_wh,
            body.amount_msat,
        )  # fmt: skip
        if (
            invoice.state is not InvoiceState.SETTLED
            or invoice.amt_paid_msat != body.amount_msat
            or invoice.memo != memo
        ):
            raise RequestRejected("the purchase is not an invoice of this device paid in full")
        sold = await self._logged_sale(bought)
        if sold is None:
            sold = await self.energy.writer.append(
                SiteSale(
                    SaleSide.SOLD,
                    site,
                    bought.author.index,
                    body.interval,
                    body.energy_wh,
                    body.amount_msat,
                    body.payment_hash,
                    bought.raw,
                ),
                period=bought.period,
                timestamp_ms=int(self.energy.now() * 1000),
            )
            self.sold_wh += body.energy_wh
            await self.energy.announce()
            log.info(
                "[%s] sold %d Wh to device %d of site %s for %d msat",
                self.energy.name,
                body.energy_wh,
                bought.author.index,
                delivery.site_id,
                body.amount_msat,
            )
        return SiteSaleReceipt(sold.raw)

    async def _logged_sale(self, bought: Entry) -> Entry | None:
        """This device's ``site_sale`` (side SOLD) of the purchase ``bought``, if logged."""
        me = Author.device(self.energy.me.device)
        for entry in await self.energy.store.entries(period=bought.period):
            body = entry.body
            if entry.author == me and isinstance(body, SiteSale) and body.evidence == bought.raw:
                return entry
        return None

    # -- buyer -------------------------------------------------------------------

    async def buy(
        self,
        need_wh: int,
        *,
        period: int,
        interval: int,
        rate_msat_per_kwh: int,
        fee_msat_per_kwh: int,
        peers: list[PeerRef],
    ) -> int:
        """Buy up to ``need_wh`` of round (period, interval) from producers of the
        neighbouring sites among ``peers``, one after the other; returns the Wh bought."""
        bought = 0
        for peer in self.peers_of(peers):
            if bought >= need_wh:
                break
            request = SiteTradeRequest(period, interval, need_wh - bought)
            try:
                reply = await self.energy.host.request(
                    peer.peer_id,
                    SITE_TRADE_PROTOCOL,
                    request,
                    timeout_s=self.energy.config.bid_timeout_s,
                )
                offer = reply.decode(SiteSaleOffer)
            except RequestRejected as exc:
                log.debug("[%s] device %s: %s", self.energy.name, peer.device_index, exc)
                continue
            except RetryableError as exc:
                self._refuse(peer, f"no offer: {exc}")
                continue
            bought += await self._pay(offer, peer, request, rate_msat_per_kwh, fee_msat_per_kwh)
        self.bought_wh += bought
        return bought

    def _refuse(self, peer: PeerRef, why: str) -> int:
        self.refused.append(why)
        log.warning(
            "[%s] no energy from device %d of site %s: %s",
            self.energy.name,
            peer.device_index,
            peer.site_id,
            why,
        )
        return 0

    async def _pay(
        self,
        offer: SiteSaleOffer,
        peer: PeerRef,
        request: SiteTradeRequest,
        rate_msat_per_kwh: int,
        fee_msat_per_kwh: int,
    ) -> int:
        period, interval = request.period, request.interval
        site = self._by_id[peer.site_id]
        seller = Party(peer.site_id, peer.device_index)
        try:
            order = decode_entry(offer.order_entry, site)
        except MalformedError as exc:
            return self._refuse(peer, f"the offer holds no entry of its site: {exc}")
        ask = ask_of(order, site)
        if self.neighbours[site].check(order) is not None or ask is None:
            return self._refuse(peer, "the offer holds no ask signed by a member of its site")
        if (order.author, ask.round) != (Author.device(peer.device_index), (period, interval)):
            return self._refuse(peer, "the offer's ask is of another device or round")
        mine = await self.energy.store.entries(period=period)
        before = sum(
            e.body.energy_wh
            for e in mine
            if isinstance(e.body, SiteSale)
            and e.body.side == SaleSide.BOUGHT
            and e.body.evidence == order.raw
        )
        if not 0 < offer.energy_wh <= min(request.energy_wh, ask.energy_wh - before):
            return self._refuse(peer, f"the offer's {offer.energy_wh} Wh exceed the ask or need")
        if offer.amount_msat != offer.energy_wh * ask.price_msat_per_kwh // 1000:
            return self._refuse(peer, "the offer's amount is not its Wh at the ask's price")
        if ask.price_msat_per_kwh + fee_msat_per_kwh >= rate_msat_per_kwh:
            return 0  # with the grid fee, the grid is as cheap
        if offer.amount_msat > await self.energy.balance_of(period):
            return 0  # its budget does not pay for it: the grid's energy, billed later
        try:
            decoded = await self.energy.node.decode_invoice(offer.bolt11)
        except InvoiceError as exc:
            return self._refuse(peer, f"undecodable invoice: {exc}")
        memo = site_sale_memo(order.id, seller, self.energy.me, offer.energy_wh, offer.amount_msat)
        problem = check_invoice(
            decoded,
            destination=self.energy.nodes.get(seller),
            amount_msat=offer.amount_msat,
            description=memo,
            now=self.energy.now(),
        )
        if problem is not None:
            return self._refuse(peer, problem)
        if bytes.fromhex(decoded.payment_hash) in paid_hashes(await self.energy.store.entries()):
            self.energy.host.report_misbehaviour(peer.peer_id, "energy:invoice_reused")
            return self._refuse(peer, "the invoice was paid before")
        purpose = Purpose(
            PurposeKind.SITE_SALE,
            offer.amount_msat,
            device=peer.device_index,
            energy_wh=offer.energy_wh,
            to_site=site.hex(),
            interval=interval,
            evidence=order.raw.hex(),
            reference=order.id.hex(),
        )
        try:
            paid = await self.energy.paymaster.pay(
                offer.bolt11,
                decoded.payment_hash,
                period=period,
                purpose=purpose,
                fee_limit_msat=self.energy.config.fee_limit_msat,
            )
        except PayRefused as exc:
            log.warning("[%s] could not pay device %d: %s", self.energy.name, seller.device, exc)
            return 0
        await self.energy.announce()
        log.info(
            "[%s] bought %d Wh from device %d of site %s for %d msat (fee %d)",
            self.energy.name,
            offer.energy_wh,
            seller.device,
            seller.site_id,
            offer.amount_msat,
            paid.payment.fee_msat,
        )
        purchase = next(e for e in paid.entries if isinstance(e.body, SiteSale))
        await self._hand_receipt(peer, purchase)
        return offer.energy_wh

    async def hand_receipts(self, period: int, peers: list[PeerRef]) -> int:
        """Hand again the receipts of this device's purchases of ``period`` and the
        one before that no producer has answered since the start (the producers
        among ``peers``); returns how many are still unanswered."""
        if not self.neighbours:
            return 0
        me = Author.device(self.energy.me.device)
        by_party = {(p.site_id, p.device_index): p for p in self.peers_of(peers)}
        left = 0
        for p in (period - 1, period) if period > 0 else (period,):
            for entry in await self.energy.store.entries(period=p):
                body = entry.body
                if (
                    entry.author != me
                    or not isinstance(body, SiteSale)
                    or body.side != SaleSide.BOUGHT
                    or entry.id in self._receipted
                ):
                    continue
                peer = by_party.get((site_id_of(body.other_site), body.other_device))
                if peer is None or not await self._hand_receipt(peer, entry):
                    left += 1
        return left

    async def _hand_receipt(self, peer: PeerRef, purchase: Entry) -> bool:
        """Give the producer the signed purchase, so its site logs the proceeds;
        False if it did not answer (to be handed again)."""
        try:
            reply = await self.energy.host.request(
                peer.peer_id,
                SITE_RECEIPT_PROTOCOL,
                SiteSaleReceipt(purchase.raw),
                timeout_s=self.energy.config.bid_timeout_s,
            )
            reply.decode(SiteSaleReceipt)
        except RetryableError as exc:
            log.warning(
                "[%s] device %d of site %s did not take the receipt (handed again later): %s",
                self.energy.name,
                peer.device_index,
                peer.site_id,
                exc,
            )
            return False
        except RequestRejected as exc:  # an answer: handing it again changes nothing
            log.warning(
                "[%s] device %d of site %s refused the receipt: %s",
                self.energy.name,
                peer.device_index,
                peer.site_id,
                exc,
            )
        self._receipted.add(purchase.id)
        return True
