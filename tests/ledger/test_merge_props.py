"""Property tests: merging replicas is commutative, associative and idempotent,
and any delivery order with duplicates gives the same replica. Real aiosqlite
databases, one per replica, under a session temporary directory."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pgrid.ledger import Allocation, Author, CarryOver, LogStore, MeterReading, Share
from tests.ledger.ledger_factory import T0_MS, Site

PROPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()


def _universe(site: Site, *, forks: bool) -> list[bytes]:
    """Entries of four authors; with ``forks``, device 2 equivocates (with children).

    The order-independence of single deliveries is claimed for honest authors
    only: an entry that extends a fork branch not seen yet is refused as
    broken_chain, and anti-entropy offers it again later (see test_sync)."""
    raws: list[bytes] = []
    owner = site.chain(Author.owner())
    for device in (1, 2, 3):
        raws.append(owner.next(Allocation(device, 100_000)).raw)
    for device in (1, 2, 3):
        chain = site.chain(Author.device(device))
        for i in range(4):
            body = (
                MeterReading(T0_MS + i, 60, 10 * device, 1000)
                if i % 2
                else Share(device % 3 + 1, 500 * (i + 1), "")
            )
            raws.append(chain.next(body).raw)
        if forks and device == 2:
            fork = chain.fork(CarryOver(77), at_seq=2)
            child = chain.sign(CarryOver(1), seq=3, prev=fork.id, ts=T0_MS + 50_000)
            raws += [fork.raw, child.raw]
    return raws


@pytest.fixture(scope="session")
def universe(site: Site) -> list[bytes]:
    return _universe(site, forks=True)


@pytest.fixture(scope="session")
def honest_universe(site: Site) -> list[bytes]:
    return _universe(site, forks=False)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("merge")


async def _replica(site: Site, workdir: Path, raws: list[bytes]) -> LogStore:
    store = await site.open(workdir / f"r{next(_counter)}.sqlite", "r")
    await store.ingest_many(raws)
    return store


async def _merged(site: Site, workdir: Path, *parts: LogStore) -> LogStore:
    """A new replica that merged ``parts`` in the given order (one export each)."""
    out = await _replica(site, workdir, [])
    for part in parts:
        await out.ingest_many(await part.export())
    return out


async def _state(store: LogStore) -> tuple[object, ...]:
    """What a replica is: its log (pending entries are a receive buffer, not state)."""
    log_ids, _ = await store.ids()
    return (store.digest(), log_ids, store.equivocators)


async def _close(*stores: LogStore) -> None:
    for store in stores:
        await store.close()


subsets = st.lists(st.booleans(), min_size=20, max_size=20)


def _pick(universe: list[bytes], mask: list[bool]) -> list[bytes]:
    return [raw for raw, keep in zip(universe, mask, strict=False) if keep]


@PROPS
@given(ma=subsets, mb=subsets)
async def test_merge_is_commutative(
    site: Site, workdir: Path, universe: list[bytes], ma: list[bool], mb: list[bool]
) -> None:
    a = await _replica(site, workdir, _pick(universe, ma))
    b = await _replica(site, workdir, _pick(universe, mb))
    ab, ba = await _merged(site, workdir, a, b), await _merged(site, workdir, b, a)
    try:
        assert await _state(ab) == await _state(ba)
    finally:
        await _close(a, b, ab, ba)


@PROPS
@given(ma=subsets, mb=subsets, mc=subsets)
async def test_merge_is_associative(
    site: Site, workdir: Path, universe: list[bytes], ma: list[bool], mb: list[bool], mc: list[bool]
) -> None:
    a, b, c = [await _replica(site, workdir, _pick(universe, m)) for m in (ma, mb, mc)]
    ab = await _merged(site, workdir, a, b)
    bc = await _merged(site, workdir, b, c)
    ab_c = await _merged(site, workdir, ab, c)
    a_bc = await _merged(site, workdir, a, bc)
    try:
        assert await _state(ab_c) == await _state(a_bc)
    finally:
        await _close(a, b, c, ab, bc, ab_c, a_bc)


@PROPS
@given(ma=subsets)
async def test_merge_is_idempotent(
    site: Site, workdir: Path, universe: list[bytes], ma: list[bool]
) -> None:
    a = await _replica(site, workdir, _pick(universe, ma))
    before = (await _state(a), await a.ids())
    await a.ingest_many(await a.export())
    aa = await _merged(site, workdir, a, a)
    a_only = await _merged(site, workdir, a)
    try:
        assert (await _state(a), await a.ids()) == before
        assert await _state(aa) == await _state(a_only) == before[0]
    finally:
        await _close(a, aa, a_only)


@PROPS
@given(data=st.data())
async def test_any_order_and_duplication_give_the_same_replica(
    site: Site, workdir: Path, honest_universe: list[bytes], data: st.DataObject
) -> None:
    n = len(honest_universe)
    order = data.draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=3 * n))
    order += data.draw(st.permutations(range(n)))  # everything at least once
    batches = data.draw(st.integers(1, 6))
    reference = await _replica(site, workdir, honest_universe)
    shuffled = await _replica(site, workdir, [])
    try:
        step = max(1, len(order) // batches)
        for start in range(0, len(order), step):
            await shuffled.ingest_many([honest_universe[i] for i in order[start : start + step]])
        assert await _state(shuffled) == await _state(reference)
        assert shuffled.pending_count == 0
    finally:
        await _close(reference, shuffled)
