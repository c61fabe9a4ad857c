"""Which commits of the log are synced: a batch of the writer's own entries is
committed with ``synchronous=FULL`` (on disk before the append returns), a
batch of peers' entries with ``NORMAL``; the level is set between transactions,
also when own appends and ingests run at once (a gateway's devices writing to
one shared store while sync ingests)."""

from __future__ import annotations

import asyncio

from p2pgrid.ledger import Author, LogStore, LogWriter, MeterReading, Outcome
from tests.commit_trace import CommitTrace
from tests.ledger.ledger_factory import T0_MS, OpenStore, Site

FULL, NORMAL = "FULL", "NORMAL"


def _reading(n: int) -> MeterReading:
    return MeterReading(T0_MS + 60_000 * n, 60, n, n)


async def _level(store: LogStore) -> int:
    """The connection's ``synchronous`` now (1 NORMAL, 2 FULL), read through it."""
    [(level,)] = await store._conn.execute_fetchall("PRAGMA synchronous")
    return int(level)


async def test_own_appends_commit_synced_and_peers_entries_not(
    site: Site, open_store: OpenStore
) -> None:
    store = await open_store("gateway")
    trace = await CommitTrace(NORMAL).attach(store._conn)
    # Two devices of a gateway on its shared store, and a peer's chain.
    one = LogWriter(store, site.device(1), Author.device(1))
    two = LogWriter(store, site.device(2), Author.device(2))
    peer = site.chain(Author.device(3))

    first = await one.append(_reading(1), period=1, timestamp_ms=T0_MS)
    assert await _level(store) == 2
    pulled = [peer.next(_reading(i)) for i in range(1, 4)]
    report = await store.ingest_many([e.raw for e in pulled])
    assert {r.outcome for r in report.results} == {Outcome.STORED}
    assert await _level(store) == 1
    second = await two.append(_reading(1), period=1, timestamp_ms=T0_MS)
    gossiped = peer.next(_reading(4))
    await store.ingest(gossiped.raw)
    third = await one.append(_reading(2), period=1, timestamp_ms=T0_MS)

    assert trace.levels() == [FULL, NORMAL, FULL, NORMAL, FULL]
    own_commits = [trace.commits[i] for i in (0, 2, 4)]
    for commit, entry in zip(own_commits, (first, second, third), strict=True):
        assert commit.inserts("entries", entry.id)
    assert all(trace.commits[1].inserts("entries", e.id) for e in pulled)
    assert trace.commits[3].inserts("entries", gossiped.id)


async def test_own_appends_and_ingests_at_once_each_commit_at_its_level(
    site: Site, open_store: OpenStore
) -> None:
    """Gateway devices append while peers' batches come in: every transaction
    holding an own entry commits synced, every other one not, and no level is
    ever set inside a transaction."""
    store = await open_store("gateway")
    trace = await CommitTrace(NORMAL).attach(store._conn)
    writers = [LogWriter(store, site.device(d), Author.device(d)) for d in (1, 2, 3)]
    peers = [site.chain(Author.device(d)) for d in (4, 5)]
    batches = [[p.next(_reading(n)).raw for n in range(1, 6)] for p in peers for _ in range(3)]

    async def write(writer: LogWriter) -> list[bytes]:
        return [
            (await writer.append(_reading(n), period=1, timestamp_ms=T0_MS)).id for n in range(1, 6)
        ]

    async def pull(batch: list[bytes]) -> None:
        await store.ingest_many(batch)

    written, *_ = await asyncio.gather(
        asyncio.gather(*(write(w) for w in writers)), *(pull(b) for b in batches)
    )
    own = [eid for ids in written for eid in ids]
    levels = trace.levels()  # fails on a pragma inside a transaction
    assert levels.count(FULL) == len(own)  # one synced commit per append
    for commit in trace.commits:
        holds_own = any(commit.inserts("entries", eid) for eid in own)
        assert commit.level == (FULL if holds_own else NORMAL), commit
    assert levels.count(NORMAL) == len(batches)
