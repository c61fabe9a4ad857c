"""The utility node: one replica per site, per-period budgets and invoices.

For each site the utility keeps a replica of the site's log (it signs there with
the key the site's owner enrolled for the utility, see
:meth:`p2pgrid.scenario.UtilitySpec.signer`). It grants each site's budget for a
period (a ``budget`` entry, once: a restarted utility finds it in its replica),
and at the period's end waits until every device's
reading of the period's last interval is in its replica (chains are replicated
in order, so all earlier readings are there too), for at most
``readings_wait_s`` (a device that is down then is invoiced for what is logged,
once the replica synced with some device after the period's end),
then invoices each device (:class:`p2pgrid.utility.Invoicer`: concurrently;
devices it invoiced before a restart are not invoiced again), pushes each invoice
to its device as soon as it is logged (besides announcing it on the site's topic)
and grants the next period's budget.

A restarted utility (same data directory, same start time) closes every period
whose end has passed again: one it had begun to invoice before (an invoice of
the period or the next period's budget is in its log) is not waited for a
second time, only its missing invoices are issued, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable

from p2pgrid.billing import BillingPeriod, PeriodClock, PeriodState
from p2pgrid.ledger import Author, Budget, Entry, Invoice, LogStore, LogWriter, MeterReading
from p2pgrid.replication import NetReplica
from p2pgrid.utility.invoicer import Invoicer, InvoiceStatus

log = logging.getLogger(__name__)

#: How long the utility waits for a device's last reading of a period, by default
#: (the scenario's ``[utility] readings_wait_s``).
READINGS_WAIT_S = 60.0
#: Past the readings wait, how often the utility looks whether its replica synced.
RECHECK_S = 1.0


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


def _changed_since(store: LogStore, digest: bytes) -> Callable[[], bool]:
    return lambda: store.digest() != digest


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
        """Invoice ``periods`` periods (None: period after period until cancelled)."""
        for site in self.sites:
            await self._write_budget(site, 0)
        for period in itertools.count() if periods is None else range(periods):
            last = self.clock.first_interval(period + 1) - 1
            await self.clock.until_interval(last + 1)
            async with asyncio.TaskGroup() as tasks:
                for site in self.sites:
                    tasks.create_task(self._close(site, period, last, periods))

    async def _close(self, site: SiteDesk, period: int, last: int, periods: int | None) -> None:
        state = BillingPeriod(period, owner=f"utility/{site.name}")
        state.advance(PeriodState.CLOSING)  # the period's last interval has passed
        if await self._begun_before(site, period):
            log.info(
                "[utility] %s period %d: invoiced before a restart; issuing what is missing",
                site.name,
                period,
            )
        else:
            await self._wait_for_readings(site, period, last)
        await self.issue(site, period)
        state.advance(PeriodState.CLOSED)  # invoiced; agents now check and pay
        self.states[(site.name, period)] = state
        if periods is None or period + 1 < periods:
            await self._write_budget(site, period + 1)

    async def issue(self, site: SiteDesk, period: int) -> list[Entry]:
        """Invoice ``period``'s devices of ``site`` that have no invoice yet
        (concurrently) and deliver each invoice entry as soon as it is logged:
        announced on the site's log topic, and pushed to its device's host over a
        direct stream if the announcement does not reach that host at once
        (docs/protocol-log.md, section 6.1); gossip and anti-entropy carry it
        where the push did not get through. Returns the entries written now."""

        async def deliver(entry: Entry) -> None:
            await site.replica.publish([entry])
            if isinstance(entry.body, Invoice):
                await site.replica.push([entry], site.replica.member_peers(entry.body.device))

        entries = await site.invoicer.invoice_period(
            period, timestamp_ms=int(time.time() * 1000), deliver=deliver
        )
        self.invoiced.extend(entries)
        return entries

    async def _begun_before(self, site: SiteDesk, period: int) -> bool:
        """Whether this utility began invoicing ``period`` before (it was restarted):
        its log holds an invoice of the period or the next period's budget. The
        readings wait was over then; waiting again would only delay the rest."""
        me = site.writer.author
        for p, kind in ((period, Invoice), (period + 1, Budget)):
            if any(
                e.author == me and isinstance(e.body, kind)
                for e in await site.store.entries(period=p)
            ):
                return True
        return False

    async def _wait_for_readings(self, site: SiteDesk, period: int, last: int) -> None:
        """Wait until every device's last reading of ``period`` is in the replica,
        for at most ``readings_wait_s``; and past that, until the replica completed
        one anti-entropy round since this wait began: a replica that synced with
        nobody since (a utility just restarted, its devices not redialled yet)
        knows nothing of the period's end, and invoicing from it would bill less
        than was logged, or nothing."""
        last_ms = self.model_ms(last)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.readings_wait_s
        rounds = site.replica.stats().rounds
        blind = False
        while True:
            seen = site.store.digest()  # before reading: no change slips between
            missing = await self._missing_readings(site, period, last_ms)
            if not missing:
                return
            if loop.time() >= deadline:
                if site.replica.stats().rounds > rounds:
                    log.warning(
                        "[utility] %s period %d: no last reading from devices %s; "
                        "invoicing what is logged",
                        site.name,
                        period,
                        missing,
                    )
                    return
                if not blind:
                    blind = True
                    log.warning(
                        "[utility] %s period %d: no sync with any device since the "
                        "period ended; waiting for one before invoicing",
                        site.name,
                        period,
                    )
            for peer in site.replica.host.peers():
                site.replica.request_sync(peer.peer_id)
            # Woken by a change of the log; past the deadline, a round that appended
            # nothing does not wake it: look again every RECHECK_S (a timer).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(deadline - loop.time(), RECHECK_S)):
                    await site.replica.wait_until(_changed_since(site.store, seen))

    async def _missing_readings(self, site: SiteDesk, period: int, last_ms: int) -> list[int]:
        have = {
            e.author.index
            for e in await site.store.entries(period=period)
            if isinstance(e.body, MeterReading)
            and e.body.interval_start_ms == last_ms
            and e.author != Author.utility()
        }
        return [d for d in site.awaited_devices() if d not in have]

    async def statuses(self, period: int) -> list[InvoiceStatus]:
        out: list[InvoiceStatus] = []
        for site in self.sites:
            out += await site.invoicer.status(period)
        return out
