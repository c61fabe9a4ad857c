"""The utility node: one replica per site, per-period budgets and invoices.

For each site the utility keeps a replica of the site's log (it signs there with
the key the site's owner enrolled for the utility, see
:meth:`p2pgrid.scenario.UtilitySpec.signer`). It grants each site's budget for a
period (a ``budget`` entry, once: a restarted utility finds it in its replica).
Each site runs on its own: a site waiting at a period's end holds no other site.

At a period's end it invoices each device (:class:`p2pgrid.utility.Invoicer`:
concurrently; one invoice per device and period, never a second one after a
restart) as soon as the device's period is *complete* in its replica: the
replica holds the device's reading of the period's last interval, or any entry
of the device in a later period. Either one means no more readings of the
period can come: a chain is replicated in order, and a reading never names a
period lower than an earlier entry of its chain (only the money kinds may,
:data:`p2pgrid.ledger.periods.OBLIGATION_KINDS`; the writer refuses it and
every replica rejects it). A device that was down at the period's end never
logs that last interval, but its first entry after it comes back completes the
period. Each invoice is pushed to its device as soon as it is logged (besides
being announced on the site's topic).

``readings_wait_s`` after the period's end the utility grants the next period's
budget. The wait runs from the period's end on the clock, not from the close's
start: a utility restarted within it waits only what is left of it, one
restarted after it not at all (and one that had closed the period before the
restart, the next period's budget in its log, issues what is missing at once).
An invoice of the period in its log does not mean the wait was over: complete
devices are invoiced as soon as they are complete, during the wait. Then:

- run until stopped (``run(None)``, the deployed ``utility run``): the devices
  still incomplete are named in one WARNING and waited for without a deadline
  (woken by each change of the log, asking the peers to sync), then invoiced in
  full; the other devices, the next periods and the other sites go on. An
  invoice may follow the next period's budget on the utility's chain (an
  ``invoice`` states an obligation; docs/protocol-log.md, section 4). A device
  that never comes back is left open until the owner revokes it.
- a fixed number of periods (``run(n)``: the demo, tests): the incomplete
  devices are invoiced for what is logged, so that the run ends; but only once
  the replica synced with the site after the period's end: from the period's
  end the utility runs rounds begun then with a few of the site's libp2p hosts
  at once (each within a few seconds, the first that succeeds counts; after a
  back-off, other hosts), so that a host that cannot open a stream under load
  does not hold the invoices.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import random
import time
from collections.abc import Callable

from p2pgrid.backoff import Backoff
from p2pgrid.billing import BillingPeriod, PeriodClock, PeriodState
from p2pgrid.ledger import Author, Budget, Entry, Invoice, LogStore, LogWriter, MeterReading
from p2pgrid.replication import NetReplica, ReplicaState
from p2pgrid.utility.invoicer import Invoicer, InvoiceStatus

log = logging.getLogger(__name__)

#: How long the utility waits for a device's last reading of a period, by default
#: (the scenario's ``[utility] readings_wait_s``).
READINGS_WAIT_S = 60.0
#: Past the readings wait, how often the utility looks whether its replica synced.
RECHECK_S = 1.0
#: After a period's end, the site's libp2p hosts the utility syncs with at once
#: (one device address each); the first round that succeeds ends the attempt.
SYNC_FANOUT = 3
#: Deadline of the first such round: a stream that cannot open (a host under
#: load) costs this, not the sync request timeout (30 s) nor a whole period. It
#: doubles with each attempt that failed, up to :data:`SYNC_ATTEMPT_MAX_S`: a
#: site whose one host answers in more than 5 s (a gateway at load 13) is still
#: synced with.
SYNC_ATTEMPT_S = 5.0
SYNC_ATTEMPT_MAX_S = 30.0
#: Between attempts that all failed (or found no host), a capped back-off.
SYNC_BACKOFF = Backoff(initial_s=0.25, max_s=5.0)


@dataclasses.dataclass
class SiteDesk:
    """The utility's parts for one site."""

    name: str
    budget_msat: int
    #: The devices whose last reading of a period it waits for, as the site
    #: was when the utility started (see :meth:`awaited_devices`).
    devices: tuple[int, ...]
    store: LogStore
    writer: LogWriter
    replica: NetReplica
    invoicer: Invoicer

    def __post_init__(self) -> None:
        self._enrolled_at_start = frozenset(self.store.roster.devices())

    def awaited_devices(self) -> list[int]:
        """The devices to wait for now: ``devices``, and those the owner enrolled
        since the start (owner entries reach a running utility: its entries
        file, replication), less those revoked (their last reading never comes)."""
        roster = self.store.roster.devices()
        enrolled_since = set(roster) - self._enrolled_at_start
        return sorted(
            d for d in {*self.devices, *enrolled_since} if d not in roster or not roster[d].revoked
        )


