"""A seller that hands a buyer an invoice the buyer already paid: lnd answers with the
first payment, so without a check the buyer would log a second sale for one payment."""

from __future__ import annotations

from pathlib import Path

from p2pgrid.agent.energy import EnergyDesk
from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.messages import SaleOffer
from p2pgrid.agent.payguard import sale_memo
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.ledger import Author, EntryKind, LogWriter
from p2pgrid.market import Party, Trade
from p2pgrid.net import PeerRef
from p2pgrid.testing.fake_replica import LocalReplica
from tests.fuzz.fakes import FakeNode
from tests.fuzz.seeds import BOLT11
from tests.ledger.ledger_factory import Site

SITE = Site.make(b"reused invoices")


async def _nothing() -> None:
    return None


class _Host:
    def __init__(self) -> None:
        self.reports: list[tuple[str, str]] = []

    def report_misbehaviour(self, peer_id: str, reason: str) -> None:
        self.reports.append((peer_id, reason))


async def test_a_sale_invoice_paid_before_is_not_paid_or_logged_again(tmp_path: Path) -> None:
    store = await SITE.open(tmp_path / "buyer.sqlite")
    try:
        site_id = SITE.identity.site_id
        host, node = _Host(), FakeNode()

        async def balance(period: int) -> int:
            return 10**9

        intents = await IntentBook.open(tmp_path / "buyer.intents.db", name="buyer")
        writer = LogWriter(store, SITE.signer(Author.device(1)), Author.device(1))
        seller = PeerRef("seller-peer", site_id, 2, ())
        me = Party(site_id, 1)
        desk = EnergyDesk(
            me=me,
            host=host,  # type: ignore[arg-type]
            node=node,  # type: ignore[arg-type]
            paymaster=Paymaster(node=node, writer=writer, intents=intents, name="buyer"),  # type: ignore[arg-type]
            balance=balance,
            name="buyer",
            nodes={Party(site_id, 2): node.destination},
            replica=LocalReplica(store),
            announce=_nothing,
        )
        bought = []
        trade = Trade(Party(site_id, 2), me, 80, 20_000)
        for round_ in (5, 6):
            book_id = bytes([round_]) * 32
            node.amount_msat = 20_000
            node.description = sale_memo(book_id, Party(site_id, 2), me, 80, 20_000)
            offer = SaleOffer(book_id, 80, 20_000, BOLT11)  # the same invoice both times
            bought.append(await desk._pay(offer, trade, book_id, seller, (0, round_)))
        await intents.close()
        assert bought == [80, 0]
        logged = [e.kind for e in await store.entries() if e.kind is not EntryKind.ENROL]
        assert logged == [EntryKind.SALE, EntryKind.PAYMENT]
        assert list(node.paid.values()) == [1]
        assert host.reports == [("seller-peer", "energy:invoice_reused")]
    finally:
        await store.close()
