"""The handlers behind the decoders, fed hostile bytes and hostile values, with a real
SQLite log: each answers or refuses with a typed error, and the log stays consistent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.agent.messages import ShareInvoice
from p2pgrid.agent.payguard import share_memo
from p2pgrid.agent.sharing import ShareDesk
from p2pgrid.errors import ReportableError
from p2pgrid.ledger import (
    Author,
    EntryKind,
    LogStore,
    LogWriter,
    Outcome,
    Replicator,
    SyncProtocolError,
    wire,
)
from p2pgrid.ledger.sync import MAX_REQUESTS_PER_ROUND
from p2pgrid.market import MessageError, Party, ShareOffer, ShareRequest
from p2pgrid.net import Delivery
from tests.fuzz.conftest import budget, tried
from tests.fuzz.fakes import FakeNode, share_desk
from tests.fuzz.mutate import mutants
from tests.fuzz.seeds import BOLT11, ENTRY_SEEDS, SITE, WIRE_SEEDS
from tests.lightning.test_bolt11 import REAL
from tests.regtest.test_client_errors import HOSTILE_BOLT11


@pytest.fixture(scope="module")
async def store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LogStore]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "log.sqlite"
    store = await SITE.open(path, "fuzz")
    yield store
    await store.close()


class _NoNetwork:
    async def request(self, peer: str, payload: bytes) -> bytes:
        raise AssertionError("a handler must not call out")

    async def publish(self, payload: bytes) -> None:
        return None


@budget()
@given(st.lists(mutants(ENTRY_SEEDS), max_size=6))
async def test_ingest(store: LogStore, raws: list[bytes]) -> None:
    tried("store ingest")
    report = await store.ingest_many(raws)
    assert len(report.results) == len(raws)
    digest = store.digest()
    again = await store.ingest_many(raws)  # idempotent
    assert again.appended == ()
    assert store.digest() == digest
    for result in report.results:
        assert isinstance(result.outcome, Outcome)


@budget()
@given(mutants(WIRE_SEEDS))
async def test_sync_requests_and_announcements(store: LogStore, payload: bytes) -> None:
    tried("sync request/announce")
    replicator = Replicator(store, _NoNetwork())
    reply = wire.decode(await replicator.handle_request(payload))  # a push too (ANNOUNCE)
    assert isinstance(reply, wire.HeadsReply | wire.RangeReply | wire.ErrorReply | wire.PushedReply)
    await replicator.receive_announce(payload, from_peer="fuzzer")


class _HostileReplies:
    """A sync peer whose every reply is drawn from hostile bytes."""

    def __init__(self, data: st.DataObject, seeds: list[bytes]) -> None:
        self.data, self.seeds, self.requests = data, seeds, 0

    async def request(self, peer: str, payload: bytes) -> bytes:
        self.requests += 1
        assert self.requests <= MAX_REQUESTS_PER_ROUND + 1
        return self.data.draw(mutants(self.seeds))

    async def publish(self, payload: bytes) -> None:
        return None


@budget()
@given(st.data())
async def test_sync_against_hostile_replies(store: LogStore, data: st.DataObject) -> None:
    tried("sync round")
    await store.ingest_many(ENTRY_SEEDS)
    serving = Replicator(store, _NoNetwork())
    seeds = [
        await serving.handle_request(wire.encode(wire.HeadsRequest())),
        await serving.handle_request(wire.encode(wire.RangeRequest(Author.device(1), 1, 9))),
        *WIRE_SEEDS,
    ]
    pulling = Replicator(store, _HostileReplies(data, seeds))
    with contextlib.suppress(SyncProtocolError):
        await pulling.sync_with("liar")


@budget()
@given(st.data())
async def test_push_against_hostile_replies(store: LogStore, data: st.DataObject) -> None:
    tried("sync push")
    await store.ingest_many(ENTRY_SEEDS)
    entries = (await store.entries())[:2]
    pushing = Replicator(store, _HostileReplies(data, WIRE_SEEDS))
    with contextlib.suppress(SyncProtocolError):  # refused or misbehaving: a clear error
        reply = await pushing.push("liar", entries)
        assert isinstance(reply, wire.PushedReply)


ME = Party(SITE.identity.site_id, 1)
_INVOICE_SEED = ShareInvoice(b"\x01" * 32, 5, BOLT11).encode()
PERIOD = 1
HEADROOM_MSAT = 50_000
#: Mostly two real-shaped invoices (so that one comes back for a second offer).
bolt11s = st.one_of(
    st.sampled_from([BOLT11, REAL]),
    st.sampled_from([BOLT11, REAL]),
    st.sampled_from(HOSTILE_BOLT11),
    st.text(max_size=200),
)


#: The Lightning node of each requester: the fuzz node's, for every device that asks.
NODES: dict[Party, str] = {}


@pytest.fixture(scope="module")
async def desk(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ShareDesk]:
    """A giver's desk on its own log (the other fuzzers fill theirs with seeds)."""

    async def headroom(period: int) -> int:
        return HEADROOM_MSAT if period == PERIOD else 0

    tmp = tmp_path_factory.mktemp("desk")
    store = await SITE.open(tmp / "log.sqlite", "desk")
    writer = LogWriter(store, SITE.device(1), Author.device(1))
    async with share_desk(
        tmp,
        me=ME,
        store=store,
        writer=writer,
        node=FakeNode(),
        headroom=headroom,
        name="fuzz",
        nodes=NODES,
    ) as giving:
        yield giving
    await store.close()


