"""A device agent: meters, checks its balance before buying, shares, settles.

One agent runs per device, alone in its OS process or with the agents of other
devices in a gateway process (see :mod:`p2pgrid.agent.gateway`). Each metering
interval of the (compressible) clock it:

1. reads its meter; if it imports and a neighbour asks in this interval's
   pooled round, it bids its demand curve (firm load at the tariff, a
   deferrable device's flexible load below it, :mod:`p2pgrid.market.curves`),
   waits for the round's close and buys what the clearing gives it
   (:mod:`p2pgrid.agent.energy`); flexible load the clearing price is above
   is deferred (not drawn, logged as a ``curtailment`` at the power it keeps);
   it prices the rest with the tariff;
2. checks its balance in its own replica of the log (allocation + shares
   received + carried in - spent - shares given ...); when the balance does not
   cover the interval, it asks its site peers for a share (real sats move over
   Lightning, see :mod:`p2pgrid.agent.sharing`);
3. if it is still short, a deferrable or normal device curtails itself (sheds
   the interval's load) and logs a ``curtailment``; a critical device never
   does: it consumes into overdraft, which the owner sees in the report (and
   one WARNING line, at its first overdraft);
4. logs a ``meter_reading`` of what it consumed from the grid, and, if it
   produced more than it used, the ``order`` of its surplus for the next
   interval's round;
5. forecasts the rest of the period (its readings, the meter's past before
   the run included): if the forecast costs more than its balance, it asks its
   site peers for that shortfall early (at most every ``early_ask_intervals``).
   It gives a peer only what its balance holds beyond its own forecast
   (:func:`p2pgrid.market.spare_msat`).
6. in the last ``share.leftover_window`` intervals of a period, buys leftover
   allowance from its site peers for what is still short (after 5, and before
   curtailing in 3), paying sats outside its budget; and sells its own leftover
   by its :class:`~p2pgrid.market.LeftoverPolicy`, which it then does not give
   as shares (:mod:`p2pgrid.agent.allowance`, docs/market.md 2.9).

At a period's last interval it waits for any share payment in flight (so the
period's money is final) and for the allowance sales its peers paid for (logged,
the unpaid offers cancelled), carries its unspent balance over (a ``carry_over``
of the period, under either :class:`~p2pgrid.market.SurplusPolicy`, less what
offers still open hold: their lnd did not answer, and a later close logs their
sale in the period or cancels them, docs/market.md 2.9; once: the
log's own ``carry_over`` of the period says it was closed before, not the
chain's latest period, since a producer writes its next period's first
``order`` before it closes this one) and then settles the utility's invoice
for that period as soon as it arrives (checked against its replica,
:mod:`p2pgrid.agent.settlement`). Every entry it writes is announced to the
site through its replica.

Its lnd not answering (killed, paused, restarting) is a condition, not a crash
(:class:`~p2pgrid.lightning.NodeWatch`: one WARNING when it goes, one INFO when
it is back): the agent keeps metering and logging; a purchase or a share that
needs lnd meanwhile is skipped for that interval; an open payment intent is
resolved by payment hash as soon as lnd answers again; an invoice due while lnd
is away is paid once it is back (retried with capped back-off for at most
:attr:`~p2pgrid.agent.config.SettleConfig.node_away_wait_s`; the payment hash
keeps it from being paid twice).

The agent is built from its :class:`DeviceProfile`, its :class:`AgentParts`
(the log store and writer, and the Protocols of :mod:`p2pgrid.agent.ports` for
the replica, the peers and the Lightning node), its :class:`Metering` and its
clock, tuned by one :class:`~p2pgrid.agent.config.AgentConfig`. Its balances come
from a :class:`~p2pgrid.ledger.BalanceBook` fed by the store as entries are
stored (equal to the full fold of the log, without re-folding it per question).

Every payment goes through one :class:`~p2pgrid.agent.paymaster.Paymaster`
(intent before money); before its first interval the agent resolves every open
intent against lnd (:meth:`DeviceAgent.recover`), so it never pays anything
while an earlier payment may still lack its log entry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import random
from collections.abc import Callable, Collection, Mapping

from p2pgrid.agent.allowance import AllowanceDesk
from p2pgrid.agent.config import AgentConfig
from p2pgrid.agent.energy import EnergyDesk
from p2pgrid.agent.payguard import MIN_PAYMENT_MSAT
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.agent.ports import LogReplica, Peers, Wallet
from p2pgrid.agent.settlement import InvoiceSettler, Settlement, SettleResult
from p2pgrid.agent.sharing import ShareDesk
from p2pgrid.agent.transit_desk import TransitDesk
from p2pgrid.billing import (
    METER_INTERVAL_S,
    BillingPeriod,
    PeriodClock,
    PeriodState,
    Tariff,
    charge_msat,
    model_ms,
)
from p2pgrid.errors import RetryableError
from p2pgrid.identity import MAX_DEVICE_INDEX, SiteIdentity
from p2pgrid.ledger import (
    AllowanceSale,
    Author,
    BalanceBook,
    Body,
    CarryOver,
    Curtailment,
    Entry,
    Invoice,
    LogStore,
    LogWriter,
    Membership,
    MeterReading,
    bill,
    decode_entry,
    invoices_of,
)
from p2pgrid.lightning import NodeWatch
from p2pgrid.market import (
    DEFAULT_WINDOW_DAYS,
    KEEP_LEFTOVER,
    CurvePlan,
    Flexibility,
    Forecast,
    LeftoverPolicy,
    Party,
    Priority,
    SurplusPolicy,
    deferred_wh,
    early_need_msat,
    forecast_period,
    leftover_msat,
    spare_msat,
)
from p2pgrid.meter import INTERVALS_PER_DAY, MeterSource, Reading
from p2pgrid.net import PeerRef

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """What an agent knows of itself."""

    name: str
    index: int
    site_id: str
    priority: Priority
    policy: SurplusPolicy
    utility_pubkey: str  # the utility's lnd node
    #: How much of its leftover allowance it sells near a period's end (2.9).
    leftover: LeftoverPolicy = KEEP_LEFTOVER


@dataclasses.dataclass
class AgentReport:
    """What the agent did, for the launcher and the tests."""

    intervals: int = 0
    resumed_intervals: int = 0  # read before a restart: not read again
    missed_intervals: int = 0  # passed while the agent was down: not logged
    consumed_wh: int = 0
    curtailed_intervals: int = 0
    deferred_wh: int = 0  # flexible load not drawn: its round cleared above its bid
    early_asks: int = 0  # share requests sized from the forecast, before running short
    overdraft_intervals: int = 0  # metered beyond the balance (a critical device's)
    site_shares_received_msat: int = 0  # from devices of the owner's other sites
    bought_wh: int = 0  # from neighbours
    offered_wh: int = 0  # to neighbours (reserved for a buyer; paid or not)
    shares_received_msat: int = 0
    carried_over_msat: int = 0
    #: Leftover allowance bought from site peers: the allowance of the sellers'
    #: ``allowance_sale`` entries naming this device, of the periods of the run,
    #: from its log (an earlier life's purchases too)
    allowance_bought_msat: int = 0
    #: ... and sold to them: the allowance of this device's own ``allowance_sale``
    #: entries of the periods of the run, from its log (an earlier life's too)
    allowance_sold_msat: int = 0
    settlements: list[tuple[int, str, int]] = dataclasses.field(default_factory=list)
    period_states: dict[int, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AgentParts:
    """What an agent works with; opened and closed by its owner
    (:func:`p2pgrid.agent.gateway.open_device`), in that order and the reverse."""

    store: LogStore
    writer: LogWriter
    replica: LogReplica
    peers: Peers
    node: Wallet
    paymaster: Paymaster
    #: Whether ``node`` answers (fed by its calls when it is a WatchedNode).
    watch: NodeWatch | None = None


@dataclasses.dataclass(frozen=True)
class Metering:
    """How the device's intervals are read and priced."""

    tariff: Tariff
    meter: MeterSource
    #: Run interval -> metering interval of the modelled year (see :func:`model_ms`).
    model_interval: Callable[[int], int]


