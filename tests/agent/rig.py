"""A site of device desks on fakes: fake Lightning, fake peers, real SQLite logs.

Each :class:`Device` has its own log store, writer, intent book, paymaster and
fake Lightning node; the utility's node is the hub that routes device-to-device
payments (as in the regtest star). :meth:`Rig.reconcile` runs the product's
checker (:func:`p2pgrid.reconcile.reconcile`) over every node and log.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.billing import FlatTariff
from p2pgrid.ledger import Author, Entry, LogStore, LogWriter, MeterReading
from p2pgrid.market import Party
from p2pgrid.reconcile import NodeSnapshot, Reconciliation, reconcile, site_members, snapshot
from p2pgrid.testing.fake_lightning import FakeLightning, FakeNode
from p2pgrid.testing.fake_peers import FakePeerNet, FakePeers
from tests.ledger.ledger_factory import T0_MS, Site

TARIFF = FlatTariff(250_000)  # 250 msat per Wh
QUARTER_MS = 900_000


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.t = now

    def __call__(self) -> float:
        return self.t


@dataclasses.dataclass
class Device:
    index: int
    store: LogStore
    writer: LogWriter
    intents: IntentBook
    paymaster: Paymaster
    node: FakeNode
    peers: FakePeers

    @property
    def name(self) -> str:
        return self.node.name

    async def meter(self, period: int, energy_wh: int, *, interval: int = 0) -> Entry:
        start = T0_MS + interval * QUARTER_MS
        reading = MeterReading(start, 900, energy_wh, energy_wh * 250)
        return await self.writer.append(reading, period=period, timestamp_ms=start)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.site = Site.make(b"desk tests site")
        self.site_id = self.site.identity.site_id
        self.clock = Clock()
        self.ln = FakeLightning(now=self.clock, hub="utility")
        self.utility_node = self.ln.node("utility")
        self.mallory = self.ln.node("mallory")  # a node that is nobody's in this site
        self.net = FakePeerNet()
        self.devices: list[Device] = []
        self.stores: list[LogStore] = []
        self.books: list[IntentBook] = []
        self.before: dict[str, NodeSnapshot] = {}

    async def device(self, index: int) -> Device:
        store = await self.site.open(self.tmp / f"dev{index}.db", f"dev{index}")
        writer = LogWriter(store, self.site.device(index), Author.device(index))
        intents = await IntentBook.open(self.tmp / f"dev{index}.intents.db", name=f"dev{index}")
        node = self.ln.node(f"dev{index}")
        paymaster = Paymaster(
            node=node,
            writer=writer,
            intents=intents,
            name=f"dev{index}",
            wall_ms=lambda: int(self.clock() * 1000),
        )
        device = Device(
            index, store, writer, intents, paymaster, node, self.net.join(self.site_id, index)
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
        devices = {d.index: d.name for d in self.devices}
        return reconcile(
            before=self.before,
            after=after,
            logs={self.site.membership.site_hash: await self.site_log()},
            members=site_members(self.site.membership.site_hash, devices, utility="utility"),
            routers={"utility"},
        )

    async def close(self) -> None:
        for book in self.books:
            await book.close()
        for store in self.stores:
            await store.close()