def _length(site: SiteDesk, device: int) -> int:
    return site.store.next_position(Author.device(device))[0] - 1


@dataclasses.dataclass(frozen=True)
class _Chains:
    """The awaited devices of a site and the lengths of their chains, at a time."""

    awaited: tuple[int, ...]
    lengths: dict[int, int]

    @classmethod
    def of(cls, site: SiteDesk) -> _Chains:
        awaited = tuple(site.awaited_devices())
        return cls(awaited, {d: _length(site, d) for d in awaited})

    def moved(self, site: SiteDesk, incomplete: list[int]) -> Callable[[], bool]:
        """Whether what can complete one of ``incomplete`` changed since: its chain
        grew, or the awaited devices changed (a revocation). Nothing else wakes a
        waiter: a device that never comes back costs no rereads of the log."""
        return lambda: (
            tuple(site.awaited_devices()) != self.awaited
            or any(_length(site, d) != self.lengths.get(d) for d in incomplete)
        )


def _woken(
    moved: Callable[[], bool], blind: bool, synced: Callable[[], bool]
) -> Callable[[], bool]:
    """What wakes a waiter of :meth:`UtilityNode._invoice_complete`: a move of the
    incomplete devices' chains, or (``blind``: past the deadline, not synced yet)
    the replica's first sync since the period ended."""
    return lambda: moved() or (blind and synced())