class DeviceAgent:
    """The behaviour of one device; its parts are started and stopped by its owner."""

    def __init__(
        self,
        profile: DeviceProfile,
        parts: AgentParts,
        metering: Metering,
        clock: PeriodClock,
        *,
        config: AgentConfig | None = None,
        owner_sites: Mapping[str, SiteIdentity] | None = None,
        peer_logs: Mapping[bytes, Membership] | None = None,
        trade_logs: Mapping[bytes, Membership] | None = None,
    ) -> None:
        """``owner_sites``: the owner's sites by id (this one too), whose devices
        may share across sites; ``peer_logs``: their log memberships by site
        hash, to verify shares received from them; ``trade_logs``: those of the
        neighbouring sites it trades energy with (``energy.trade_sites``).
        :attr:`nodes` (the Lightning node of each device it deals with) is
        filled in before the run."""
        self.profile = profile
        self.config = config if config is not None else AgentConfig()
        self.owner_sites = dict(owner_sites or {})
        self.peer_logs = dict(peer_logs or {})
        self.clock = clock
        self.model_interval = metering.model_interval
        self.tariff = metering.tariff
        self.meter = metering.meter
        self.store = parts.store
        self.writer = parts.writer
        self.replica = parts.replica
        self.peers = parts.peers
        self.node = parts.node
        self.paymaster = parts.paymaster
        self.watch = parts.watch or NodeWatch(profile.name)
        self.book = BalanceBook(site_hash=self.store.membership.site_hash,
                                peer_sites=self.peer_logs)  # fmt: skip
        self._book_fed = False
        self._feeding = asyncio.Lock()  # the desks may ask before the run does
        self._unresolved = False  # a payment may have been left open while lnd was away
        self._rng = random.Random(profile.name)  # back-off jitter
        #: Each device's Lightning node (pubkey): where its shares and sales are paid.
        self.nodes: dict[Party, str] = {}
        self.name = profile.name
        self.report = AgentReport()
        self._history: list[Reading] = []
        self._interval = 0
        self._early_asked = -(10**9)  # the interval of the last early share request
        self._announced = 0  # own entries published up to this seq
        #: One announcement at a time: two concurrent calls (the run and a desk)
        #: would each publish the same new entries.
        self._announcing = asyncio.Lock()
        self.periods: dict[int, BillingPeriod] = {}  # the state machine of each period
        me = Party(profile.site_id, profile.index)
        self.desk = ShareDesk(
            me=me,
            host=self.peers,
            node=self.node,
            paymaster=self.paymaster,
            store=self.store,
            writer=self.writer,
            headroom=self.headroom,
            name=self.name,
            nodes=self.nodes,
            owner_sites=self.owner_sites,
            now=clock.now,
            config=self.config.share,
        )
        self.energy = EnergyDesk(
            me=me,
            host=self.peers,
            node=self.node,
            paymaster=self.paymaster,
            balance=self.logged_balance,
            name=self.name,
            nodes=self.nodes,
            replica=self.replica,
            announce=self.announce_new,
            now=clock.now,
            config=self.config.energy,
            book=self.book,
        )
        self.transit = TransitDesk(self.energy, trade_logs or {})
        self.allowance = AllowanceDesk(
            me=me,
            host=self.peers,
            node=self.node,
            paymaster=self.paymaster,
            leftover=self.leftover,
            name=self.name,
            nodes=self.nodes,
            announce=self.announce_new,
            now=clock.now,
            config=self.config.share,
        )
        self.settler = InvoiceSettler(
            device=profile.index,
            site_id=profile.site_id,
            store=self.store,
            writer=self.writer,
            node=self.node,
            paymaster=self.paymaster,
            tariff=self.tariff,
            utility_pubkey=profile.utility_pubkey,
            name=self.name,
            now=clock.now,
            config=self.config.settle,
            announce=functools.partial(self.announce_new, push=True),  # to every replica now
        )

    def install(self) -> None:
        """Answer share requests and energy bids from the site's devices."""
        self.desk.install()
        self.energy.install()
        self.transit.install()
        self.allowance.install()

    # -- money -------------------------------------------------------------------

    async def balance(self, period: int) -> int:
        """What this device may still spend in ``period``: its balance by its
        replica less its payments held in flight (paid on delivery, not settled
        yet: :meth:`~p2pgrid.ledger.BalanceBook.available`)."""
        await self._feed_book()
        return self.book.available(self.profile.index, period)

    async def logged_balance(self, period: int) -> int:
        """This device's balance in ``period`` by its replica (the fold's, kept up to date)."""
        await self._feed_book()
        return self.book.balance(self.profile.index, period)

    async def _feed_book(self) -> None:
        if not self._book_fed:
            async with self._feeding:
                if not self._book_fed:
                    await self.book.follow(self.store)
                    self._book_fed = True

    async def forecast(self, period: int, next_interval: int) -> Forecast:
        """This device's outlook from ``next_interval`` to the end of ``period``
        against its balance, from its readings (the meter's past included)."""
        # The history and the forecast count the meter's (modelled) intervals: the
        # time of day and the tariff are the modelled ones.
        end = self.model_interval(self.clock.first_interval(period + 1))
        start = self.model_interval(next_interval)
        balance = await self.balance(period)
        if start >= end:  # nothing left to meter in the period
            return Forecast(period, end, end, 0, 0, 0, balance, len(self._history))
        return forecast_period(
            self._history,
            balance_msat=balance,
            tariff=self.tariff,
            next_interval=start,
            period_bounds=(period, end),
        )

    async def headroom(self, period: int) -> int:
        """What this device can give away in ``period`` and still cover its own
        forecast for the rest of it (:func:`p2pgrid.market.spare_msat`)."""
        if period != self.clock.period_of(self._interval):
            return 0  # only the current period's budget is shared
        forecast = await self.forecast(period, self._interval + 1)
        return await self._spare(forecast, period, kept=True)

    async def _spare(self, forecast: Forecast, period: int, *, kept: bool) -> int:
        """2.2's spare of ``forecast``, never on budget received in ``period`` (shares,
        and allowance bought: it was short); ``kept``: less what is set aside for
        sale near the period's end and what open allowance offers hold (2.9)."""
        acc = self.book.account(self.profile.index, period)
        spare = spare_msat(
            forecast,
            min_samples=self.config.share.min_forecast_samples,
            received_msat=acc.received_msat + acc.allowance_bought_msat,
        )
        if not kept:
            return spare
        return max(0, spare - self._for_sale(spare) - self.allowance.held(period))

    def _for_sale(self, spare_msat: int) -> int:
        """The policy's share of ``spare_msat`` near the period's end, else 0."""
        return leftover_msat(
            spare_msat,
            self.profile.leftover,
            intervals_left=self._left_after(self._interval),
            window=self.config.share.leftover_window,
        )

    def _left_after(self, interval: int) -> int:
        """The intervals of ``interval``'s period after it."""
        return self.clock.first_interval(self.clock.period_of(interval) + 1) - interval - 1

    async def leftover(self, period: int) -> int:
        """What this device sells of its allowance of ``period`` now: its policy's
        share of its headroom near the period's end (docs/market.md 2.7, 2.9). The
        headroom is forecast from the current interval on (it may not be metered
        yet), so what the rest of the period needs is never sold."""
        if period != self.clock.period_of(self._interval) or self.profile.leftover.sell == 0:
            return 0
        forecast = await self.forecast(period, self._interval)
        return self._for_sale(await self._spare(forecast, period, kept=False))

    async def _buy_allowance(self, need_msat: int, period: int, peers: list[PeerRef]) -> int:
        """Buy leftover allowance from site peers for ``need_msat``, near the
        period's end only (docs/market.md 2.9)."""
        if self._left_after(self._interval) > self.config.share.leftover_window or not peers:
            return 0
        try:
            return await self.allowance.buy(need_msat, period, peers)
        except RetryableError as exc:
            self._node_away("buying allowance", exc)
            return 0

    def flexibility(self) -> Flexibility:
        """How much of this device's load can wait (its class; docs/market.md 2.8)."""
        tuning = self.config.energy
        flexible = tuning.deferrable_flex_pct if self.profile.priority is Priority.DEFERRABLE else 0
        return Flexibility(flexible, tuning.flex_top_pct, tuning.flex_floor_pct, tuning.flex_steps)

    def seed_history(self) -> None:
        """The meter's readings of the whole days (up to the forecast window)
        before the run's first interval: the device's own past, as a real meter
        keeps it, so the forecast knows every interval of its day from the
        start. Only whole days: a part of a day would price the hours it has
        not seen at the mean of those it has (the night's, for a run that
        starts in the morning). Nothing before the meter's interval 0."""
        first = self.model_interval(0)
        days = min(DEFAULT_WINDOW_DAYS, first // INTERVALS_PER_DAY)
        self._history = [
            self.meter.reading(m) for m in range(first - days * INTERVALS_PER_DAY, first)
        ]

    async def _write(self, body: Body, period: int) -> Entry:
        entry = await self.writer.append(body, period=period, timestamp_ms=self._now_ms())
        await self.announce_new()
        return entry

    def _now_ms(self) -> int:
        """Wall time of an entry: the clock's (the system's, but in tests)."""
        return int(self.clock.now() * 1000)

    async def announce_new(self, *, push: bool = False) -> None:
        """Publish this device's entries written since the last call (by the
        agent, its share desk or its settler); anti-entropy covers any loss.
        ``push``: also hand them directly, now, to the site's peers that the
        announcement does not reach at once (a period's payment: no replica waits
        for a relay or a heartbeat's gossip).

        Calls run one at a time (each entry is published once); a call that
        waited for another still pushes what was written before it was made,
        though the other published it."""
        me = Author.device(self.profile.index)
        since = self._announced  # a push hands on what follows, whoever publishes it
        async with self._announcing:
            head = self.store.heads().get(me)
            if head is None or head.seq <= since:
                return
            raws = await self.store.fetch_range(me, since + 1, head.seq)
            site = self.store.membership.site_hash
            entries = [decode_entry(raw, site) for raw in raws]
            fresh = [e for e in entries if e.seq > self._announced]
            if fresh:
                await self.replica.publish(fresh)
                self._announced = head.seq
            if push:
                await self.replica.push(entries)

    # -- the run -----------------------------------------------------------------

    async def recover(self) -> None:
        """Resolve every payment intent left open (by a crash) against lnd and log
        what was paid; before anything else is paid."""
        for intent in await self.paymaster.recover():
            log.info("[%s] recovered payment %s...: %s", self.name, intent.payment_hash[:16],
                     intent.state.value)  # fmt: skip
        await self.announce_new()

    async def _resolve_open(self) -> None:
        """Resolve the payment intents left open while lnd did not answer, if it
        answers now; else try again at the next interval."""
        try:
            await self.recover()
        except RetryableError as exc:
            self._unresolved = True
            log.info("[%s] open payments wait for lnd: %s", self.name, exc)
        else:
            self._unresolved = False

    async def _hand_receipts(self, period: int) -> int:
        """Hand the producers of neighbouring sites the receipts of purchases they
        have not answered (docs/market.md 6.3, step 4): after a restart, or a
        producer that was away. Returns how many are still unanswered."""
        devices = [p for p in self.peers.peers() if p.device_index <= MAX_DEVICE_INDEX]
        return await self.transit.hand_receipts(period, devices)

    async def _receipts_taken(self, period: int) -> None:
        """After ``period``'s close, hand again (with capped back-off, for at most
        ``config.settle.invoice_wait_s``) the receipts of its purchases across that
        no producer answered: a buyer restarted after its last interval has no
        later interval to hand them in."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.settle.invoice_wait_s
        fails = 0
        while await self._hand_receipts(period) > 0:
            fails += 1
            if loop.time() >= deadline:
                log.warning("[%s] receipts of period %d left unanswered", self.name, period)
                return
            delay = self.watch.backoff.delay(fails, self._rng)
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))  # back-off

    def _node_away(self, doing: str, exc: RetryableError) -> None:
        """lnd (or a peer) did not answer while ``doing``: skip it for now."""
        self._unresolved = True
        log.info("[%s] %s skipped this interval: %s", self.name, doing, exc)

    async def run(self, periods: int | None) -> AgentReport:
        """Meter every interval of ``periods`` periods, then settle the last invoices;
        with ``periods`` None, meter period after period until cancelled (stopped).

        Restarted on its data directory, it carries on from its own replica: an
        interval it already read is not read again (the log would refuse a second
        reading anyway); an interval that passed while it was down is *missed*:
        counted and logged here, never invented; a period whose end passed is
        closed and its invoice settled as usual (a paid one is not paid again).
        """
        # Started late (first start or restart): the intervals that passed are missed.
        resume = self.clock.current_interval()
        self.seed_history()
        await self.allowance.restore()  # allowance offers still open at a restart
        await self._resolve_open()
        read = await self._read_intervals()
        # Held sales (pay on delivery) live as long as the run; leaving it waits for them.
        async with self.energy.running(), asyncio.TaskGroup() as settlements:
            end = None if periods is None else self.clock.first_interval(periods)
            for interval in itertools.count() if end is None else range(end):
                await self.clock.until_interval(interval)
                self._interval = interval
                period = self.clock.period_of(interval)
                if period not in self.periods:
                    self.periods[period] = BillingPeriod(period, owner=self.name)
                if self._unresolved:
                    await self._resolve_open()
                if model_ms(self.model_interval(interval)) in read:
                    self.report.resumed_intervals += 1
                elif interval < resume:
                    self.report.missed_intervals += 1
                    log.warning("[%s] interval %d passed while down: missed", self.name, interval)
                else:
                    await self.meter_interval(interval)
                    await self.announce_new()  # also what the share desk wrote meanwhile
                if self.clock.is_last_of_period(interval):
                    await self.close_period(period)
                    settlements.create_task(
                        self.settle_when_invoiced(period, patient=periods is None)
                    )
                    # purchases across whose receipt no producer answered (a restart)
                    settlements.create_task(self._receipts_taken(period))
        self.report.period_states = {p: s.state.value for p, s in self.periods.items()}
        self.report.bought_wh = self.energy.bought_wh
        self.report.offered_wh = self.energy.offered_wh
        self.report.allowance_bought_msat = await self.allowance_bought(self.periods)
        self.report.allowance_sold_msat = await self.allowance_sold(self.periods)
        return self.report

    async def allowance_sold(self, periods: Collection[int]) -> int:
        """The allowance this device sold in ``periods``, by its own ``allowance_sale``
        entries in its replica (logged by this process or before a restart)."""
        return await self._allowance_sales(periods, sold=True)

    async def allowance_bought(self, periods: Collection[int]) -> int:
        """The allowance this device bought in ``periods``, by the sellers'
        ``allowance_sale`` entries naming it in its replica (taken from a receipt
        by this process or before a restart, or replicated)."""
        return await self._allowance_sales(periods, sold=False)

    async def _allowance_sales(self, periods: Collection[int], *, sold: bool) -> int:
        """The allowance of the ``allowance_sale`` entries of ``periods`` this device
        logged (``sold``) or that other devices logged naming it as the buyer."""
        me = self.writer.author
        sales = {  # once per payment hash, as the fold counts a sale
            e.body.payment_hash: e.body.allowance_msat
            for e in await self.store.entries(
                kinds=(AllowanceSale.KIND,), author=me if sold else None
            )
            if isinstance(e.body, AllowanceSale)
            and e.period in periods
            and (sold or (e.author != me and Author.device(e.body.buyer) == me))
        }
        return sum(sales.values())

    async def _read_intervals(self) -> set[int]:
        """Start times of the intervals this device has a reading of in its replica."""
        me = self.writer.author
        return {
            e.body.interval_start_ms
            for e in await self.store.entries()
            if e.author == me and isinstance(e.body, MeterReading)
        }

    async def meter_interval(self, interval: int) -> None:
        period = self.clock.period_of(interval)
        modelled = self.model_interval(interval)
        reading = self.meter.reading(modelled)
        consumed = max(0, reading.consumed_wh - reading.produced_wh)  # own production first
        export = max(0, reading.produced_wh - reading.consumed_wh)
        start_ms = model_ms(modelled)
        # Devices only: the site's utility (or owner) host is a peer of the log topic.
        devices = [p for p in self.peers.peers() if p.device_index <= MAX_DEVICE_INDEX]
        peers = [p for p in devices if p.site_id == self.profile.site_id]
        if consumed > 0:  # a neighbour's surplus first: cheaper than the grid
            try:
                consumed -= await self._buy(consumed, interval, modelled, peers)
                if consumed > 0 and self.transit.neighbours:  # then a neighbouring site's
                    tuning = self.config.energy
                    after = tuning.round_s + tuning.across_after_s
                    await self.clock.until(self.clock.time_of(interval) + after)
                    consumed -= await self.transit.buy(
                        consumed,
                        period=period,
                        interval=interval,
                        rate_msat_per_kwh=self.tariff.rate_msat_per_kwh(modelled),
                        fee_msat_per_kwh=self.tariff.grid_fee_msat_per_kwh,
                        peers=devices,
                    )
            except RetryableError as exc:
                self._node_away("buying from neighbours", exc)
        cost = charge_msat(self.tariff, [(modelled, consumed)])
        if cost > 0 and await self.balance(period) < cost:
            got = await self._ask(cost - await self.balance(period), period, peers)
            self.report.shares_received_msat += got
            others = [
                p
                for p in devices
                if p.site_id != self.profile.site_id and p.site_id in self.owner_sites
            ]
            if others and await self.balance(period) < cost:  # network to network
                got = await self._ask(cost - await self.balance(period), period, others)
                self.report.shares_received_msat += got
                self.report.site_shares_received_msat += got
            if await self.balance(period) < cost:  # leftover allowance of a site peer
                await self._buy_allowance(cost - await self.balance(period), period, peers)
            if await self.balance(period) < cost and self.profile.priority is not Priority.CRITICAL:
                await self._write(
                    Curtailment(self.profile.index, start_ms, METER_INTERVAL_S, 0), period
                )
                log.info("[%s] curtailed interval %d: no budget, no offer", self.name, interval)
                self.report.curtailed_intervals += 1
                consumed, cost = 0, 0
            left = await self.balance(period)
            if left < cost:  # a critical device runs on: the owner must know
                self.report.overdraft_intervals += 1
                if self.report.overdraft_intervals == 1:
                    log.warning(
                        "[%s] OVERDRAFT: interval %d costs %d msat, the balance covers %d "
                        "(allocation and shares spent; the utility invoices the rest)",
                        self.name,
                        interval,
                        cost,
                        left,
                    )
        # The forecast learns the device's need (its meter), not what it was let
        # draw: a curtailed interval must not make it look as if it needs nothing.
        self._history.append(reading)
        self.report.intervals += 1
        # Every interval is logged, 0 Wh too: the utility knows a period is complete
        # once each device's reading of its last interval is in its replica.
        await self._write(MeterReading(start_ms, METER_INTERVAL_S, consumed, cost), period)
        self.report.consumed_wh += consumed
        await self.energy.offer(  # this interval's surplus, for sale during the next one
            period=self.clock.period_of(interval + 1),
            interval=interval + 1,
            export_wh=export,
            rate_msat_per_kwh=self.tariff.rate_msat_per_kwh(modelled + 1),
        )
        if not self.clock.is_last_of_period(interval):
            await self._ask_early(interval, peers)
            await self._buy_allowance_early(interval, peers)

    async def _buy(self, need_wh: int, interval: int, modelled: int, peers: list[PeerRef]) -> int:
        """Bid this interval's need in its pooled round with the device's curve,
        settle the round, and return the Wh not drawn from the grid: bought from
        neighbours, or deferred (flexible load the round priced out)."""
        period = self.clock.period_of(interval)
        rest = await self.forecast(period, interval + 1)
        tuning = self.config.share
        plan: CurvePlan | None = await self.energy.bid_plan(
            need_wh,
            period=period,
            interval=interval,
            rate_msat_per_kwh=self.tariff.rate_msat_per_kwh(modelled),
            flex=self.flexibility(),
            # flexible load leaves what the rest of the period is forecast to cost
            reserve_msat=rest.cost_msat if rest.samples >= tuning.min_forecast_samples else 0,
        )
        if plan is None:
            return 0
        # the pooled round closes round_s into the interval
        await self.clock.until(self.clock.time_of(interval) + self.config.energy.round_s)
        bought = await self.energy.settle_round(period=period, interval=interval, peers=peers)
        price = await self.energy.round_price(period=period, interval=interval)
        deferred = 0 if price is None else deferred_wh(plan, price)
        if deferred:
            drawn = need_wh - deferred
            start_ms = model_ms(modelled)
            power_w = drawn * 3600 // METER_INTERVAL_S
            await self._write(
                Curtailment(self.profile.index, start_ms, METER_INTERVAL_S, power_w), period
            )
            self.report.deferred_wh += deferred
            log.info(
                "[%s] deferred %d of %d Wh in interval %d: the round cleared at %d msat/kWh",
                self.name,
                deferred,
                need_wh,
                interval,
                price,
            )
        if bought + deferred > need_wh:  # a round's price is the one it was settled at
            log.warning(
                "[%s] interval %d: bought %d and deferred %d Wh of a need of %d Wh",
                self.name,
                interval,
                bought,
                deferred,
                need_wh,
            )
            return need_wh
        return bought + deferred

    async def _ask_early(self, interval: int, peers: list[PeerRef]) -> None:
        """Ask for the forecast shortfall of the rest of the period before it
        bites, at most once every ``early_ask_intervals`` intervals."""
        tuning = self.config.share
        if not peers or self._early_asked + tuning.early_ask_intervals > interval:
            return
        period = self.clock.period_of(interval)
        rest = await self.forecast(period, interval + 1)
        need = early_need_msat(rest, min_samples=tuning.min_forecast_samples)
        if need < MIN_PAYMENT_MSAT:
            return
        self._early_asked = interval
        self.report.early_asks += 1
        log.info("[%s] forecast short by %d msat this period: asking early", self.name, need)
        self.report.shares_received_msat += await self._ask(need, period, peers)

    async def _buy_allowance_early(self, interval: int, peers: list[PeerRef]) -> None:
        """Near the period's end, buy leftover allowance for the forecast shortfall
        of the rest of the period that shares did not cover."""
        if self._left_after(interval) > self.config.share.leftover_window:
            return
        period = self.clock.period_of(interval)
        rest = await self.forecast(period, interval + 1)
        need = early_need_msat(rest, min_samples=self.config.share.min_forecast_samples)
        if need >= MIN_PAYMENT_MSAT:
            await self._buy_allowance(need, period, peers)

    async def _ask(self, need_msat: int, period: int, peers: list[PeerRef]) -> int:
        try:
            return await self.desk.ask(need_msat, period, peers)
        except RetryableError as exc:
            self._node_away("asking for a share", exc)
            return 0

    async def close_period(self, period: int) -> None:
        state = self.periods[period]
        state.advance(PeriodState.CLOSING)  # no new trades of this period from here
        await self.energy.resolved(period)  # held sale payments land first (bounded)
        await self.allowance.close(period)  # paid allowance offers logged, the rest cancelled
        # Resolved intents of periods before the previous one are of no more use
        # (the invoice of ``period - 1``, paid during ``period``, stays a period).
        await self.paymaster.intents.prune_intents(before=period - 1)
        # A share of this period in flight lands first; no allowance sale is
        # logged between the balance read and the carry-over (a sale logged
        # after the read would leave the carry-over unfunded).
        async with self.desk.giving, self.allowance.selling:
            # An allowance offer still open here (its lnd did not answer the
            # close) may be paid: what it holds stays in the period, so that
            # its sale, logged in it at a later close, is funded; if it is
            # cancelled instead, that allowance stays in the closed period.
            left = max(0, await self.balance(period) - self.allowance.held(period))
            if await self._carried_over(period):
                # Closed before a restart (or a kill during the close): its
                # carry-over was written then. A credit that landed after it (a
                # share or sale logged late by its payer) stays in this period.
                if left > 0:
                    log.warning(
                        "[%s] period %d was closed before; %d msat credited after its "
                        "carry-over stay in it",
                        self.name,
                        period,
                        left,
                    )
            elif left > 0:  # under either policy: unspent budget is never left behind
                await self._write(CarryOver(left), period)
                self.report.carried_over_msat += left
                log.info("[%s] carried %d msat over into period %d", self.name, left, period + 1)
        state.advance(PeriodState.CLOSED)  # waiting for the utility's invoice

    async def _carried_over(self, period: int) -> bool:
        """Does the log hold this device's ``carry_over`` of ``period``? (The
        chain's latest period says nothing: a producer writes its next period's
        first ``order`` before it closes this one.)"""
        me = self.writer.author
        return any(
            e.author == me and isinstance(e.body, CarryOver)
            for e in await self.store.entries(period=period)
        )

    async def _invoiced(self, period: int) -> None:
        """Return once the utility's invoice of ``period`` for this device is in the replica."""
        me = self.profile.index
        while True:
            seen = self._utility_seq()  # before reading: no write slips between
            # The period's invoices only: every invoice the utility logs wakes
            # every device of the site, so a read of the whole period here
            # would cost each device's wait O(devices x entries).
            entries = await self.store.entries(period=period, kinds=(Invoice.KIND,))
            if invoices_of(entries, device=me, period=period):
                return
            await self.replica.wait_until(self._utility_wrote_since(seen))

    def _utility_wrote_since(self, seen: int) -> Callable[[], bool]:
        return lambda: self._utility_seq() > seen

    def _utility_seq(self) -> int:
        head = self.store.heads().get(Author.utility())
        return head.seq if head is not None else 0

    async def _settle(self, period: int) -> list[SettleResult] | None:
        """Settle ``period``, waiting (with capped back-off, at most
        ``config.settle.node_away_wait_s``) while lnd does not answer; None if it never did.
        Each try first resolves open intents by payment hash: an invoice whose
        payment left before lnd went away is logged, not paid again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.settle.node_away_wait_s
        fails = 0
        while True:
            try:
                await self.recover()
                return await self.settler.settle(period, timestamp_ms=self._now_ms())
            except RetryableError as exc:
                fails += 1
                if loop.time() >= deadline:
                    return None
                log.info("[%s] settling period %d waits for lnd: %s", self.name, period, exc)
                delay = self.watch.backoff.delay(fails, self._rng)
                await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))  # back-off

    async def settle_when_invoiced(
        self, period: int, *, patient: bool = False
    ) -> list[SettleResult]:
        """Wait for the utility's invoice of ``period`` in the replica, then settle it.

        A device that owes nothing for the period (by its own replica) expects no
        invoice. One whose invoice has not come after ``invoice_wait_s`` (the
        utility, or the way to it, cut off across the period's end) says so; if
        ``patient`` (a deployed agent) it waits on and pays it whenever it comes, so
        that a cut changes when a period is paid, never whether; else (a run of a
        given number of periods, which must end) it reports ``no_invoice``."""
        me, tuning = self.profile.index, self.config.settle
        entries = await self.store.entries(period=period, author=self.writer.author)
        if bill(entries, device=me, period=period, tariff=self.tariff).amount_msat == 0:
            self.periods[period].advance(PeriodState.SETTLED)  # nothing to pay
            return []
        try:
            async with asyncio.timeout(tuning.invoice_wait_s):
                await self._invoiced(period)
        except TimeoutError:
            log.warning("[%s] no invoice for period %d after %.0f s%s", self.name, period,
                        tuning.invoice_wait_s, "; still waiting" if patient else "")  # fmt: skip
            if not patient:
                self.report.settlements.append((period, "no_invoice", 0))
                return []
            await self._invoiced(period)
            log.info("[%s] the invoice of period %d came late", self.name, period)
        for attempt in range(1, tuning.pay_attempts + 1):
            got = await self._settle(period)
            if got is None:
                log.error("[%s] invoice of period %d unpaid: lnd away for %.0f s", self.name,
                          period, tuning.node_away_wait_s)  # fmt: skip
                self.report.settlements.append((period, "node_away", 0))
                return []
            results = got
            await self.announce_new(push=True)  # the payment: to every replica now
            if all(r.outcome is not Settlement.FAILED for r in results):
                break
            if attempt < tuning.pay_attempts:  # lnd could not pay: retry (same hash: never twice)
                await asyncio.sleep(tuning.pay_retry_s * attempt)  # a retry delay, not a sync
        for result in results:
            self.report.settlements.append((period, result.outcome.value, result.fee_msat))
            if result.outcome is Settlement.FAILED:
                log.error(
                    "[%s] invoice of period %d unpaid after %d attempts: %s",
                    self.name,
                    period,
                    tuning.pay_attempts,
                    result.detail,
                )
        if all(r.outcome is not Settlement.FAILED for r in results):
            self.periods[period].advance(PeriodState.SETTLED)
        return results