@budget()
@given(
    sender=st.sampled_from([ME.site_id] * 4 + ["00000000000000aa"]),
    device=st.integers(0, 4),
    claimed=st.sampled_from([None, None, None, 0, 1, 2]),
    period=st.sampled_from([PERIOD] * 4 + [0, 2**32 - 1]),
    amount=st.one_of(st.integers(1, 2**63 - 1), st.integers(1, 2 * HEADROOM_MSAT)),
    asked=st.integers(1, 2**63 - 1),
    bolt11=bolt11s,
    invoice_amount=st.integers(0, 100_000),
    honest_amounts=st.sampled_from([True, True, True, False]),
    raw=st.one_of(
        st.none(), st.none(), st.none(), mutants([ShareInvoice(b"\x01" * 32, 5, BOLT11).encode()])
    ),
)
async def test_share_handlers(
    desk: ShareDesk,
    sender: str,
    device: int,
    claimed: int | None,
    period: int,
    amount: int,
    asked: int,
    bolt11: str,
    invoice_amount: int,
    honest_amounts: bool,
    raw: bytes | None,
) -> None:
    """A peer asks for a share (maybe for another device), then sends an invoice
    (maybe another amount, a hostile bolt11 or garbage): each paid invoice is paid
    once, and only with its ``share`` entry in the log."""
    tried("share handlers")
    node = desk.node
    assert isinstance(node, FakeNode)
    node.amount_msat = invoice_amount
    claimed = device if claimed is None else claimed  # None: the sender speaks for itself
    request = ShareRequest(Party(sender, claimed), period, amount, 0)

    def delivery(kind: int, data: bytes) -> Delivery:
        return Delivery("fuzz", sender, device, "peer", kind, data, 0)

    with contextlib.suppress(ReportableError):
        offer = await desk._on_request(delivery(ShareRequest.KIND, request.encode()))
        assert isinstance(offer, ShareOffer)
        assert 0 < offer.amount_msat <= min(amount, HEADROOM_MSAT)
        if honest_amounts:  # the invoice asks exactly what was offered, bound to the request
            asked = node.amount_msat = offer.amount_msat
            node.description = share_memo(request.id, Party(sender, device), ME, asked)
            NODES[Party(sender, device)] = node.destination
    try:
        pay = ShareInvoice(request.id, asked, bolt11).encode() if raw is None else raw
    except MessageError:  # a bolt11 too long to send
        pay = b""
    with contextlib.suppress(ReportableError):
        await desk._on_pay(delivery(ShareInvoice.KIND, pay))
    shares = [
        e for e in await desk.store.entries() if e.kind in (EntryKind.SHARE, EntryKind.SITE_SHARE)
    ]
    if node.paid:
        tried("share handlers: paid")
    assert sum(node.paid.values()) == len(shares)  # no sat moves without its entry
    assert set(node.paid.values()) <= {1}  # and none twice