class UtilityNode:
    def __init__(
        self,
        *,
        clock: PeriodClock,
        model_ms: Callable[[int], int],
        sites: list[SiteDesk],
        readings_wait_s: float = READINGS_WAIT_S,
    ) -> None:
        self.clock = clock
        self.readings_wait_s = readings_wait_s
        self.model_ms = model_ms
        self.sites = sites
        self.invoiced: list[Entry] = []
        self.states: dict[tuple[str, int], BillingPeriod] = {}  # closed periods per site

    async def _write_budget(self, site: SiteDesk, period: int) -> None:
        """Grant the period's budget unless this replica holds it (a restart)."""
        me = site.writer.author
        for e in await site.store.entries(period=period):
            if e.author == me and isinstance(e.body, Budget):
                return
        entry = await site.writer.append(
            Budget(site.budget_msat), period=period, timestamp_ms=int(time.time() * 1000)
        )
        await site.replica.publish([entry])

    async def run(self, periods: int | None) -> None:
        """Invoice ``periods`` periods (None: period after period until cancelled),
        each site on its own."""
        for site in self.sites:
            await self._write_budget(site, 0)
        async with asyncio.TaskGroup() as tasks:
            for site in self.sites:
                tasks.create_task(self._run_site(site, periods))

    async def _run_site(self, site: SiteDesk, periods: int | None) -> None:
        # ``late``: in a run until stopped, the devices still incomplete at a
        # period's close are waited for there while the next periods go on.
        async with asyncio.TaskGroup() as late:
            for period in itertools.count() if periods is None else range(periods):
                last = self.clock.first_interval(period + 1) - 1
                await self.clock.until_interval(last + 1)
                await self._close(site, period, last, periods, late)

    async def _close(
        self,
        site: SiteDesk,
        period: int,
        last: int,
        periods: int | None,
        late: asyncio.TaskGroup,
    ) -> None:
        state = BillingPeriod(period, owner=f"utility/{site.name}")
        state.advance(PeriodState.CLOSING)  # the period's last interval has passed
        closed = await self._closed_before(site, period)
        if closed:
            log.info(
                "[utility] %s period %d: closed before a restart; issuing what is missing",
                site.name,
                period,
            )
        # The readings wait runs from the period's end, wherever the close starts.
        left_s = self.clock.time_of(last + 1) + self.readings_wait_s - self.clock.now()
        until = asyncio.get_running_loop().time() + (0.0 if closed else max(0.0, left_s))
        if periods is None:
            incomplete = await self._invoice_complete(site, period, last, until=until)
            if incomplete:
                log.warning(
                    "[utility] %s period %d: no last reading yet from devices %s; "
                    "invoicing each when its readings are in, the rest goes on",
                    site.name,
                    period,
                    incomplete,
                )
                late.create_task(self._finish(site, period, last, state))
        else:
            # Past the readings wait, only a replica synced since the period's
            # end is invoiced from (unless it closed the period before a restart).
            synced = asyncio.Event()
            async with asyncio.TaskGroup() as syncing:
                sync = syncing.create_task(self._sync_after_end(site, period, synced))
                incomplete = await self._invoice_complete(
                    site, period, last, until=until, synced=lambda: closed or synced.is_set()
                )
                sync.cancel()  # done, or not needed: every device is complete or synced
            if incomplete:
                log.warning(
                    "[utility] %s period %d: no last reading from devices %s; "
                    "invoicing what is logged",
                    site.name,
                    period,
                    incomplete,
                )
                await self.issue(site, period)
        if not incomplete or periods is not None:
            state.advance(PeriodState.CLOSED)  # invoiced; agents now check and pay
            self.states[(site.name, period)] = state
        if periods is None or period + 1 < periods:
            await self._write_budget(site, period + 1)

    async def _finish(self, site: SiteDesk, period: int, last: int, state: BillingPeriod) -> None:
        """Invoice ``period``'s devices that were incomplete at its close, each as
        its readings come in (a run until stopped: no deadline)."""
        if await self._invoice_complete(site, period, last, until=None):
            return  # the replica stopped
        state.advance(PeriodState.CLOSED)
        self.states[(site.name, period)] = state
        log.info("[utility] %s period %d: every device invoiced", site.name, period)

    async def _sync_after_end(self, site: SiteDesk, period: int, synced: asyncio.Event) -> None:
        """Sync the replica with the site once after ``period``'s end, then set
        ``synced``: rounds begun now, with up to :data:`SYNC_FANOUT` of the site's
        hosts at once, each within :data:`SYNC_ATTEMPT_S` (doubling per failed
        attempt); the first that succeeds wins (the others are cancelled). If all
        fail, the next attempt, after a back-off, asks other hosts at random: one
        host that cannot open a stream holds the invoices no longer than one
        attempt when the site has others."""
        rng = random.Random()
        deadline = Backoff(initial_s=SYNC_ATTEMPT_S, max_s=SYNC_ATTEMPT_MAX_S)
        for fails in itertools.count(1):
            peers = site.replica.host_peers(SYNC_FANOUT)
            if peers and await self._first_sync(site, peers, deadline.ceiling(fails)):
                synced.set()
                return
            if fails == 1 or fails & (fails - 1) == 0:
                log.info(
                    "[utility] %s period %d: no sync yet after the period's end (%d attempts, "
                    "hosts tried now: %s); trying again",
                    site.name,
                    period,
                    fails,
                    peers,
                )
            await asyncio.sleep(SYNC_BACKOFF.delay(fails, rng))  # a back-off timer

    @staticmethod
    async def _first_sync(site: SiteDesk, peers: list[str], timeout_s: float) -> bool:
        """A round with each of ``peers`` at once, each within ``timeout_s``:
        whether one succeeded (the rounds still running then are cancelled)."""
        async with asyncio.TaskGroup() as rounds:
            tries = [
                rounds.create_task(site.replica.sync_once(peer, timeout_s=timeout_s))
                for peer in peers
            ]
            for done in asyncio.as_completed(tries):
                if await done:
                    for task in tries:
                        task.cancel()
                    return True
        return False

    async def issue(
        self, site: SiteDesk, period: int, *, skip: frozenset[int] = frozenset()
    ) -> list[Entry]:
        """Invoice ``period``'s devices of ``site`` that have no invoice yet, but
        those in ``skip`` (concurrently), and deliver each invoice entry as soon as
        it is logged: announced on the site's log topic, and pushed to its device's
        host over a direct stream if the announcement does not reach that host at
        once (docs/protocol-log.md, section 6.1); gossip and anti-entropy carry it
        where the push did not get through. Returns the entries written now."""

        async def deliver(entry: Entry) -> None:
            await site.replica.publish([entry])
            if isinstance(entry.body, Invoice):
                await site.replica.push([entry], site.replica.member_peers(entry.body.device))

        entries = await site.invoicer.invoice_period(
            period, timestamp_ms=int(time.time() * 1000), deliver=deliver, skip=skip
        )
        self.invoiced.extend(entries)
        return entries

    async def _closed_before(self, site: SiteDesk, period: int) -> bool:
        """Whether this utility closed ``period`` before (it was restarted): its log
        holds the next period's budget, granted once the readings wait was over
        and the period invoiced (a run until stopped still waits for the devices
        that were incomplete then). An invoice of the period alone says nothing
        of the wait: a complete device is invoiced during it."""
        me = site.writer.author
        return any(
            e.author == me and isinstance(e.body, Budget)
            for e in await site.store.entries(period=period + 1)
        )

    async def _invoice_complete(
        self,
        site: SiteDesk,
        period: int,
        last: int,
        *,
        until: float | None,
        synced: Callable[[], bool] = lambda: True,
    ) -> list[int]:
        """Invoice each device of ``period`` as soon as its period is complete in
        the replica, until all are or the loop's time ``until`` (None: no
        deadline, until the replica stops); returns the devices still incomplete
        then. Past ``until`` it also waits for ``synced()`` (checked whenever the
        replica ends a sync, at least every :data:`RECHECK_S`): a replica that
        synced with nobody since the period ended (a utility just restarted, its
        devices not redialled yet, or its hosts too loaded to open a stream)
        knows nothing of the period's end."""
        loop = asyncio.get_running_loop()
        blind = False
        while True:
            seen = _Chains.of(site)  # before reading: no change slips between
            incomplete = await self._incomplete(site, period, last)
            await self.issue(site, period, skip=frozenset(incomplete))
            if not incomplete:
                return []
            timeout: float | None = None
            if until is not None:
                if loop.time() >= until:
                    if synced():
                        return incomplete
                    if not blind:
                        blind = True
                        log.warning(
                            "[utility] %s period %d: no sync with any device since the "
                            "period ended; waiting for one before invoicing",
                            site.name,
                            period,
                        )
                # Woken by a change of the log and, past the deadline while not
                # synced, by the end of a sync; look again every RECHECK_S anyway.
                timeout = max(until - loop.time(), RECHECK_S)
            # One address per host: a hub's devices answer from one store.
            for peer in site.replica.host_peers():
                site.replica.request_sync(peer)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await site.replica.wait_until(
                        _woken(seen.moved(site, incomplete), blind, synced)
                    )
            if until is None and site.replica.state is ReplicaState.STOPPED:
                return incomplete  # shutting down: nothing more comes (a restart waits again)

    async def _incomplete(self, site: SiteDesk, period: int, last: int) -> list[int]:
        """The awaited devices whose ``period`` is not complete in the replica:
        neither their reading of its ``last`` interval nor any entry of a later
        period (their chain's period floor, see the module docstring) is in."""
        last_ms = self.model_ms(last)
        have = {
            e.author.index
            for e in await site.store.entries(period=period)
            if isinstance(e.body, MeterReading)
            and e.body.interval_start_ms == last_ms
            and e.author != Author.utility()
        }
        return [
            d
            for d in site.awaited_devices()
            if d not in have and site.store.next_position(Author.device(d))[3] <= period
        ]

    async def statuses(self, period: int) -> list[InvoiceStatus]:
        out: list[InvoiceStatus] = []
        for site in self.sites:
            out += await site.invoicer.status(period)
        return out
