"""Budget sharing: offers within headroom, accepts within need, sats conserved."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.market import (
    MAX_GRANTS,
    MarketError,
    Party,
    ShareAccept,
    ShareOffer,
    ShareRequest,
    accept_offers,
    amount_to_give,
    make_accept,
    make_offer,
    offer_amount,
    share_plan,
    site_share_plan,
)
from tests.market.strategies import wide_parties

SITE = "00000000000000aa"
NOW = 1_000


def dev(i: int) -> Party:
    return Party(SITE, i)


def test_offers_are_a_fraction_of_headroom_capped_by_the_need() -> None:
    assert offer_amount(1_000, 10_000, offer_pct=50) == 1_000
    assert offer_amount(10_000, 1_001, offer_pct=50) == 500
    assert offer_amount(10_000, 0) == 0
    with pytest.raises(MarketError):
        offer_amount(1, 1, offer_pct=101)


def test_largest_offers_first_then_the_lower_index_and_the_last_in_part() -> None:
    offers = {dev(5): 300, dev(2): 500, dev(3): 500, dev(4): 100}
    assert accept_offers(1_000, offers) == {dev(2): 500, dev(3): 500}
    assert accept_offers(900, offers) == {dev(2): 500, dev(3): 400}
    assert accept_offers(5_000, offers) == {dev(2): 500, dev(3): 500, dev(5): 300, dev(4): 100}
    assert accept_offers(0, offers) == {}


def test_a_request_answered_by_peers() -> None:
    request = ShareRequest(dev(1), period=4, amount_msat=7_000, deadline_ms=NOW + 500)
    headroom = {dev(1): 9_999, dev(2): 10_000, dev(3): 6_000, dev(4): 0}
    offers = [o for g, h in headroom.items() if (o := make_offer(request, g, h, now_ms=NOW))]
    assert [(o.giver.device, o.amount_msat) for o in offers] == [(2, 5_000), (3, 3_000)]
    accept = make_accept(request, offers)
    assert [(g.giver.device, g.amount_msat) for g in accept.grants] == [(2, 5_000), (3, 2_000)]
    assert [amount_to_give(accept, o) for o in offers] == [5_000, 2_000]
    assert accept.total_msat == request.amount_msat
    assert make_offer(request, dev(2), 10_000, now_ms=NOW + 500) is None  # too late


def test_the_requester_takes_less_when_its_need_fell_and_ignores_stray_offers() -> None:
    request = ShareRequest(dev(1), 4, 7_000, NOW)
    other = ShareRequest(dev(1), 4, 7_000, NOW + 1)
    offers = [
        ShareOffer(request.id, dev(2), 5_000),
        ShareOffer(request.id, dev(2), 4_000),  # it lowered its offer: held to 4_000
        ShareOffer(other.id, dev(3), 5_000),  # another request
        ShareOffer(request.id, dev(1), 5_000),  # the requester itself
    ]
    accept = make_accept(request, offers, need_msat=6_000)
    assert accept.grants == make_accept(request, list(reversed(offers)), need_msat=6_000).grants
    assert [(g.giver.device, g.amount_msat) for g in accept.grants] == [(2, 4_000)]
    with pytest.raises(MarketError, match="the offer held"):
        amount_to_give(accept, ShareOffer(request.id, dev(2), 3_000))
    with pytest.raises(MarketError, match="another request"):
        amount_to_give(accept, ShareOffer(other.id, dev(2), 3_000))


def test_an_accept_takes_at_most_max_grants_offers() -> None:
    request = ShareRequest(dev(0), 1, 10**9, NOW)
    offers = [ShareOffer(request.id, dev(i), 1_000 + i) for i in range(1, MAX_GRANTS + 10)]
    accept = make_accept(request, offers)
    assert len(accept.grants) == MAX_GRANTS
    assert min(g.amount_msat for g in accept.grants) == 1_010  # the largest were taken
    assert ShareAccept.decode(accept.encode()) == accept


headrooms = st.dictionaries(st.integers(0, 30), st.integers(0, 10**7), max_size=12)


@given(st.integers(0, 10**7), headrooms, st.integers(0, 100))
def test_nobody_gives_more_than_its_share_of_headroom_nor_takes_more_than_needed(
    need: int, headroom: dict[int, int], pct: int
) -> None:
    plan = share_plan(need, headroom, offer_pct=pct)
    assert sum(plan.values()) <= need
    for giver, amount in plan.items():
        assert 0 < amount <= headroom[giver] * pct // 100
    offered = sum(min(need, h * pct // 100) for h in headroom.values())
    assert sum(plan.values()) == min(need, offered)  # covered whenever offers suffice


@given(st.integers(0, 10**7), headrooms, st.randoms())
def test_the_plan_does_not_depend_on_the_order_of_offers(
    need: int, headroom: dict[int, int], rnd: random.Random
) -> None:
    items = list(headroom.items())
    rnd.shuffle(items)
    assert share_plan(need, dict(items)) == share_plan(need, headroom)


@given(
    st.dictionaries(wide_parties, st.integers(0, 10**9), min_size=1, max_size=10),
    st.integers(0, 10**9),
)
def test_sats_are_conserved_and_no_balance_goes_negative(
    balances: dict[Party, int], need: int
) -> None:
    requester, *givers = sorted(balances)
    request = ShareRequest(requester, 1, need or 1, NOW + 1)
    offers = [o for g in givers if (o := make_offer(request, g, balances[g], now_ms=NOW))]
    accept = make_accept(request, offers)
    after = dict(balances)
    for offer in offers:
        amount = amount_to_give(accept, offer)
        after[offer.giver] -= amount
        after[requester] += amount
    assert sum(after.values()) == sum(balances.values())
    assert all(v >= 0 for v in after.values())
    assert accept.total_msat <= request.amount_msat
    assert ShareAccept.decode(accept.encode()) == accept


site_headrooms = st.dictionaries(
    st.sampled_from(["00000000000000bb", "00000000000000cc", "00000000000000dd"]),
    st.dictionaries(st.integers(0, 8), st.integers(0, 10**7), min_size=1, max_size=6),
    max_size=3,
)


@given(st.integers(0, 3 * 10**7), site_headrooms, st.integers(0, 100))
def test_site_to_site_sharing_uses_the_same_rule_on_aggregate_headroom(
    need: int, sites: dict[str, dict[int, int]], pct: int
) -> None:
    plan = site_share_plan(need, sites, offer_pct=pct)
    totals = {s: sum(h.values()) for s, h in sites.items()}
    expected = share_plan(need, totals, offer_pct=pct)
    assert {s: sum(parts.values()) for s, parts in plan.items()} == expected
    for site, parts in plan.items():
        for device, amount in parts.items():
            assert 0 < amount <= sites[site][device]


def test_site_to_site_example() -> None:
    sites = {"00000000000000bb": {1: 6_000, 2: 2_000}, "00000000000000cc": {1: 1_000}}
    plan = site_share_plan(3_000, sites, offer_pct=50)
    assert plan == {"00000000000000bb": {1: 2_250, 2: 750}}  # bb alone covers it
    assert site_share_plan(10_000, sites, offer_pct=50) == {
        "00000000000000bb": {1: 3_000, 2: 1_000},
        "00000000000000cc": {1: 500},
    }
