"""Views: accounts, consumption, inefficiency; balances never negative, sats conserved."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgrid.ledger import (
    Allocation,
    AllowanceSale,
    Author,
    Body,
    Budget,
    CarryOver,
    DeviceInfo,
    Entry,
    Finding,
    Invoice,
    MeterReading,
    Payment,
    Sale,
    Share,
    SiteShare,
    SiteShareIn,
    consumption,
    fold,
    inefficiencies,
)
from tests.ledger.ledger_factory import T0_MS, OpenStore, Site

DEVICES = (1, 2, 3)


class Script:
    """Writes entries for several authors with one clock, like a running site."""

    def __init__(self, site: Site) -> None:
        self.chains = {a: site.chain(a) for a in [Author.owner(), Author.utility()]}
        self.chains.update({Author.device(d): site.chain(Author.device(d)) for d in DEVICES})
        self.site = site
        self.clock = T0_MS
        self.entries: list[Entry] = []

    def add(self, author: Author, body: Body, period: int = 1) -> Entry:
        self.clock += 1000
        entry = self.chains[author].next(body, period=period, ts=self.clock)
        self.entries.append(entry)
        return entry


def test_accounts_of_a_period(site: Site) -> None:
    s = Script(site)
    s.add(Author.utility(), Budget(1_000_000))
    s.add(Author.owner(), Allocation(1, 400_000))
    s.add(Author.owner(), Allocation(2, 300_000))
    s.add(Author.device(1), MeterReading(T0_MS, 900, 100, 150_000))
    s.add(Author.device(1), Share(2, 50_000, "help"))
    s.add(Author.device(2), MeterReading(T0_MS, 900, 300, 340_000))
    s.add(Author.device(2), Share(3, 999_999, "cannot afford"))
    s.add(Author.device(3), Sale(1, 20, 5_000))  # device 3 has no balance: unfunded
    s.add(Author.device(1), CarryOver(100_000))
    s.add(Author.device(1), MeterReading(T0_MS + 900_000, 900, 10, 500_000), period=2)
    view = fold(reversed(s.entries))  # order of the input does not matter
    one, two, three = (view.account(d, 1) for d in DEVICES)
    assert view.period(1).budget_msat == 1_000_000
    assert (one.spent_msat, one.given_msat, one.carried_out_msat) == (150_000, 50_000, 100_000)
    assert one.balance_msat == 400_000 - 150_000 - 50_000 - 100_000
    assert (two.received_msat, two.spent_msat, two.overdraft_msat) == (50_000, 340_000, 0)
    assert two.balance_msat == 10_000
    assert two.unfunded_msat == 999_999
    assert three.unfunded_msat == 5_000
    assert three.balance_msat == 0
    nxt = view.account(1, 2)
    assert (nxt.carried_in_msat, nxt.spent_msat, nxt.overdraft_msat) == (100_000, 100_000, 400_000)
    assert nxt.balance_msat == 0


async def test_inefficiency_view(site: Site, open_store: OpenStore) -> None:
    s = Script(site)
    for d, cls in ((1, "fridge"), (2, "fridge"), (3, "fridge")):
        s.add(Author.owner(), DeviceInfo(d, cls, f"fridge {d}"))
    for period, usage in ((1, (100, 100, 100)), (2, (100, 100, 100)), (3, (100, 300, 110))):
        for d in DEVICES:
            s.add(Author.owner(), Allocation(d, 2_500), period=period)
        for d, wh in zip(DEVICES, usage, strict=True):
            s.add(Author.device(d), MeterReading(T0_MS + period * 10**7, 3600, wh, wh * 10), period)
    s.add(Author.device(1), Share(2, 500, ""), period=3)
    store = await open_store("utility")
    await store.ingest_many([e.raw for e in s.entries])
    view = fold(await store.entries())
    found = {f.device: f for f in inefficiencies(view, 3)}
    assert set(found) == {2}
    assert found[2].findings == {
        Finding.BORROWED,
        Finding.EXCEEDED_ALLOCATION,
        Finding.ABOVE_HISTORY,
        Finding.ABOVE_CLASS,
    }
    assert (found[2].history_mean_wh, found[2].class_median_wh) == (100, 100)
    assert inefficiencies(view, 2) == []


def test_consumption_per_device_and_interval(site: Site) -> None:
    s = Script(site)
    hour = 3_600_000
    base = T0_MS - T0_MS % hour
    s.add(Author.device(1), MeterReading(base, 900, 10, 0))
    s.add(Author.device(1), MeterReading(base + 900_000, 900, 20, 0))
    s.add(Author.device(1), MeterReading(base + hour, 900, 5, 0))
    s.add(Author.device(2), MeterReading(base + 60_000, 60, 7, 0), period=2)
    assert consumption(s.entries, interval_s=3600) == {
        1: {base: 30, base + hour: 5},
        2: {base: 7},
    }
    assert consumption(s.entries, interval_s=3600, period=2) == {2: {base: 7}}


def add_op(s: Script, op: str, a: int, b: int, amount: int, period: int) -> int:
    """Add the entry of one basic script op to ``s``; the period current after it."""
    if op == "alloc":
        s.add(Author.owner(), Allocation(a, amount), period)
    elif op == "read":
        s.add(Author.device(a), MeterReading(T0_MS, 60, amount // 100, amount), period)
    elif op == "share" and a != b:
        s.add(Author.device(a), Share(b, amount, ""), period)
    elif op == "sale" and a != b:
        s.add(Author.device(a), Sale(b, 1 + amount // 1000, amount), period)
    elif op == "carry":
        s.add(Author.device(a), CarryOver(amount), period)
    elif op == "allow" and a != b:  # the same (seller, amount) again: the same hash
        preimage = hashlib.sha256(f"{a}/{amount}".encode()).digest()
        price = -(-amount * 80 // 100)
        paid = hashlib.sha256(preimage).digest()
        s.add(Author.device(a), AllowanceSale(b, amount, price, paid, preimage), period)
    elif op == "next":
        return period + 1
    return period


ops = st.lists(
    st.tuples(
        st.sampled_from(["alloc", "read", "share", "sale", "carry", "allow", "next"]),
        st.sampled_from(DEVICES),
        st.sampled_from(DEVICES),
        st.integers(1, 50_000),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(script=ops)
def test_balances_never_negative_and_sats_conserved(
    site: Site, script: list[tuple[str, int, int, int]]
) -> None:
    s = Script(site)
    period = 1
    for op, a, b, amount in script:
        period = add_op(s, op, a, b, amount, period)
    view = fold(s.entries)
    for number, pv in view.periods.items():
        accounts = pv.accounts.values()
        assert all(acc.balance_msat >= 0 for acc in accounts), number
        assert sum(a.given_msat for a in accounts) == sum(a.received_msat for a in accounts)
        assert sum(a.bought_msat for a in accounts) == sum(a.sold_msat for a in accounts)
        assert sum(a.allowance_sold_msat for a in accounts) == sum(
            a.allowance_bought_msat for a in accounts
        )
        assert sum(a.allowance_paid_msat for a in accounts) == sum(
            a.allowance_earned_msat for a in accounts
        )
        money_in = sum(
            a.allocation_msat
            + a.carried_in_msat
            + a.received_msat
            + a.sold_msat
            + a.allowance_bought_msat
            for a in accounts
        )
        money_out = sum(
            a.balance_msat
            + a.spent_msat
            + a.given_msat
            + a.bought_msat
            + a.carried_out_msat
            + a.allowance_sold_msat
            for a in accounts
        )
        assert money_in == money_out
        carried = {d: a.carried_out_msat for d, a in pv.accounts.items() if a.carried_out_msat}
        if carried:
            after = view.period(number + 1)
            assert {d: after.account(d).carried_in_msat for d in carried} == carried


def test_payments_count_for_their_invoice_period_once(site: Site) -> None:
    script = Script(site)
    preimage = b"\x05" * 32
    payment_hash = hashlib.sha256(preimage).digest()
    script.add(Author.utility(), Invoice(1, 70_000, 280, payment_hash, "lnbcrt..."), period=1)
    device = Author.device(1)
    # logged a period later, then a duplicate proof
    script.add(device, Payment(70_000, payment_hash, preimage, 0), period=2)
    script.add(device, Payment(70_000, payment_hash, preimage, 0), period=2)
    other = b"\x06" * 32
    sale_hash = hashlib.sha256(other).digest()
    script.add(device, Payment(5_000, sale_hash, other, 1_000), period=2)  # a sale's
    view = fold(script.entries)
    assert (view.period(1).invoiced_msat, view.period(1).paid_msat) == (70_000, 70_000)
    assert view.period(2).paid_msat == 0
    assert view.account(1, 2).fees_msat == 1_000  # routing fees, on top of the amounts
    assert view.period(2).fees_msat == 1_000


def test_a_share_from_another_site_counts_once_and_only_with_valid_evidence(site: Site) -> None:
    other = Site.make(b"the owner's other store")
    giver = other.chain(Author.device(2))
    given = giver.next(SiteShare(site.membership.site_hash, 1, 40_000, "ln ..."))
    stranger = Site.make(b"not the owner's site").chain(Author.device(2))
    forged = stranger.next(SiteShare(site.membership.site_hash, 1, 99_000, "ln ..."))
    wrong_device = giver.next(SiteShare(site.membership.site_hash, 3, 10_000, "ln ..."))
    script = Script(site)
    script.add(Author.owner(), Allocation(1, 1_000))
    for evidence in (given, given, forged, wrong_device):  # a replay, a forgery, a misfit
        script.add(Author.device(1), SiteShareIn(evidence.raw.hex()))
    peers = {other.membership.site_hash: other.membership}
    view = fold(script.entries, site_hash=site.membership.site_hash, peer_sites=peers)
    account = view.account(1, 1)
    assert (account.received_msat, account.balance_msat) == (40_000, 41_000)
    # Without the owner's other sites nothing can be checked, so nothing is credited.
    assert fold(script.entries).account(1, 1).balance_msat == 1_000
    # The giver's own site debits it like a share.
    other_script = [*giver.entries]
    alloc = other.chain(Author.owner()).next(Allocation(2, 100_000), ts=T0_MS - 1000)
    other_view = fold([alloc, *other_script])
    assert other_view.account(2, 1).given_msat == 50_000


def test_an_allowance_sale_moves_allowance_once_and_its_price_apart(site: Site) -> None:
    """docs/market.md 2.9: the seller's balance pays the allowance (if it covers
    it), the buyer's grows by it; the price is counted apart; one hash once."""
    s = Script(site)
    s.add(Author.owner(), Allocation(1, 100_000))
    s.add(Author.owner(), Allocation(2, 10_000))
    preimage = b"\x07" * 32
    paid = hashlib.sha256(preimage).digest()
    sale = AllowanceSale(2, 40_000, 32_000, paid, preimage)
    s.add(Author.device(1), sale)
    s.add(Author.device(1), sale)  # the same payment again: counted once
    other = b"\x08" * 32
    s.add(Author.device(1), AllowanceSale(2, 70_000, 56_000, hashlib.sha256(other).digest(), other))
    pv = fold(s.entries).period(1)
    seller, buyer = pv.account(1), pv.account(2)
    assert (seller.balance_msat, buyer.balance_msat) == (60_000, 50_000)
    assert (seller.allowance_sold_msat, buyer.allowance_bought_msat) == (40_000, 40_000)
    assert (seller.allowance_earned_msat, buyer.allowance_paid_msat) == (32_000, 32_000)
    assert seller.unfunded_msat == 70_000  # 60 000 left cannot pay 70 000
