"""A log records each interval's reading, each period's budget and each (device,
period)'s invoice once: a second one is refused on ingest by every replica, so
no view can count it twice, whatever the order or repetition of deliveries."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pgrid.billing.tariff import FlatTariff
from p2pgrid.ledger import (
    Author,
    Budget,
    CarryOver,
    Cleared,
    Delivered,
    Entry,
    IngestReport,
    Invoice,
    LogStore,
    MeterReading,
    Order,
    Outcome,
    RejectReason,
    bill,
)
from tests.ledger.ledger_factory import T0_MS, Chain, OpenStore, Site

HASH = bytes(range(32))


def _outcome(report: IngestReport, i: int = 0) -> tuple[Outcome, RejectReason | None]:
    result = report.results[i]
    return result.outcome, result.reason


async def test_second_reading_of_an_interval_is_refused(site: Site, open_store: OpenStore) -> None:
    store = await open_store("r")
    chain = site.chain(Author.device(1))
    first = chain.next(MeterReading(T0_MS, 900, 250, 25_000))
    other = chain.next(MeterReading(T0_MS + 900_000, 900, 100, 10_000))
    again = chain.next(MeterReading(T0_MS, 900, 250, 25_000))  # same interval, new seq
    report = await store.ingest_many([first.raw, other.raw, again.raw])
    assert [r.outcome for r in report.results] == [Outcome.STORED, Outcome.STORED, Outcome.REJECTED]
    assert report.results[2].reason is RejectReason.DUPLICATE_RECORD
    assert store.rejections[RejectReason.DUPLICATE_RECORD] == 1
    assert store.heads()[Author.device(1)].seq == 2


async def test_second_budget_and_invoice_are_refused(site: Site, open_store: OpenStore) -> None:
    store = await open_store("u")
    chain = site.chain(Author.utility())
    ok = [
        chain.next(Budget(1_000), period=1),
        chain.next(Budget(1_000), period=2),
        chain.next(Invoice(1, 500, 5, HASH, "lnbcrt1"), period=2),
        chain.next(Invoice(2, 500, 5, HASH, "lnbcrt2"), period=2),
    ]
    report = await store.ingest_many([e.raw for e in ok])
    assert all(r.outcome is Outcome.STORED for r in report.results)
    budget_again = chain.next(Budget(9_999), period=2)
    assert _outcome(await store.ingest(budget_again.raw)) == (
        Outcome.REJECTED,
        RejectReason.DUPLICATE_RECORD,
    )
    chain.entries.pop()
    invoice_again = chain.next(Invoice(1, 700, 7, HASH, "lnbcrt3"), period=2)
    assert _outcome(await store.ingest(invoice_again.raw)) == (
        Outcome.REJECTED,
        RejectReason.DUPLICATE_RECORD,
    )
    chain.entries.pop()
    # the same device in the next period is a new record
    assert _outcome(await store.ingest(chain.next(Invoice(1, 1, 1, HASH, "x"), period=3).raw)) == (
        Outcome.STORED,
        None,
    )


async def test_one_order_and_one_clearing_per_device_and_round(
    site: Site, open_store: OpenStore
) -> None:
    store = await open_store("o")
    chain = site.chain(Author.device(2))
    entries = [
        chain.next(Order(40, "0303" + "00" * 37), period=1),
        chain.next(Order(41, "0303" + "00" * 37), period=1),  # the next round
        chain.next(Cleared(40, 1000, HASH, "00000002"), period=1),
        chain.next(Order(40, "0303" + "11" * 37), period=1),  # a second order of round 40
        chain.next(Cleared(40, 2000, HASH, "00000002"), period=1),  # never reached
    ]
    report = await store.ingest_many([e.raw for e in entries])
    assert [_outcome(report, i) for i in range(4)] == [
        (Outcome.STORED, None),
        (Outcome.STORED, None),
        (Outcome.STORED, None),
        (Outcome.REJECTED, RejectReason.DUPLICATE_RECORD),
    ]
    assert store.heads()[Author.device(2)].seq == 3


async def test_one_delivered_entry_per_trade(site: Site, open_store: OpenStore) -> None:
    store = await open_store("d")
    chain = site.chain(Author.device(2))
    entries = [
        chain.next(Delivered(40, 0, 60, HASH), period=1),
        chain.next(Delivered(40, 1, 60, HASH), period=1),  # another seller of the round
        chain.next(Delivered(40, 0, 10, HASH), period=1),  # the same trade again
    ]
    report = await store.ingest_many([e.raw for e in entries])
    assert [_outcome(report, i) for i in range(3)] == [
        (Outcome.STORED, None),
        (Outcome.STORED, None),
        (Outcome.REJECTED, RejectReason.DUPLICATE_RECORD),
    ]


async def test_rule_survives_reopening(site: Site, tmp_path: Path) -> None:
    chain = site.chain(Author.device(3))
    first = chain.next(MeterReading(T0_MS, 900, 1, 1))
    again = chain.next(MeterReading(T0_MS, 900, 1, 1))
    async with await site.open(tmp_path / "a.sqlite") as store:
        await store.ingest(first.raw)
    async with await site.open(tmp_path / "a.sqlite") as store:
        assert _outcome(await store.ingest(again.raw)) == (
            Outcome.REJECTED,
            RejectReason.DUPLICATE_RECORD,
        )


async def test_a_sibling_branch_is_judged_by_its_own_ancestors(
    site: Site, open_store: OpenStore
) -> None:
    """Device 2 equivocates at seq 2: branch A reads interval X, branch B reads Y.
    B's child reading X has no ancestor with X: stored, in any order (the rule
    follows the chain, not arrival). A's child reading X is refused everywhere."""
    chain = site.chain(Author.device(2))
    root = chain.next(CarryOver(1))
    a = chain.next(MeterReading(T0_MS, 900, 1, 1))
    b = chain.fork(MeterReading(T0_MS + 900_000, 900, 1, 1), at_seq=2)
    b_child = chain.sign(MeterReading(T0_MS, 900, 1, 1), seq=3, prev=b.id, ts=T0_MS + 9_000)
    a_child = chain.sign(MeterReading(T0_MS, 900, 2, 2), seq=3, prev=a.id, ts=T0_MS + 9_000)
    digests = set()
    for n, order in enumerate(itertools.permutations([a, b, b_child, a_child])):
        store = await open_store(f"p{n}")
        await store.ingest(root.raw)
        for _ in range(2):  # a later offer (anti-entropy) completes what came too early
            for e in order:
                await store.ingest(e.raw)
        ids, _ = await store.ids()
        assert b_child.id in ids
        assert a_child.id not in ids
        digests.add(store.digest())
    assert len(digests) == 1


