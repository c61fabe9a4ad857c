"""Energy sales between neighbours: the site's pooled auction, one round per interval.

Round ``(period, i)`` trades energy during run interval ``i`` (docs/market.md,
section 6):

1. **Orders.** A producer that exported ``E`` Wh in interval ``i - 1`` logs an
   ``order`` entry with a market ``Ask`` for round ``i`` (``E`` Wh at
   :attr:`~p2pgrid.agent.config.EnergyConfig.ask_pct` of the tariff) when it
   meters ``i - 1``; a device about to import logs a ``DemandCurve`` for round
   ``i`` when it meters ``i``, if its replica holds an ask of the round by
   then: its firm need at the tariff, its flexible need in steps below it
   (:func:`p2pgrid.market.demand_curve`), no more than its balance pays for. Orders
   travel as log entries: signed, replicated, one per device and round (the
   log refuses a second).
2. **Close.** The round closes :attr:`~p2pgrid.agent.config.EnergyConfig.round_s`
   after interval ``i`` begins. Each buyer then clears the round from its own
   log with :func:`p2pgrid.market.clear_pool` (:func:`~p2pgrid.agent.rounds.round_book`)
   and, if the clearing gives it trades, logs a ``cleared`` entry naming its
   book (the devices whose orders it used, their book id, the price).
3. **Invoices.** The buyer sends each seller it trades with a
   :class:`~p2pgrid.agent.messages.TradeRequest` with that book. The seller
   recomputes the clearing from the listed devices' ``order`` entries in *its*
   log (waiting up to ``bid_timeout_s`` for any it lacks), refuses unless it is
   the same book (same id) and the book gives this buyer a trade from it, and
   sells on **one book per round** (its own ``cleared`` entry fixes it, so it
   never sells more than its ask). It answers a
   :class:`~p2pgrid.agent.messages.SaleOffer` with an invoice of its lnd for the
   trade's exact amount, described by :func:`~p2pgrid.agent.payguard.sale_memo`
   of (book id, seller, buyer, Wh, msat).
4. **Payment.** The buyer pays only what its own clearing says: the offer's
   book id, energy and amount must be its trade's, the invoice's destination
   (the seller's node), amount, description and expiry must match
   (:func:`~p2pgrid.agent.payguard.check_invoice`), and its balance must cover
   it. It pays through its :class:`~p2pgrid.agent.paymaster.Paymaster` (intent
   first) and logs a ``sale`` and a ``payment`` (preimage, routing fee) in the
   round's period. A wrong offer or invoice is refused (logged) and pays nothing.

**Pay on delivery** (``config.pay_on_delivery``, docs/market.md section 6.2):
the seller's invoice is a hold invoice (:class:`HeldSale`, its preimage derived
from the device key and the trade by :func:`~p2pgrid.agent.payguard.hold_preimage`,
so nothing is lost in a restart) and a watch task settles it when the buyer's
``delivered`` entry of the round shows the whole trade for this invoice and the
payment is ACCEPTED, and cancels it otherwise (or after ``delivery_wait_s``).
Entering :meth:`EnergyDesk.running` first resumes a watch on every hold invoice
of this seller's trades (its ``cleared`` entries) that lnd still has OPEN or
ACCEPTED: a seller restarted mid-hold settles or cancels it. The buyer's payment runs
as a task (in flight until then) and the buyer logs ``delivered`` with what its
meter received; ``sale`` and ``payment`` are logged only if the seller settles.
The tasks live in :meth:`EnergyDesk.running` (the agent's run): leaving it
waits for every held sale to resolve.

Trades below :data:`~p2pgrid.agent.payguard.MIN_PAYMENT_MSAT` are not made.
The energy bought is not imported from the grid: the buyer's meter reading for
the interval counts only the rest. Energy nobody buys goes to the grid unpaid.
Any replica checks the rounds with :func:`~p2pgrid.agent.rounds.check_pooled_sales`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from p2pgrid.agent.config import EnergyConfig
from p2pgrid.agent.intents import Purpose, PurposeKind
from p2pgrid.agent.messages import SaleOffer, TradeRequest
from p2pgrid.agent.payguard import MIN_PAYMENT_MSAT, check_invoice, hold_preimage, sale_memo
from p2pgrid.agent.paymaster import Paymaster, PayRefused
from p2pgrid.agent.ports import LogReplica, Peers, Wallet
from p2pgrid.agent.rounds import PoolOrder, RoundBook, asks_in, order_text, round_book
from p2pgrid.errors import P2PGridError, RetryableError, TimeoutExpired
from p2pgrid.identity import MAX_DEVICE_INDEX
from p2pgrid.ledger import (
    Author,
    BalanceBook,
    Cleared,
    Delivered,
    Entry,
    LogStore,
    LogWriter,
    Order,
    paid_hashes,
)
from p2pgrid.lightning import (
    Invoice,
    InvoiceError,
    InvoiceState,
    LightningError,
    LndApiError,
)
from p2pgrid.market import (
    FIRM,
    Ask,
    CurvePlan,
    DemandCurve,
    Flexibility,
    MarketError,
    Party,
    Trade,
    demand_curve,
    pool_orders,
    to_tick,
)
from p2pgrid.net import PeerRef, RequestRejected
from p2pgrid.net.messages import Delivery
from p2pgrid.poll import wait_until

log = logging.getLogger(__name__)

ENERGY_PROTOCOL = "/p2pgrid/2/energy/trade"
#: How long a device that closes a period waits for its held sale payments of
#: that period to resolve, beyond ``delivery_wait_s`` (then it closes anyway).
RESOLVE_MARGIN_S = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class HeldSale:
    """A seller's hold invoice of one trade, waiting for the buyer's delivery."""

    period: int
    interval: int
    buyer: Party
    energy_wh: int
    amount_msat: int
    preimage: bytes

    @property
    def payment_hash(self) -> str:
        return hashlib.sha256(self.preimage).hexdigest()


class EnergyDesk:
    """Both sides of the pooled energy sales of one device."""

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
        replica: LogReplica,
        announce: Callable[[], Awaitable[None]],
        now: Callable[[], float] = time.time,
        config: EnergyConfig | None = None,
        book: BalanceBook | None = None,
    ) -> None:
        """``nodes``: the Lightning node (pubkey) of each device it may deal with;
        ``announce`` publishes the entries this device wrote (the agent's);
        ``balance``: the device's balance by the log (without held payments);
        ``book``: the agent's balance book, told of each payment this desk holds
        in flight (:meth:`~p2pgrid.ledger.BalanceBook.hold`), so the agent's other
        spending sees it committed."""
        self.config = config if config is not None else EnergyConfig()
        self.me = me
        self.host = host
        self.node = node
        self.paymaster = paymaster
        self.writer: LogWriter = paymaster.writer
        self.store: LogStore = paymaster.writer.store
        self._balance = balance
        self._book = book
        self.name = name
        self.nodes = nodes
        self.replica = replica
        self._announce = announce
        self._now = now
        self.refused: list[str] = []  # why offers or trade requests were refused
        self._invoiced: dict[tuple[int, int, int], SaleOffer] = {}  # (period, interval, buyer)
        self._selling = asyncio.Lock()  # one book per round: checked and fixed under it
        #: Wh of each round (period, interval) invoiced to buyers of neighbouring
        #: sites (:mod:`p2pgrid.agent.transit_desk`): this site's buyers get what is left.
        self.sold_across: dict[tuple[int, int], int] = {}
        self.offered_wh = 0  # invoiced to buyers (paid or not)
        self.bought_wh = 0
        #: Pay on delivery: the tasks of held sales (a seller's watches, a buyer's
        #: payments) while :meth:`running`; per period, the buyer's payments in flight.
        self._tasks: asyncio.TaskGroup | None = None
        self._holding: dict[int, int] = {}  # period -> msat in held payments
        self._resolved = asyncio.Condition()
        self._watching: set[str] = set()  # payment hashes of held sales watched now
        self.settled: list[str] = []  # payment hashes of held sales settled (seller)
        self.cancelled: list[str] = []  # ... and cancelled (seller)

    def install(self) -> None:
        self.host.handle(ENERGY_PROTOCOL, self._on_trade)

    @property
    def selling(self) -> asyncio.Lock:
        """Held while a sale is checked and fixed (one book per round, and sales
        to other sites): the seller's ask is never sold twice."""
        return self._selling

    def now(self) -> float:
        return self._now()

    async def announce(self) -> None:
        await self._announce()

    async def balance_of(self, period: int) -> int:
        """The balance of ``period`` less the amounts held in flight (for the
        desk that buys from other sites)."""
        return await self._free(period)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Hold sales (pay on delivery) are made while this is entered; leaving it
        waits for every held sale to be settled or cancelled and every held
        payment to resolve (each bounded by ``delivery_wait_s`` and lnd's deadlines)."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            try:
                if self.config.pay_on_delivery:
                    tasks.create_task(self._resume_holds(tasks))
                yield
            finally:
                self._tasks = None

    async def resolved(self, period: int) -> None:
        """Wait (at most ``delivery_wait_s`` + :data:`RESOLVE_MARGIN_S`) until this
        buyer's held payments of ``period`` are settled or failed: a period closes
        on a balance that counts them."""
        try:
            async with asyncio.timeout(self.config.delivery_wait_s + RESOLVE_MARGIN_S):
                async with self._resolved:
                    await self._resolved.wait_for(lambda: not self._holding.get(period))
        except TimeoutError:
            log.warning("[%s] held payments of period %d still in flight", self.name, period)

    async def _free(self, period: int) -> int:
        """The balance of ``period`` less the payments this desk holds in flight."""
        return await self._balance(period) - self._holding.get(period, 0)

    # -- orders ------------------------------------------------------------------

    async def _order(self, order: PoolOrder) -> bool:
        """Log ``order`` (one per round: False if this device has one already)."""
        period, interval = order.round
        if (await self._mine(period, interval))[0] is not None:
            return False
        body = Order(interval, order_text(order))
        await self.writer.append(body, period=period, timestamp_ms=int(self._now() * 1000))
        await self._announce()
        return True

    async def _mine(self, period: int, interval: int) -> tuple[Order | None, Cleared | None]:
        """This device's ``order`` and ``cleared`` entries of round (period, interval)."""
        return self._own(await self.store.entries(period=period), interval)

    def _own(self, entries: list[Entry], interval: int) -> tuple[Order | None, Cleared | None]:
        """This device's ``order`` and ``cleared`` entries of round ``interval``
        among ``entries`` (its period's)."""
        order = cleared = None
        me = Author.device(self.me.device)
        for entry in entries:
            body = entry.body
            if entry.author != me or not isinstance(body, Order | Cleared):
                continue
            if body.interval != interval:
                continue
            if isinstance(body, Order):
                order = body
            else:
                cleared = body
        return order, cleared

    async def offer(
        self, *, period: int, interval: int, export_wh: int, rate_msat_per_kwh: int
    ) -> Ask | None:
        """Ask ``export_wh`` in round (period, interval) at ``ask_pct`` of the tariff."""
        if export_wh <= 0 or rate_msat_per_kwh <= 0:
            return None
        price = to_tick(rate_msat_per_kwh * self.config.ask_pct // 100)
        ask = Ask(self.me, period, interval, export_wh, price)
        return ask if await self._order(ask) else None

    async def bid(
        self,
        need_wh: int,
        *,
        period: int,
        interval: int,
        rate_msat_per_kwh: int,
        flex: Flexibility = FIRM,
        reserve_msat: int = 0,
    ) -> DemandCurve | None:
        """Bid for up to ``need_wh`` in round (period, interval) with the curve
        of :func:`p2pgrid.market.demand_curve` (firm load at the tariff, ``flex``
        of it below, as far as the balance pays for it and, for the flexible
        part, leaves ``reserve_msat``); only if this replica holds an ask of the
        round (nobody sells: no order, the log stays lean)."""
        plan = await self.bid_plan(
            need_wh,
            period=period,
            interval=interval,
            rate_msat_per_kwh=rate_msat_per_kwh,
            flex=flex,
            reserve_msat=reserve_msat,
        )
        return None if plan is None else DemandCurve(self.me, period, interval, plan.steps)

    async def bid_plan(
        self,
        need_wh: int,
        *,
        period: int,
        interval: int,
        rate_msat_per_kwh: int,
        flex: Flexibility = FIRM,
        reserve_msat: int = 0,
    ) -> CurvePlan | None:
        """:meth:`bid`, returning the plan its curve rests on (for the deferral
        of :func:`p2pgrid.market.deferred_wh` once the round cleared)."""
        entries = await self.store.entries(period=period)
        if not asks_in(entries, self.me.site_id, period=period, interval=interval):
            return None
        plan = demand_curve(
            need_wh,
            rate_msat_per_kwh=rate_msat_per_kwh,
            balance_msat=await self._free(period),
            flex=flex,
            reserve_msat=reserve_msat,
        )
        if not plan.steps:
            return None
        curve = DemandCurve(self.me, period, interval, plan.steps)
        return plan if await self._order(curve) else None

    async def round_price(self, *, period: int, interval: int) -> int | None:
        """The price energy had in round (period, interval) for this device: the
        price it settled the round at (its ``cleared`` entry), else by this
        replica the clearing price, or with no trade the cheapest ask (nobody
        sold for less); None without an ask or if the round does not clear.

        A settled round keeps the price it was settled at: an order that reaches
        the replica after the settlement (a late bid) may clear the book anew at
        another price, but the device bought at this one, and what it defers is
        priced against it (bought + deferred never exceeds its need)."""
        entries = await self.store.entries(period=period)
        cleared = self._own(entries, interval)[1]
        if cleared is not None:
            return cleared.price_msat_per_kwh
        try:
            book = round_book(entries, self.me.site_id, period=period, interval=interval)
        except MarketError:
            return None
        if book.clearing.trades:
            return book.clearing.price_msat_per_kwh
        asks = pool_orders(book.orders, period=period, interval=interval)[1]
        return min((a.price_msat_per_kwh for a in asks), default=None)

    # -- seller ------------------------------------------------------------------

    async def _book_of(self, request: TradeRequest) -> RoundBook:
        """The clearing of the request's book from this replica, once it holds an
        order of each listed device (waiting up to ``bid_timeout_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.bid_timeout_s
        while True:
            book = round_book(
                await self.store.entries(period=request.period),
                self.me.site_id,
                period=request.period,
                interval=request.interval,
                devices=request.devices,
            )
            if book.devices == request.devices or loop.time() >= deadline:
                return book
            try:
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self.replica.wait_until(self._changed_since(self.store.digest()))
            except TimeoutError:
                pass  # one last look, then the answer

    def _changed_since(self, digest: bytes) -> Callable[[], bool]:
        return lambda: self.store.digest() != digest

    async def _on_trade(self, delivery: Delivery) -> SaleOffer:
        request = delivery.decode(TradeRequest)
        if delivery.device_index > MAX_DEVICE_INDEX or delivery.site_id != self.me.site_id:
            raise RequestRejected("only devices of this site buy")
        buyer = Party(self.me.site_id, delivery.device_index)
        key = (request.period, request.interval, buyer.device)
        if key in self._invoiced:  # a retried request: the same invoice
            return self._invoiced[key]
        if self.me.device not in request.devices or buyer.device not in request.devices:
            raise RequestRejected("the book lists no order of the seller or of the buyer")
        async with self._selling:
            try:
                book = await self._book_of(request)
            except MarketError as exc:
                raise RequestRejected(f"the book does not clear: {exc}") from exc
            clearing = book.clearing
            if book.devices != request.devices or clearing.book_id != request.book_id:
                raise RequestRejected("the listed orders in this replica are another book")
            mine = (await self._mine(request.period, request.interval))[1]
            if mine is not None and mine.book_id != request.book_id:
                raise RequestRejected("this round was sold on another book")
            trade = next(
                (t for t in clearing.trades if t.seller == self.me and t.buyer == buyer), None
            )
            if trade is None:
                raise RequestRejected("the book gives no trade between us")
            if trade.amount_msat < MIN_PAYMENT_MSAT:
                raise RequestRejected(f"{trade.amount_msat} msat is below the smallest payment")
            across = self.sold_across.get((request.period, request.interval), 0)
            if across:  # part of the ask went to other sites: the book must fit the rest
                pooled = sum(t.energy_wh for t in clearing.trades if t.seller == self.me)
                mine_ask = [o for o in book.orders if isinstance(o, Ask) and o.party == self.me]
                if not mine_ask or pooled + across > mine_ask[0].energy_wh:
                    raise RequestRejected("this round's ask went to other sites")
            if mine is None:
                body = Cleared(
                    request.interval, clearing.price_msat_per_kwh, clearing.book_id, book.book
                )
                at_ms = int(self._now() * 1000)
                await self.writer.append(body, period=request.period, timestamp_ms=at_ms)
                await self._announce()
            memo = sale_memo(
                clearing.book_id,
                self.me,
                buyer,
                trade.energy_wh,
                trade.amount_msat,
                on_delivery=self.config.pay_on_delivery,
            )
            if self.config.pay_on_delivery:
                invoice = await self._hold(request, buyer, trade, memo)
            else:
                invoice = await self.node.add_invoice(
                    trade.amount_msat, memo, expiry_s=self.config.sale_expiry_s
                )
            offer = SaleOffer(
                clearing.book_id, trade.energy_wh, trade.amount_msat, invoice.payment_request
            )
            self._invoiced[key] = offer
            self.offered_wh += trade.energy_wh
        log.info(
            "[%s] invoiced %d Wh to device %d for %d msat (round %d/%d at %d msat/kWh)",
            self.name,
            trade.energy_wh,
            buyer.device,
            trade.amount_msat,
            request.period,
            request.interval,
            clearing.price_msat_per_kwh,
        )
        return offer

    async def _hold(self, request: TradeRequest, buyer: Party, trade: Trade, memo: str) -> Invoice:
        """A hold invoice for ``trade`` (the preimage stays here) and its watch."""
        tasks = self._tasks
        if tasks is None:
            raise RequestRejected("not selling on delivery now")
        sale = self._held_sale((request.period, request.interval), request.book_id, trade)
        # The same hash again (a request retried after a restart): lnd returns the invoice.
        invoice = await self.node.add_hold_invoice(
            sale.payment_hash, trade.amount_msat, memo, expiry_s=self.config.sale_expiry_s
        )
        self._start_watch(tasks, sale)
        return invoice

    def _held_sale(self, round_: tuple[int, int], book_id: bytes, trade: Trade) -> HeldSale:
        preimage = hold_preimage(
            self.writer.signer.secret,
            round_,
            book_id,
            trade.seller,
            trade.buyer,
            trade.energy_wh,
            trade.amount_msat,
        )
        return HeldSale(*round_, trade.buyer, trade.energy_wh, trade.amount_msat, preimage)

    def _start_watch(self, tasks: asyncio.TaskGroup, sale: HeldSale) -> None:
        """Watch ``sale`` (once: a retried request or a resume finds it watched)."""
        if sale.payment_hash not in self._watching:
            self._watching.add(sale.payment_hash)
            tasks.create_task(self._watch(sale))

    async def _resume_holds(self, tasks: asyncio.TaskGroup) -> None:
        """Watch again every hold invoice of this seller's trades that lnd still
        has OPEN or ACCEPTED (left by a stop or crash): its preimage is derived, so
        the watch settles it if the buyer's ``delivered`` entry shows the trade and
        cancels it otherwise, within ``delivery_wait_s`` from now. One lnd lookup
        per pooled trade this seller made on delivery and was not paid for."""
        entries = await self.store.entries()
        paid = paid_hashes(entries)
        me = Author.device(self.me.device)
        for entry in entries:
            body = entry.body
            if entry.author != me or not isinstance(body, Cleared):
                continue
            round_ = (entry.period, body.interval)
            try:
                book = round_book(
                    entries,
                    self.me.site_id,
                    period=entry.period,
                    interval=body.interval,
                    devices=body.devices,
                )
            except MarketError:
                continue
            if book.clearing.book_id != body.book_id:
                continue
            for trade in book.clearing.trades:
                if trade.seller != self.me or trade.amount_msat < MIN_PAYMENT_MSAT:
                    continue
                sale = self._held_sale(round_, body.book_id, trade)
                if bytes.fromhex(sale.payment_hash) in paid:
                    continue
                try:
                    invoice = await self.node.lookup_invoice(sale.payment_hash)
                except LndApiError:
                    continue  # never invoiced (no such invoice)
                except LightningError as exc:  # lnd away: lnd's CLTV bounds the hold
                    log.warning("[%s] held sales not resumed: %s", self.name, exc)
                    return
                if invoice.state in (InvoiceState.OPEN, InvoiceState.ACCEPTED):
                    log.info(
                        "[%s] resuming held sale %s... (round %d/%d, %s)",
                        self.name,
                        sale.payment_hash[:16],
                        *round_,
                        invoice.state.value,
                    )
                    self._start_watch(tasks, sale)

    def _delivered(self, entries: list[Entry], sale: HeldSale) -> Delivered | None:
        """The buyer's ``delivered`` entry of this sale's round and seller, if logged."""
        buyer = Author.device(sale.buyer.device)
        for entry in entries:
            body = entry.body
            if (
                entry.author == buyer
                and entry.period == sale.period
                and isinstance(body, Delivered)
                and body.interval == sale.interval
                and body.seller == self.me.device
            ):
                return body
        return None

    async def _watch(self, sale: HeldSale) -> None:
        """Settle ``sale`` once the buyer's payment is ACCEPTED and its ``delivered``
        entry shows the whole trade for this invoice; else cancel it (short,
        another invoice, or nothing by ``delivery_wait_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.delivery_wait_s
        shown: Delivered | None = None
        try:
            async with asyncio.timeout(self.config.delivery_wait_s):
                while shown is None:
                    digest = self.store.digest()
                    shown = self._delivered(await self.store.entries(period=sale.period), sale)
                    if shown is None:
                        await self.replica.wait_until(self._changed_since(digest))
        except TimeoutError:
            pass
        accepted = False
        try:
            if shown is not None:
                accepted = await self._accepted(sale, max(0.0, deadline - loop.time()))
            whole = (
                shown is not None
                and shown.payment_hash.hex() == sale.payment_hash
                and shown.energy_wh >= sale.energy_wh
            )
            if accepted and whole:
                await self.node.settle_invoice(sale.preimage)
                self.settled.append(sale.payment_hash)
            else:
                await self.node.cancel_invoice(sale.payment_hash)
                self.cancelled.append(sale.payment_hash)
        except LightningError as exc:  # the invoice's expiry and CLTV bound what is held
            log.warning("[%s] held sale %s...: %s", self.name, sale.payment_hash[:16], exc)
            return
        log.info(
            "[%s] %s held sale of %d Wh to device %d (round %d/%d): %s",
            self.name,
            "settled" if accepted and whole else "cancelled",
            sale.energy_wh,
            sale.buyer.device,
            sale.period,
            sale.interval,
            "delivered"
            if accepted and whole
            else f"shown {shown.energy_wh if shown else 'nothing'}, paid {accepted}",
        )

    async def _accepted(self, sale: HeldSale, within_s: float) -> bool:
        """Whether the buyer's payment reaches ACCEPTED within ``within_s`` (lnd polled)."""

        async def accepted() -> bool:
            state = (await self.node.lookup_invoice(sale.payment_hash)).state
            return state is InvoiceState.ACCEPTED

        try:
            await wait_until(accepted, timeout_s=within_s, what="the held payment")
        except TimeoutExpired:
            return False
        return True

    # -- buyer -------------------------------------------------------------------

    async def settle_round(self, *, period: int, interval: int, peers: list[PeerRef]) -> int:
        """After the round closed: clear it from this replica, log the ``cleared``
        entry and pay each seller its trade; returns the Wh bought. A round is
        settled once (a second call, after a restart say, buys nothing)."""
        entries = await self.store.entries(period=period)
        if self._own(entries, interval)[1] is not None:
            return 0
        try:
            book = round_book(entries, self.me.site_id, period=period, interval=interval)
        except MarketError as exc:
            log.warning("[%s] round %d/%d does not clear: %s", self.name, period, interval, exc)
            return 0
        clearing = book.clearing
        trades = [t for t in clearing.trades if t.buyer == self.me]
        if not trades:
            return 0
        body = Cleared(interval, clearing.price_msat_per_kwh, clearing.book_id, book.book)
        await self.writer.append(body, period=period, timestamp_ms=int(self._now() * 1000))
        await self._announce()
        request = TradeRequest(period, interval, clearing.book_id, book.devices)
        bought = 0
        for trade in trades:
            seller = next(
                (
                    p
                    for p in peers
                    if p.site_id == self.me.site_id and p.device_index == trade.seller.device
                ),
                None,
            )
            if seller is None:
                self._refuse(trade.seller.device, "the seller is not reachable")
                continue
            try:
                reply = await self.host.request(
                    seller.peer_id, ENERGY_PROTOCOL, request, timeout_s=self.config.bid_timeout_s
                )
                offer = reply.decode(SaleOffer)
            except (RetryableError, RequestRejected) as exc:
                self._refuse(trade.seller.device, f"no invoice: {exc}")
                continue
            bought += await self._pay(offer, trade, clearing.book_id, seller, (period, interval))
        if not self.config.pay_on_delivery:
            self.bought_wh += bought  # on delivery: counted as each payment settles
        return bought

    def _refuse(self, seller: int, why: str) -> int:
        self.refused.append(why)
        log.warning("[%s] no sale from device %d: %s", self.name, seller, why)
        return 0

    async def _pay(
        self,
        offer: SaleOffer,
        trade: Trade,
        book_id: bytes,
        peer: PeerRef,
        round_: tuple[int, int],
    ) -> int:
        period = round_[0]
        seller = trade.seller.device
        if offer.bid_id != book_id:
            return self._refuse(seller, "the offer answers another book")
        if (offer.energy_wh, offer.amount_msat) != (trade.energy_wh, trade.amount_msat):
            return self._refuse(seller, "the offer is not the cleared trade")
        if offer.amount_msat < MIN_PAYMENT_MSAT:
            return self._refuse(seller, f"{offer.amount_msat} msat is below the smallest payment")
        if offer.amount_msat > await self._free(period):
            return 0  # cannot pay for it from the budget: buy from the grid (or not at all)
        try:
            decoded = await self.node.decode_invoice(offer.bolt11)
        except InvoiceError as exc:
            return self._refuse(seller, f"undecodable invoice: {exc}")
        problem = check_invoice(
            decoded,
            destination=self.nodes.get(trade.seller),
            amount_msat=trade.amount_msat,
            description=sale_memo(
                book_id,
                trade.seller,
                self.me,
                trade.energy_wh,
                trade.amount_msat,
                on_delivery=self.config.pay_on_delivery,
            ),
            now=self._now(),
        )
        if problem is not None:
            return self._refuse(seller, problem)
        # lnd answers a paid invoice with its first payment: logging that sale
        # again would credit the seller twice for one payment.
        if bytes.fromhex(decoded.payment_hash) in paid_hashes(await self.store.entries()):
            self.host.report_misbehaviour(peer.peer_id, "energy:invoice_reused")
            return self._refuse(seller, "the invoice was paid before")
        purpose = Purpose(
            PurposeKind.SALE,
            trade.amount_msat,
            device=seller,
            energy_wh=trade.energy_wh,
            reference=book_id.hex(),
        )
        if self.config.pay_on_delivery:
            return await self._pay_on_delivery(offer.bolt11, decoded.payment_hash, purpose, round_)
        try:
            paid = await self.paymaster.pay(
                offer.bolt11,
                decoded.payment_hash,
                period=period,
                purpose=purpose,
                fee_limit_msat=self.config.fee_limit_msat,
            )
        except PayRefused as exc:
            log.warning("[%s] could not pay device %d: %s", self.name, seller, exc)
            return 0
        log.info(
            "[%s] bought %d Wh from device %d for %d msat (fee %d)",
            self.name,
            trade.energy_wh,
            seller,
            trade.amount_msat,
            paid.payment.fee_msat,
        )
        return trade.energy_wh

    async def _pay_on_delivery(
        self, bolt11: str, payment_hash: str, purpose: Purpose, round_: tuple[int, int]
    ) -> int:
        """Start paying the seller's hold invoice (it stays in flight until the
        seller settles or cancels it) and log what this device's meter received
        of the trade in a ``delivered`` entry; returns those Wh (not grid energy)."""
        period, interval = round_
        tasks = self._tasks
        if tasks is None:
            return self._refuse(purpose.device, "not buying on delivery now")
        received = purpose.energy_wh * self.config.delivered_pct // 100
        self._holding[period] = self._holding.get(period, 0) + purpose.amount_msat
        if self._book is not None:
            self._book.hold(
                payment_hash, device=self.me.device, period=period, amount_msat=purpose.amount_msat
            )
        tasks.create_task(self._pay_held(bolt11, payment_hash, purpose, period))
        body = Delivered(interval, purpose.device, received, bytes.fromhex(payment_hash))
        await self.writer.append(body, period=period, timestamp_ms=int(self._now() * 1000))
        await self._announce()
        return received

    async def _pay_held(
        self, bolt11: str, payment_hash: str, purpose: Purpose, period: int
    ) -> None:
        """Pay a hold invoice through the paymaster: ``sale`` and ``payment`` are
        logged if the seller settles; a cancel fails the payment and logs nothing."""
        seller = purpose.device
        try:
            paid = await self.paymaster.pay(
                bolt11,
                payment_hash,
                period=period,
                purpose=purpose,
                fee_limit_msat=self.config.fee_limit_msat,
            )
        except PayRefused as exc:
            log.info("[%s] held payment to device %d not taken: %s", self.name, seller, exc)
        except P2PGridError as exc:  # lnd away: the intent stays open, resolved by hash
            log.warning("[%s] held payment to device %d unresolved: %s", self.name, seller, exc)
        else:
            self.bought_wh += purpose.energy_wh
            await self._announce()
            log.info(
                "[%s] bought %d Wh from device %d on delivery for %d msat (fee %d)",
                self.name,
                purpose.energy_wh,
                seller,
                purpose.amount_msat,
                paid.payment.fee_msat,
            )
        finally:  # settled (its sale entry now counts) or failed: no longer held
            if self._book is not None:
                self._book.release(payment_hash)
            async with self._resolved:
                self._holding[period] -= purpose.amount_msat
                self._resolved.notify_all()
