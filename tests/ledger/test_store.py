"""The store: idempotent, holds gaps, keeps equivocation evidence, survives crashes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pgrid.ledger import (
    Author,
    CarryOver,
    CorruptLogError,
    Curtailment,
    Entry,
    LedgerError,
    LogStore,
    LogWriter,
    MeterReading,
    Outcome,
    Payment,
    fold,
)
from tests.ledger.ledger_factory import T0_MS, OpenStore, Site
from tests.sites import TestSite

HERE = Path(__file__).parent


def _readings(site: Site, device: int, n: int) -> list[bytes]:
    chain = site.chain(Author.device(device))
    return [chain.next(MeterReading(T0_MS + i, 60, 10, 100)).raw for i in range(n)]


async def test_same_entry_twice_is_one_entry(site: Site, open_store: OpenStore) -> None:
    store = await open_store("a")
    raws = _readings(site, 1, 3)
    first = await store.ingest_many(raws + raws[:1])
    assert [r.outcome for r in first.results] == [Outcome.STORED] * 3 + [Outcome.DUPLICATE]
    digest = store.digest()
    second = await store.ingest_many(raws)
    assert {r.outcome for r in second.results} == {Outcome.DUPLICATE}
    assert second.appended == ()
    assert store.digest() == digest
    assert store.heads()[Author.device(1)].count == 3


async def test_resigned_identical_content_is_a_duplicate(site: Site, open_store: OpenStore) -> None:
    store = await open_store("a")
    chain = site.chain(Author.device(1))
    one = chain.sign(CarryOver(5), seq=1, prev=bytes(32))
    two = chain.sign(CarryOver(5), seq=1, prev=bytes(32))
    assert one.raw != two.raw  # BIP340 signing is randomised
    report = await store.ingest_many([one.raw, two.raw])
    assert [r.outcome for r in report.results] == [Outcome.STORED, Outcome.DUPLICATE]
    assert store.equivocators == frozenset()


async def test_gap_is_held_pending_then_filled(site: Site, open_store: OpenStore) -> None:
    store = await open_store("a")
    raws = _readings(site, 1, 4)
    report = await store.ingest_many([raws[3], raws[2]])
    assert [r.outcome for r in report.results] == [Outcome.PENDING, Outcome.PENDING]
    assert Author.device(1) not in store.heads()
    assert store.pending_count == 2
    await store.close()
    # Pending entries survive a restart.
    store = await open_store("a")
    assert store.pending_count == 2
    report = await store.ingest_many([raws[1], raws[0]])
    assert [r.outcome for r in report.results] == [Outcome.PENDING, Outcome.STORED]
    assert [e.seq for e in report.appended] == [1, 2, 3, 4]
    assert store.pending_count == 0
    assert store.heads()[Author.device(1)].seq == 4


async def test_pending_is_bounded(site: Site, tmp_path: Path) -> None:
    store = await site.open(tmp_path / "s.sqlite", "s", max_pending=2)
    async with store:
        raws = _readings(site, 1, 5)
        report = await store.ingest_many(raws[2:])
        assert [r.outcome for r in report.results][-1] is Outcome.REJECTED
        assert store.pending_count == 2


async def test_equivocation_is_kept_flagged_and_shown(site: Site, open_store: OpenStore) -> None:
    store = await open_store("a")
    chain = site.chain(Author.device(3))
    chain.next(MeterReading(T0_MS, 60, 10, 100))
    honest = chain.next(Curtailment(3, T0_MS, 60, 10))  # a chain entry with no record key
    fork = chain.fork(Curtailment(3, T0_MS, 60, 999))
    report = await store.ingest_many([e.raw for e in chain.entries] + [fork.raw])
    assert [r.outcome for r in report.results] == [
        Outcome.STORED,
        Outcome.STORED,
        Outcome.EQUIVOCATION,
    ]
    assert store.equivocators == {Author.device(3)}
    head = store.heads()[Author.device(3)]
    assert (head.seq, head.count, head.forked) == (2, 3, True)
    # A successor of either branch is accepted.
    child = chain.sign(Curtailment(3, T0_MS, 60, 1), seq=3, prev=fork.id, ts=T0_MS + 10_000)
    assert (await store.ingest(child.raw)).results[0].outcome is Outcome.STORED
    assert fold(await store.entries()).equivocators == {Author.device(3)}
    await store.close()
    store = await open_store("a")
    assert store.equivocators == {Author.device(3)}
    assert {honest.id, fork.id} <= (await store.ids())[0]


async def test_reopen_keeps_heads_and_digest(site: Site, open_store: OpenStore) -> None:
    store = await open_store("a")
    await store.ingest_many(_readings(site, 1, 5) + _readings(site, 2, 3))
    heads, digest = store.heads(), store.digest()
    await store.close()
    await store.close()  # closing twice is fine
    again = await open_store("a")
    assert again.heads() == heads
    assert again.digest() == digest
    with pytest.raises(LedgerError):
        await store.ingest(b"")


async def test_database_of_another_site_is_refused(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    await (await site.open(path)).close()
    other = TestSite(b"another site")
    with pytest.raises(CorruptLogError):
        await LogStore.open(path, other.identity, name="x")


async def test_writer_continues_its_chain(site: Site, open_store: OpenStore) -> None:
    store = await open_store("a")
    writer = LogWriter(store, site.device(4), Author.device(4))
    first = await writer.append(Curtailment(4, T0_MS, 60, 1), period=2, timestamp_ms=T0_MS)
    second = await writer.append(
        Curtailment(4, T0_MS, 60, 2), period=2, timestamp_ms=T0_MS - 5
    )  # clock stepped back
    assert (second.seq, second.prev, second.timestamp_ms) == (2, first.id, T0_MS)
    with pytest.raises(LedgerError):
        await writer.append(Curtailment(4, T0_MS, 60, 3), period=1, timestamp_ms=T0_MS)
    with pytest.raises(LedgerError):
        LogWriter(store, site.device(5), Author.device(4))


async def test_crash_at_any_moment_leaves_a_valid_log(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent.parent), *sys.path])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.ledger.crash_writer",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        for expected in range(1, 6):
            assert await proc.stdout.readline() == f"{expected}\n".encode()
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    # Reopening runs the integrity check (chain links, quick_check).
    store = await site.open(path)
    async with store:
        heads = store.heads()
        # Every own append that returned before the kill is there (a killed
        # process keeps what the OS cached: this is no test of a power cut).
        assert heads[Author.device(1)].seq >= 5
        assert heads[Author.device(2)].seq % 20 == 0  # batches are all or nothing
        assert heads[Author.device(2)].seq // 20 in {
            heads[Author.device(1)].seq,
            heads[Author.device(1)].seq - 1,
        }
        writer = LogWriter(store, site.device(1), Author.device(1))
        entry = await writer.append(CarryOver(1), period=1, timestamp_ms=T0_MS)
        assert entry.seq == heads[Author.device(1)].seq + 1


async def test_a_long_gap_closes_at_once(site: Site, open_store: OpenStore) -> None:
    store = await open_store("a")
    raws = _readings(site, 1, 1500)
    report = await store.ingest_many(raws[:0:-1])  # 1500 down to 2: all pending
    assert {r.outcome for r in report.results} == {Outcome.PENDING}
    report = await store.ingest(raws[0])
    assert [e.seq for e in report.appended] == list(range(1, 1501))
    assert store.pending_count == 0


async def test_entries_of_kinds_author_and_period(site: Site, open_store: OpenStore) -> None:
    """A reader asks for the payments of one author (or one period) only and
    gets exactly those, in fold order."""
    store = await open_store("a")
    raws = []
    for device in (1, 2):
        chain = site.chain(Author.device(device))
        for period in (1, 2):
            raws.append(chain.next(MeterReading(T0_MS + period, 60, 10, 100), period=period).raw)
            preimage = bytes([device, period]) * 16
            proof = Payment(1000, hashlib.sha256(preimage).digest(), preimage, 0)
            raws.append(chain.next(proof, period=period).raw)
    await store.ingest_many(raws)
    everything = await store.entries()

    def expected(keep: Callable[[Entry], bool]) -> list[bytes]:
        return [e.id for e in everything if keep(e)]

    paid = await store.entries(kinds=(Payment.KIND,))
    assert [e.id for e in paid] == expected(lambda e: isinstance(e.body, Payment))
    mine = await store.entries(kinds=(Payment.KIND, CarryOver.KIND), author=Author.device(2))
    assert [e.id for e in mine] == expected(
        lambda e: isinstance(e.body, Payment) and e.author == Author.device(2)
    )
    of_two = await store.entries(period=2, author=Author.device(1))
    assert [e.id for e in of_two] == expected(
        lambda e: e.period == 2 and e.author == Author.device(1)
    )
    assert len(of_two) == 2
    assert await store.entries(kinds=()) == []
