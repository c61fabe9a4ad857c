"""A site of devices on fakes: fake Lightning, fake peers, real SQLite logs.

Each :class:`Device` has its own log store, writer, intent book, paymaster and
fake Lightning node; the hub (by default the utility's node, as in the regtest
star) routes the payments between other nodes and earns their fees.
:meth:`Rig.agent` builds a whole :class:`~p2pgrid.agent.device.DeviceAgent` of a
device on a :class:`~p2pgrid.testing.fake_replica.LocalReplica` and a
:class:`~p2pgrid.testing.clock.SteppingClock` over the rig's wall clock; the
:meth:`Rig.utility_for` hook plays the utility for it (invoices each period the
device closed, into its replica). :meth:`Rig.reconcile` runs the product's
checker (:func:`p2pgrid.reconcile.reconcile`) over every node and log.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path

from p2pgrid.agent.config import AgentConfig, EnergyConfig
from p2pgrid.agent.device import AgentParts, DeviceAgent, DeviceProfile, Metering
from p2pgrid.agent.energy import EnergyDesk
from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.paymaster import Announce, Paymaster
from p2pgrid.agent.ports import Wallet
from p2pgrid.agent.settlement import InvoiceSettler
from p2pgrid.agent.sharing import ShareDesk
from p2pgrid.agent.sitewallet import SiteNode, SiteWallet
from p2pgrid.billing import FlatTariff, invoice_memo, model_ms
from p2pgrid.ledger import (
    Allocation,
    Author,
    BalanceBook,
    Entry,
    Invoice,
    LogStore,
    LogWriter,
    MeterReading,
    bill,
    invoices_of,
)
from p2pgrid.market import Party, Priority, SurplusPolicy
from p2pgrid.meter import MeterSource, SeriesSource
from p2pgrid.reconcile import NodeSnapshot, Reconciliation, reconcile, site_members, snapshot
from p2pgrid.testing.clock import ManualClock, SteppingClock
from p2pgrid.testing.fake_lightning import FakeLightning, FakeNode
from p2pgrid.testing.fake_peers import FakePeerNet, FakePeers
from p2pgrid.testing.fake_replica import LocalReplica
from tests.ledger.ledger_factory import T0_MS, Site

TARIFF = FlatTariff(250_000)  # 250 msat per Wh
INTERVALS_PER_PERIOD = 4
QUARTER_MS = 900_000


@dataclasses.dataclass
class Device:
    index: int
    store: LogStore
    writer: LogWriter
    intents: IntentBook
    paymaster: Paymaster
    node: FakeNode  # its own node, or the site node a light device is on
    peers: FakePeers
    light: SiteWallet | None = None  # a light device's wallet on the site node

    @property
    def name(self) -> str:
        return f"dev{self.index}"

    @property
    def wallet(self) -> Wallet:
        """What the device pays and is paid with: its node, or its site wallet."""
        return self.light if self.light is not None else self.node

    async def meter(self, period: int, energy_wh: int, *, interval: int = 0) -> Entry:
        start = T0_MS + interval * QUARTER_MS
        reading = MeterReading(start, 900, energy_wh, energy_wh * 250)
        return await self.writer.append(reading, period=period, timestamp_ms=start)


#: The expiry of the rig utility's invoices: longer than any run of fake time.
FAKE_INVOICE_EXPIRY_S = 365 * 24 * 3600


class Rig:
    def __init__(
        self,
        tmp: Path,
        *,
        hub: str = "utility",
        seed: bytes = b"desk tests site",
        beside: Rig | None = None,
    ) -> None:
        """``hub``: the node that routes (another than the utility's: its
        invoices are paid through it, with a routing fee). ``beside``: another
        site's rig whose Lightning network, peers and clock this site shares
        (its devices then need other indices: the nodes are named by them)."""
        self.tmp = tmp
        self.site = Site.make(seed)
        self.site_id = self.site.identity.site_id
        self.hub = hub
        if beside is not None:
            self.clock, self.ln, self.net = beside.clock, beside.ln, beside.net
            self.utility_node, self.mallory = beside.utility_node, beside.mallory
        else:
            self.clock = ManualClock()
            self.ln = FakeLightning(now=self.clock, hub=hub)
            self.utility_node = self.ln.node("utility")
            if hub != "utility":
                self.ln.node(hub)
            self.mallory = self.ln.node("mallory")  # a node that is nobody's in this site
            self.net = FakePeerNet()
        self.devices: list[Device] = []
        self.stores: list[LogStore] = []
        self.books: list[IntentBook] = []
        self.before: dict[str, NodeSnapshot] = {}
        self.cut: set[int] = set()  # devices whose stores :meth:`spread` skips

    def site_node(self, light: tuple[int, ...], name: str = "site") -> SiteNode:
        """A site lnd ``name`` on which devices ``light`` are light (open them
        with :meth:`device` ``(i, site=...)``)."""
        node = self.ln.node(name)
        return SiteNode(
            node, node.pubkey, {self.party(i) for i in light}, name=name, now=self.clock
        )

    async def device(self, index: int, *, site: SiteNode | None = None) -> Device:
        """Device ``index`` with its own fake lnd, or light on ``site``."""
        store = await self.site.open(self.tmp / f"dev{index}.db", f"dev{index}")
        writer = LogWriter(store, self.site.device(index), Author.device(index))
        intents = await IntentBook.open(self.tmp / f"dev{index}.intents.db", name=f"dev{index}")
        light = site.wallet(self.party(index)) if site is not None else None
        node = self.ln.nodes[site.name] if site is not None else self.ln.node(f"dev{index}")
        paymaster = Paymaster(
            node=light if light is not None else node,
            writer=writer,
            intents=intents,
            name=f"dev{index}",
            wall_ms=lambda: int(self.clock() * 1000),
        )
        device = Device(
            index,
            store,
            writer,
            intents,
            paymaster,
            node,
            self.net.join(self.site_id, index),
            light,
        )
        self.devices.append(device)
        self.stores.append(store)
        self.books.append(intents)
        return device

    def party(self, index: int) -> Party:
        return Party(self.site_id, index)

    @property
    def nodes(self) -> dict[Party, str]:
        return {self.party(d.index): d.node.pubkey for d in self.devices}

    def utility_writer(self, store: LogStore) -> LogWriter:
        return LogWriter(store, self.site.utility, Author.utility())

    async def start(self) -> None:
        """Snapshot every node: reconciliation counts from here."""
        self.before = {n: await snapshot(n, node) for n, node in self.ln.nodes.items()}

    async def site_log(self) -> list[Entry]:
        merged = await self.site.open(self.tmp / "merged.db", "merged")
        try:
            for store in self.stores:
                await merged.ingest_many(await store.export())
            return await merged.entries()
        finally:
            await merged.close()
            (self.tmp / "merged.db").unlink()

    async def reconcile(self) -> Reconciliation:
        after = {n: await snapshot(n, node) for n, node in self.ln.nodes.items()}
        devices = {d.index: d.node.name for d in self.devices}  # light: the site node
        return reconcile(
            before=self.before,
            after=after,
            logs={self.site.membership.site_hash: await self.site_log()},
            members=site_members(self.site.membership.site_hash, devices, utility="utility"),
            routers={self.hub},
        )

    # -- desks and a whole agent ----------------------------------------------------

    def share_desk(self, device: Device, headroom: Callable[[int], Awaitable[int]]) -> ShareDesk:
        """The device's share desk, installed on its peers, with ``headroom``."""
        desk = ShareDesk(
            me=self.party(device.index),
            host=device.peers,
            node=device.wallet,
            paymaster=device.paymaster,
            store=device.store,
            writer=device.writer,
            headroom=headroom,
            name=device.name,
            nodes=self.nodes,
            now=self.clock,
        )
        desk.install()
        return desk

    async def spread(self) -> None:
        """Replication at once: every device's store ingests every other's log
        (but the stores of the devices in :attr:`cut`, which hear nothing)."""
        logs = [await store.export() for store in self.stores]
        for device in self.devices:
            if device.index in self.cut:
                continue
            for raws in logs:
                await device.store.ingest_many(raws)

    def energy_desk(
        self,
        device: Device,
        balance: Callable[[int], Awaitable[int]],
        config: EnergyConfig | None = None,
        book: BalanceBook | None = None,
    ) -> EnergyDesk:
        """The device's energy desk, installed on its peers, with ``balance`` (and
        ``book`` told of its held payments); what it logs reaches every device of
        the rig at once (:meth:`spread`)."""
        desk = EnergyDesk(
            me=self.party(device.index),
            host=device.peers,
            node=device.wallet,
            paymaster=device.paymaster,
            balance=balance,
            name=device.name,
            nodes=self.nodes,
            replica=LocalReplica(device.store),
            announce=self.spread,
            now=self.clock,
            config=config,
            book=book,
        )
        desk.install()
        return desk

    def settler(self, device: Device, announce: Announce | None = None) -> InvoiceSettler:
        """The device's settler of the utility's invoices, under the flat tariff."""
        return InvoiceSettler(
            device=device.index,
            site_id=self.site_id,
            store=device.store,
            writer=device.writer,
            node=device.wallet,
            paymaster=device.paymaster,
            tariff=TARIFF,
            utility_pubkey=self.utility_node.pubkey,
            name=device.name,
            now=self.clock,
            announce=announce,
        )

    async def agent(
        self,
        device: Device,
        *,
        consumed_wh: tuple[int, ...] = (100,),
        priority: Priority = Priority.NORMAL,
        intervals_per_period: int = INTERVALS_PER_PERIOD,
        stop_at: int | None = None,
        config: AgentConfig | None = None,
        model_start: int = 0,
        meter: MeterSource | None = None,
        clock: SteppingClock | None = None,
        policy: SurplusPolicy = SurplusPolicy.CARRY_OVER,
    ) -> tuple[DeviceAgent, LocalReplica, SteppingClock]:
        """A device agent of ``device`` (its store, writer, paymaster, node and
        peers) whose meter reads ``consumed_wh`` (repeated), or ``meter``, under
        the flat tariff; run interval ``i`` is the meter's interval
        ``model_start + i``. ``clock``: the agent's, instead of a stepping clock
        over the rig's wall clock."""
        replica = LocalReplica(device.store)
        clock = clock or SteppingClock.over(
            self.clock, intervals_per_period=intervals_per_period, stop_at=stop_at
        )
        agent = DeviceAgent(
            DeviceProfile(
                name=device.name,
                index=device.index,
                site_id=self.site_id,
                priority=priority,
                policy=policy,
                utility_pubkey=self.utility_node.pubkey,
            ),
            AgentParts(
                store=device.store,
                writer=device.writer,
                replica=replica,
                peers=device.peers,
                node=device.wallet,
                paymaster=device.paymaster,
            ),
            Metering(
                TARIFF, meter or SeriesSource(consumed_wh), model_interval=lambda i: model_start + i
            ),
            clock,
            config=config,
        )
        agent.nodes.update(self.nodes)
        agent.install()
        return agent, replica, clock

    async def allocate(self, store: LogStore, device: int, amount_msat: int, period: int) -> None:
        """The owner allocates ``amount_msat`` to ``device`` in ``period`` (into
        ``store``), a minute before the wall clock's time."""
        owner = LogWriter(store, self.site.owner, Author.owner())
        at_ms = int(self.clock() * 1000) - 60_000
        await owner.append(Allocation(device, amount_msat), period=period, timestamp_ms=at_ms)

    def utility_for(
        self,
        device: Device,
        *,
        intervals_per_period: int = INTERVALS_PER_PERIOD,
        model_start: int = 0,
    ) -> Callable[[], Awaitable[None]]:
        """A ``before_wait`` hook of the device's replica: the utility invoices
        each period whose last interval the device has read (if it owes
        anything), on its node, into the device's store, as replication would
        (run interval ``i`` is the meter's ``model_start + i``, as in :meth:`agent`)."""
        writer = self.utility_writer(device.store)
        # Waits of the device overlap (one period's settlement, the next's metering):
        # one hook at a time, or two could each find no invoice and write one.
        one_at_a_time = asyncio.Lock()

        async def invoice_closed_periods() -> None:
            async with one_at_a_time:
                await invoice_once()

        async def invoice_once() -> None:
            entries = await device.store.entries()
            read = {
                e.body.interval_start_ms
                for e in entries
                if e.author == device.writer.author and isinstance(e.body, MeterReading)
            }
            for period in sorted({e.period for e in entries}):
                last = model_start + (period + 1) * intervals_per_period - 1
                if model_ms(last) not in read:
                    continue
                due = bill(entries, device=device.index, period=period, tariff=TARIFF)
                if due.amount_msat == 0 or invoices_of(entries, device=device.index, period=period):
                    continue
                memo = invoice_memo(self.site_id, device.index, period)
                # The stepping clock jumps 900 s an interval, and the device meters
                # the next period while it settles this one: an hour's expiry could
                # pass before the settler looks, depending on aiosqlite's thread.
                invoice = await self.utility_node.add_invoice(
                    due.amount_msat, memo, expiry_s=FAKE_INVOICE_EXPIRY_S
                )
                body = Invoice(
                    device.index,
                    due.amount_msat,
                    due.energy_wh,
                    bytes.fromhex(invoice.payment_hash),
                    invoice.payment_request,
                )
                await writer.append(body, period=period, timestamp_ms=int(self.clock() * 1000))

        return invoice_closed_periods

    async def close(self) -> None:
        for book in self.books:
            await book.close()
        for store in self.stores:
            await store.close()
