"""The balance book equals the full fold after every entry, in any arrival order,
with equivocating siblings, carry-overs, cross-site credits and revocations; fed
by a real store, it follows every committed batch and nothing else."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgrid.ledger import (
    Allocation,
    Author,
    BalanceBook,
    CarryOver,
    Entry,
    LedgerError,
    MeterReading,
    Revoke,
    Role,
    Share,
    SiteShare,
    SiteShareIn,
    fold,
)
from tests.ledger.ledger_factory import T0_MS, OpenStore, Site
from tests.ledger.test_views import DEVICES, Script, add_op

OTHER = Site.make(b"the owner's other site")
PEERS = {OTHER.membership.site_hash: OTHER.membership}

ops = st.lists(
    st.tuples(
        st.sampled_from(
            ["alloc", "read", "share", "sale", "carry", "allow", "next", "fork", "site_in", "late"]
        ),
        st.sampled_from(DEVICES),
        st.sampled_from(DEVICES),
        st.integers(1, 50_000),
    ),
    max_size=40,
)


def script_entries(site: Site, script: list[tuple[str, int, int, int]]) -> list[Entry]:
    """A valid log of several periods, with siblings and cross-site credits."""
    s = Script(site)
    other = OTHER.chain(Author.device(1))
    period = 1
    extra: list[Entry] = []
    for op, a, b, amount in script:
        if op == "fork":
            if s.chains[Author.device(a)].entries:
                extra.append(s.chains[Author.device(a)].fork(CarryOver(amount)))
        elif op == "site_in":  # evidence from the other site; sometimes a replay
            given = other.next(SiteShare(site.membership.site_hash, a, amount, ""))
            s.add(Author.device(a), SiteShareIn(given.raw.hex()), period)
            if amount % 2:
                s.add(Author.device(a), SiteShareIn(given.raw.hex()), period)
        elif op == "late":  # a timestamp before the others of its period
            s.clock -= 5_000
            s.add(Author.owner(), Allocation(a, amount), period)
        else:
            period = add_op(s, op, a, b, amount, period)
    return s.entries + extra


def assert_equal_to_fold(book: BalanceBook, seen: list[Entry], site: Site) -> None:
    view = fold(seen, site_hash=site.membership.site_hash, peer_sites=PEERS)
    periods = set(view.periods) | {p + 1 for p in view.periods} | {0}
    for period in sorted(periods):
        for device in DEVICES:
            assert book.account(device, period) == view.account(device, period), (device, period)


@settings(max_examples=150, deadline=None)
@given(
    script=ops,
    order=st.randoms(use_true_random=False),
    spread=st.sampled_from([0, 1, 3, 10_000]),
    asked=st.integers(0, 3),
)
def test_the_book_equals_the_fold_after_every_entry(
    site: Site,
    script: list[tuple[str, int, int, int]],
    order: random.Random,
    spread: int,
    asked: int,
) -> None:
    """Entries arrive as replication delivers them: each one late by up to
    ``spread`` places (0: in the order written; 10,000: any order), some twice."""
    entries = script_entries(site, script)
    arrival = entries + entries[: len(entries) // 3]
    late = [i + order.uniform(0, spread) for i in range(len(arrival))]
    arrival = [e for _, e in sorted(zip(late, arrival, strict=True), key=lambda p: p[0])]
    book = BalanceBook(site_hash=site.membership.site_hash, peer_sites=PEERS)
    seen: list[Entry] = []
    for i, entry in enumerate(arrival):
        book.add([entry])
        seen.append(entry)
        if asked == 0 or i % asked == 0:  # questions between arrivals, or not
            assert_equal_to_fold(book, seen, site)
    assert_equal_to_fold(book, seen, site)


def test_a_carry_over_or_credit_in_order_changes_the_periods_after_it(site: Site) -> None:
    s = Script(site)
    given = OTHER.chain(Author.device(2)).next(SiteShare(site.membership.site_hash, 1, 7, ""))
    alloc = s.add(Author.owner(), Allocation(1, 100))
    carry = s.add(Author.device(1), CarryOver(60))
    credit = s.add(Author.device(1), SiteShareIn(given.raw.hex()))
    reading = s.add(Author.device(1), MeterReading(T0_MS, 60, 1, 10), period=2)
    again = s.add(Author.device(1), SiteShareIn(given.raw.hex()), period=2)
    book = BalanceBook(site_hash=site.membership.site_hash, peer_sites=PEERS)
    book.add([alloc, reading, again])
    assert book.account(1, 2).received_msat == 7  # counted in period 2, for now
    book.add([carry])  # in order in period 1, after period 2 was folded
    assert_equal_to_fold(book, [alloc, carry, reading, again], site)
    assert (book.account(1, 2).carried_in_msat, book.account(1, 2).received_msat) == (60, 7)
    book.add([credit])
    assert_equal_to_fold(book, [alloc, carry, credit, reading, again], site)
    assert (book.account(1, 2).carried_in_msat, book.account(1, 2).received_msat) == (60, 0)


def test_entries_in_order_are_applied_without_refolding(site: Site) -> None:
    s = Script(site)
    s.add(Author.owner(), Allocation(1, 100_000))
    book = BalanceBook()
    book.add(s.entries)
    assert book.balance(1, 1) == 100_000
    refolds = book.refolds
    for i in range(20):
        book.add([s.add(Author.device(1), MeterReading(T0_MS + i, 60, 1, 1_000))])
        assert book.balance(1, 1) == 100_000 - 1_000 * (i + 1)
    assert book.refolds == refolds
    s.clock -= 100_000  # a late entry of a peer: its period is re-folded once
    book.add([s.add(Author.device(2), Share(1, 5_000, ""))])
    assert book.balance(1, 1) == 80_000
    assert book.refolds == refolds + 1


async def test_a_book_follows_its_store_through_batches_and_revocations(
    site: Site, open_store: OpenStore
) -> None:
    store = await open_store("follower")
    s = Script(site)
    s.add(Author.owner(), Allocation(1, 100_000))
    s.add(Author.owner(), Allocation(2, 100_000))
    await store.ingest_many([e.raw for e in s.entries])
    book = BalanceBook(site_hash=site.membership.site_hash)
    await book.follow(store)
    for amount in (10_000, 20_000, 30_000):
        s.add(Author.device(2), Share(1, amount, ""))
    await store.ingest_many([e.raw for e in s.entries])
    assert book.balance(1, 1) == fold(await store.entries()).account(1, 1).balance_msat == 160_000
    # The owner revokes device 2 after its first entry: the store drops the other two.
    await store.ingest(s.add(Author.owner(), Revoke(Role.DEVICE, 2, 1, "stolen")).raw)
    after = fold(await store.entries())
    assert (book.balance(1, 1), book.balance(2, 1)) == (110_000, 90_000)
    assert book.account(1, 1) == after.account(1, 1)
    assert book.account(2, 1) == after.account(2, 1)
    book.close()
    await store.ingest(s.add(Author.owner(), Allocation(1, 1)).raw)
    assert book.balance(1, 1) == 110_000  # no longer following


def test_a_held_payment_is_committed_until_released(site: Site) -> None:
    s = Script(site)
    book = BalanceBook(site_hash=site.membership.site_hash)
    book.add([s.add(Author.owner(), Allocation(1, 100)), s.add(Author.owner(), Allocation(2, 50))])
    book.hold("ab" * 32, device=1, period=1, amount_msat=30)
    book.hold("ab" * 32, device=1, period=1, amount_msat=30)  # the same payment: once
    book.hold("cd" * 32, device=1, period=2, amount_msat=5)  # another period
    assert (book.balance(1, 1), book.held_msat(1, 1), book.available(1, 1)) == (100, 30, 70)
    assert (book.available(2, 1), book.available(1, 2)) == (50, -5)
    book.release("ab" * 32)
    book.release("ab" * 32)  # safe twice
    assert (book.held_msat(1, 1), book.available(1, 1)) == (0, 100)
    with pytest.raises(LedgerError):
        book.hold("ef" * 32, device=1, period=1, amount_msat=0)
    assert book.available(1, 1) == 100  # a refused hold changes nothing
