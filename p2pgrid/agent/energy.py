"""Energy sales between neighbours: a producer (solar) sells its surplus.

A producer that exported ``E`` Wh in interval ``i`` (production beyond its own
use) offers it to its site during interval ``i + 1`` with a market ``Ask`` at
:attr:`~p2pgrid.agent.config.EnergyConfig.ask_pct` of the tariff. A device
about to import energy first bids for it on :data:`ENERGY_PROTOCOL` (a market
``Bid``: its need, at most the tariff); the producer collects the bids of a
short round (:attr:`~p2pgrid.agent.config.EnergyConfig.round_s`), clears them all
against what is left of its ask with the market's pay-as-clear rule
(:func:`p2pgrid.market.clear`: one price for the round) and answers each buyer a
:class:`~p2pgrid.agent.messages.SaleOffer` with an invoice of its lnd for the
trade's exact amount, described by :func:`~p2pgrid.agent.payguard.sale_memo` of
(bid id, seller, buyer, energy, amount): the binding to this bid. The buyer checks
the offer against its bid and its own balance, and the invoice's destination
(the seller's node), amount, description and expiry; it pays through its
:class:`~p2pgrid.agent.paymaster.Paymaster` (intent first) and logs a ``sale``
(it pays, so it authors it) and a ``payment`` with the preimage and routing fee,
in the bid's period. A wrong invoice is refused (logged) and pays nothing.
Trades below :data:`~p2pgrid.agent.payguard.MIN_PAYMENT_MSAT` are not made: the
buyer takes that energy from the grid. The energy bought is not imported from the
grid: the buyer's meter reading for the interval counts only the rest, so the
utility bills only grid energy. Energy nobody buys goes to the grid unpaid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from p2pgrid.agent.config import EnergyConfig
from p2pgrid.agent.intents import Purpose, PurposeKind
from p2pgrid.agent.messages import SaleOffer
from p2pgrid.agent.payguard import MIN_PAYMENT_MSAT, check_invoice, sale_memo
from p2pgrid.agent.paymaster import Paymaster, PayRefused
from p2pgrid.agent.ports import Peers, Wallet
from p2pgrid.errors import RetryableError
from p2pgrid.identity import MAX_DEVICE_INDEX
from p2pgrid.ledger import paid_hashes
from p2pgrid.lightning import InvoiceError
from p2pgrid.market import Ask, Bid, Clearing, Party, clear, max_bid_energy, to_tick
from p2pgrid.net import Delivery, PeerRef, RequestRejected

log = logging.getLogger(__name__)

ENERGY_PROTOCOL = "/p2pgrid/1/energy/buy"


@dataclasses.dataclass
class _ForSale:
    ask: Ask
    left_wh: int
    #: The bids of the auction round being collected, and its result once cleared.
    bids: list[Bid] = dataclasses.field(default_factory=list)
    cleared: asyncio.Future[Clearing] | None = None


class EnergyDesk:
    """Both sides of neighbour energy sales for one device."""

    def __init__(
        self,
        *,
        me: Party,
        host: Peers,
        node: Wallet,
        paymaster: Paymaster,
        balance: Callable[[int], Awaitable[int]],
        name: str,
        nodes: Mapping[Party, str],
        now: Callable[[], float] = time.time,
        config: EnergyConfig | None = None,
    ) -> None:
        """``nodes``: the Lightning node (pubkey) of each device it may buy from."""
        self.config = config if config is not None else EnergyConfig()
        self.me = me
        self.host = host
        self.node = node
        self.paymaster = paymaster
        self._balance = balance
        self.name = name
        self.nodes = nodes
        self._now = now
        self.refused: list[str] = []  # why sale invoices were refused
        self._for_sale: dict[int, _ForSale] = {}  # by run interval
        self.offered_wh = 0
        self.bought_wh = 0

    def install(self) -> None:
        self.host.handle(ENERGY_PROTOCOL, self._on_bid)

    # -- seller ------------------------------------------------------------------

    def offer(self, *, period: int, interval: int, export_wh: int, rate_msat_per_kwh: int) -> None:
        """Offer ``export_wh`` for sale during run interval ``interval``."""
        for old in [i for i in self._for_sale if i < interval - 1]:
            del self._for_sale[old]  # bids for the interval now ending may still come
        if export_wh > 0 and rate_msat_per_kwh > 0:
            price = to_tick(rate_msat_per_kwh * self.config.ask_pct // 100)
            ask = Ask(self.me, period, interval, export_wh, price)
            self._for_sale[interval] = _ForSale(ask, export_wh)

    async def _on_bid(self, delivery: Delivery) -> SaleOffer:
        bid = delivery.decode(Bid)
        if delivery.device_index > MAX_DEVICE_INDEX:  # the utility's or owner's host
            raise RequestRejected("only devices buy")
        if bid.party.device != delivery.device_index or bid.party.site_id != self.me.site_id:
            raise RequestRejected("the bid names another device than its sender")
        sale = self._for_sale.get(bid.interval)
        if sale is None or sale.left_wh == 0 or sale.ask.period != bid.period:
            raise RequestRejected("nothing for sale in that interval")
        clearing = await self._auction_round(sale, bid)
        trade = next((t for t in clearing.trades if t.buyer == bid.party), None)
        if trade is None:
            raise RequestRejected("the bid did not clear (below the price, or sold out)")
        if trade.amount_msat < MIN_PAYMENT_MSAT:
            sale.left_wh += trade.energy_wh  # not sold after all
            self.offered_wh -= trade.energy_wh
            raise RequestRejected(f"{trade.amount_msat} msat is below the smallest payment")
        invoice = await self.node.add_invoice(
            trade.amount_msat,
            sale_memo(bid.id, self.me, bid.party, trade.energy_wh, trade.amount_msat),
            expiry_s=self.config.sale_expiry_s,
        )
        log.info(
            "[%s] offered %d Wh to device %d for %d msat",
            self.name,
            trade.energy_wh,
            delivery.device_index,
            trade.amount_msat,
        )
        return SaleOffer(bid.id, trade.energy_wh, trade.amount_msat, invoice.payment_request)

    async def _auction_round(self, sale: _ForSale, bid: Bid) -> Clearing:
        """Collect the bids that arrive within ``config.round_s`` of the first, then
        clear them all at once against what is left (pay-as-clear): every buyer of
        the round pays the same price. The first bid's handler runs the round."""
        sale.bids.append(bid)
        if sale.cleared is not None:  # a round is open: wait for its result
            return await asyncio.shield(sale.cleared)
        sale.cleared = asyncio.get_running_loop().create_future()
        try:
            await asyncio.sleep(self.config.round_s)  # the round's collection window, not a sync
            ask = dataclasses.replace(sale.ask, energy_wh=sale.left_wh)
            clearing = clear([ask], sale.bids, period=ask.period, interval=ask.interval)
            sold = sum(t.energy_wh for t in clearing.trades)
            sale.left_wh -= sold  # reserved for this round's buyers
            self.offered_wh += sold  # (paid or not)
            sale.cleared.set_result(clearing)
            return clearing
        except BaseException as exc:
            sale.cleared.set_exception(RequestRejected(f"auction round failed: {exc!r}"))
            raise
        finally:
            cleared, sale.cleared, sale.bids = sale.cleared, None, []
            if not cleared.done():
                cleared.cancel()

    # -- buyer -------------------------------------------------------------------

    async def buy(
        self,
        need_wh: int,
        *,
        period: int,
        interval: int,
        rate_msat_per_kwh: int,
        peers: list[PeerRef],
    ) -> int:
        """Buy up to ``need_wh`` from producing neighbours, as far as the balance
        pays for it; returns the Wh bought."""
        bought = 0
        price = to_tick(rate_msat_per_kwh)
        for peer in peers:
            affordable = max_bid_energy(await self._balance(period), price)
            want = min(need_wh - bought, affordable)
            if want <= 0:
                break
            bid = Bid(self.me, period, interval, want, price)
            try:
                reply = await self.host.request(
                    peer.peer_id, ENERGY_PROTOCOL, bid, timeout_s=self.config.bid_timeout_s
                )
                offer = reply.decode(SaleOffer)
            except (RetryableError, RequestRejected):
                continue  # not a producer now, or nothing left
            bought += await self._pay(offer, bid, peer, period)
        self.bought_wh += bought
        return bought

    def _refuse(self, seller: PeerRef, why: str) -> int:
        self.refused.append(why)
        log.warning("[%s] refused the offer of device %d: %s", self.name, seller.device_index, why)
        return 0

    async def _pay(self, offer: SaleOffer, bid: Bid, seller: PeerRef, period: int) -> int:
        if offer.bid_id != bid.id or offer.energy_wh > bid.energy_wh:
            return self._refuse(seller, "the offer answers another bid")
        if offer.amount_msat * 1000 > offer.energy_wh * bid.price_msat_per_kwh:
            return self._refuse(seller, "the offer asks above our bid")
        if offer.amount_msat < MIN_PAYMENT_MSAT:
            return self._refuse(seller, f"{offer.amount_msat} msat is below the smallest payment")
        if offer.amount_msat > await self._balance(period):
            return 0  # cannot pay for it from the budget: buy from the grid (or not at all)
        party = Party(seller.site_id, seller.device_index)
        try:
            decoded = await self.node.decode_invoice(offer.bolt11)
        except InvoiceError as exc:
            return self._refuse(seller, f"undecodable invoice: {exc}")
        problem = check_invoice(
            decoded,
            destination=self.nodes.get(party),
            amount_msat=offer.amount_msat,
            description=sale_memo(bid.id, party, self.me, offer.energy_wh, offer.amount_msat),
            now=self._now(),
        )
        if problem is not None:
            return self._refuse(seller, problem)
        # lnd answers a paid invoice with its first payment: logging that sale
        # again would credit the seller twice for one payment.
        if bytes.fromhex(decoded.payment_hash) in paid_hashes(
            await self.paymaster.writer.store.entries()
        ):
            self.host.report_misbehaviour(seller.peer_id, "energy:invoice_reused")
            return self._refuse(seller, "the invoice was paid before")
        purpose = Purpose(
            PurposeKind.SALE,
            offer.amount_msat,
            device=seller.device_index,
            energy_wh=offer.energy_wh,
            reference=bid.id.hex(),
        )
        try:
            paid = await self.paymaster.pay(
                offer.bolt11,
                decoded.payment_hash,
                period=period,
                purpose=purpose,
                fee_limit_msat=self.config.fee_limit_msat,
            )
        except PayRefused as exc:
            log.warning("[%s] could not pay device %d: %s", self.name, seller.device_index, exc)
            return 0
        log.info(
            "[%s] bought %d Wh from device %d for %d msat (fee %d)",
            self.name,
            offer.energy_wh,
            seller.device_index,
            offer.amount_msat,
            paid.payment.fee_msat,
        )
        return offer.energy_wh