def _readings(chain: Chain, intervals: list[int]) -> list[Entry]:
    return [
        chain.next(MeterReading(T0_MS + 900_000 * i, 900, 10 + i, 1_000 + i)) for i in intervals
    ]


_counter = itertools.count()
PROPS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


@PROPS
@given(
    intervals=st.lists(st.integers(0, 5), min_size=1, max_size=12),
    seed=st.integers(0, 2**32),
    replays=st.integers(1, 3),
)
async def test_replays_and_reingests_never_double_count(
    site: Site, workdir: Path, intervals: list[int], seed: int, replays: int
) -> None:
    """A device that writes any sequence of intervals (repeats included, as a
    restarted agent replaying would) and replicas that receive the chain any
    number of times in any order: each interval is billed once, as first read."""
    chain = site.chain(Author.device(1))
    entries = _readings(chain, intervals)
    # The first repeat is refused; what follows it in the chain never finds its
    # predecessor, so the log holds exactly the readings before the first repeat.
    stop = next((j for j, i in enumerate(intervals) if i in intervals[:j]), len(intervals))
    rng = random.Random(seed)
    offers = [e.raw for e in entries] * replays
    rng.shuffle(offers)
    store: LogStore = await site.open(workdir / f"{next(_counter)}.sqlite")
    async with store:
        for start in range(0, len(offers), 3):
            await store.ingest_many(offers[start : start + 3])
        await store.ingest_many([e.raw for e in entries])  # anti-entropy: in chain order
        log = await store.entries(period=1)
        readings = [e for e in log if isinstance(e.body, MeterReading)]
        assert [e.id for e in readings] == [e.id for e in entries[:stop]]
        expected = sum(10 + i for i in intervals[:stop])
        billed = bill(log, device=1, period=1, tariff=FlatTariff(250_000))
        assert billed.energy_wh == expected
        refused = store.rejections[RejectReason.DUPLICATE_RECORD]
        assert (refused > 0) is (stop < len(intervals))
