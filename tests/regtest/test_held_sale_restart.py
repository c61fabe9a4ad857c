"""A seller paid on delivery restarted while real lnd holds the buyer's payment
(docs/market.md, section 6.2 step 6), on the session's regtest stack: two energy
desks on real lnd nodes (dev-a sells, dev-b buys, routed through the utility),
real SQLite logs, fake peers. The seller dies once its hold invoice is ACCEPTED
and before it has heard the buyer's ``delivered`` entry; a new desk on the same
log and lnd re-derives the preimage and settles, the buyer logs the sale, and
every msat moved is the trade's (and the routing fee)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2pgrid.agent.config import EnergyConfig
from p2pgrid.agent.energy import EnergyDesk
from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.agent.rounds import check_pooled_sales
from p2pgrid.ledger import Author, Delivered, Entry, LogStore, LogWriter, Payment, Sale
from p2pgrid.lightning import InvoiceState, LndClient
from p2pgrid.market import Party
from p2pgrid.poll import wait_until
from p2pgrid.testing.fake_peers import FakePeerNet, FakePeers
from p2pgrid.testing.fake_replica import LocalReplica
from tests.agent.held_sale import seller_killed_while_held
from tests.ledger.ledger_factory import Site
from tests.regtest.test_payments import BALANCE_TIMEOUT_S, local_msat, wait_local

PERIOD, ROUND = 1, 3
RATE = 250_000  # the seller asks 80 %: 200 000 msat/kWh
EXPORT_WH = 60
SETTINGS = EnergyConfig(pay_on_delivery=True, delivery_wait_s=30.0)


@dataclass
class Member:
    index: int
    node: LndClient
    store: LogStore
    writer: LogWriter
    intents: IntentBook
    paymaster: Paymaster
    peers: FakePeers


class Site2:
    """Two devices of one site on real lnd; :meth:`spread` replicates at once
    (but to the devices in :attr:`cut`)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.site = Site.make(b"held sale restart site")
        self.site_id = self.site.identity.site_id
        self.net = FakePeerNet()
        self.members: list[Member] = []
        self.cut: set[int] = set()

    async def join(self, index: int, node: LndClient) -> Member:
        store = await self.site.open(self.tmp / f"dev{index}.db", f"dev{index}")
        writer = LogWriter(store, self.site.device(index), Author.device(index))
        intents = await IntentBook.open(self.tmp / f"dev{index}.intents.db", name=f"dev{index}")
        paymaster = Paymaster(node=node, writer=writer, intents=intents, name=f"dev{index}")
        member = Member(
            index, node, store, writer, intents, paymaster, self.net.join(self.site_id, index)
        )
        self.members.append(member)
        return member

    async def spread(self) -> None:
        logs = [await m.store.export() for m in self.members]
        for member in self.members:
            if member.index not in self.cut:
                for raws in logs:
                    await member.store.ingest_many(raws)

    async def desk(self, member: Member) -> EnergyDesk:
        nodes = {Party(self.site_id, m.index): (await m.node.get_info()).pubkey
                 for m in self.members}  # fmt: skip

        async def balance(period: int) -> int:
            return 1_000_000

        desk = EnergyDesk(
            me=Party(self.site_id, member.index),
            host=member.peers,
            node=member.node,
            paymaster=member.paymaster,
            balance=balance,
            name=f"dev{member.index}",
            nodes=nodes,
            replica=LocalReplica(member.store),
            announce=self.spread,
            config=SETTINGS,
        )
        desk.install()
        return desk

    async def log(self) -> list[Entry]:
        merged = await self.site.open(self.tmp / "merged.db", "merged")
        try:
            for member in self.members:
                await merged.ingest_many(await member.store.export())
            return await merged.entries()
        finally:
            await merged.close()

    async def close(self) -> None:
        for member in self.members:
            await member.intents.close()
            await member.store.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site2]:
    site = Site2(tmp_path)
    yield site
    await site.close()


async def test_a_seller_restarted_with_an_accepted_hold_settles_it(
    site: Site2, dev_a: LndClient, dev_b: LndClient, utility: LndClient
) -> None:
    seller_m, buyer_m = await site.join(0, dev_a), await site.join(1, dev_b)
    a0, b0 = await local_msat(dev_a), await local_msat(dev_b)
    seller, buyer = await site.desk(seller_m), await site.desk(buyer_m)

    async def held() -> str:
        (shown,) = [e.body for e in await buyer_m.store.entries() if isinstance(e.body, Delivered)]
        payment_hash = shown.payment_hash.hex()

        async def accepted() -> bool:
            return (await dev_a.lookup_invoice(payment_hash)).state is InvoiceState.ACCEPTED

        await wait_until(accepted, timeout_s=BALANCE_TIMEOUT_S, what="the held payment")
        return payment_hash

    restarted, payment_hash, bought = await seller_killed_while_held(
        site,
        seller,
        buyer,
        seller_node=dev_a,
        seller_peers=[seller_m.peers.ref],
        held=held,
        restart=lambda: site.desk(seller_m),
        round=(PERIOD, ROUND),
        export_wh=EXPORT_WH,
        rate_msat_per_kwh=RATE,
    )
    assert bought == EXPORT_WH, buyer.refused
    assert restarted.settled == [payment_hash]
    invoice = await dev_a.lookup_invoice(payment_hash)
    assert invoice.state is InvoiceState.SETTLED
    await site.spread()
    log = await site.log()
    sales = [(e.body.seller, e.body.energy_wh, e.body.amount_msat)
             for e in log if isinstance(e.body, Sale)]  # fmt: skip
    assert sales == [(0, EXPORT_WH, invoice.value_msat)]
    (paid,) = [e.body for e in log if isinstance(e.body, Payment)]
    assert paid.payment_hash.hex() == payment_hash
    assert check_pooled_sales(log, site.site_id) == []
    await wait_local(dev_a, a0 + invoice.value_msat)
    await wait_local(dev_b, b0 - invoice.value_msat - paid.fee_msat)
