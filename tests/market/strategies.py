"""Hypothesis strategies for market values: parties, orders, messages."""

from __future__ import annotations

from hypothesis import strategies as st

from p2pgrid.market import (
    MAX_PRICE_MSAT_PER_KWH,
    PRICE_TICK_MSAT_PER_KWH,
    Ask,
    Bid,
    DemandCurve,
    Grant,
    Party,
    ShareAccept,
    ShareOffer,
    ShareRequest,
    Step,
    clear,
)

SITES = ("00000000000000aa", "00000000000000bb", "1234567890abcdef")
PERIOD, INTERVAL = 3, 17

sites = st.sampled_from(SITES)
parties = st.builds(Party, sites, st.integers(0, 12))
wide_parties = st.builds(
    Party, st.binary(min_size=8, max_size=8).map(bytes.hex), st.integers(0, 2**32 - 1)
)
hashes = st.binary(min_size=32, max_size=32)
msat = st.integers(1, 2**63 - 1)
prices = st.integers(1, MAX_PRICE_MSAT_PER_KWH // PRICE_TICK_MSAT_PER_KWH).map(
    lambda n: n * PRICE_TICK_MSAT_PER_KWH
)
# Prices of a small range so that books cross and tie often.
near_prices = st.integers(100, 130).map(lambda n: n * PRICE_TICK_MSAT_PER_KWH)

share_requests = st.builds(
    ShareRequest, wide_parties, st.integers(0, 2**32 - 1), msat, st.integers(0, 2**63 - 1)
)
share_offers = st.builds(ShareOffer, hashes, wide_parties, msat)
share_accepts = st.builds(
    ShareAccept,
    hashes,
    st.dictionaries(wide_parties, msat, max_size=8).map(
        lambda d: tuple(Grant(p, a) for p, a in sorted(d.items(), key=lambda kv: kv[0].sort_key))
    ),
)


def orders(
    cls: type[Ask] | type[Bid], price: st.SearchStrategy[int] = near_prices
) -> st.SearchStrategy[Ask | Bid]:
    return st.builds(cls, parties, st.just(PERIOD), st.just(INTERVAL), st.integers(1, 500), price)


asks = orders(Ask)
bids = orders(Bid)
wide_asks = st.builds(
    Ask,
    wide_parties,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(1, 10**9),
    prices,
)
wide_bids = st.builds(
    Bid,
    wide_parties,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(1, 10**9),
    prices,
)


def _steps(prices: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[Step, ...]]:
    return st.lists(
        st.tuples(prices, st.integers(1, 500)), min_size=1, max_size=4, unique_by=lambda t: t[0]
    ).map(lambda pairs: tuple(Step(price, wh) for price, wh in sorted(pairs, reverse=True)))


curves = st.builds(DemandCurve, parties, st.just(PERIOD), st.just(INTERVAL), _steps(near_prices))
wide_curves = st.builds(
    DemandCurve,
    wide_parties,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.lists(
        st.tuples(prices, st.integers(1, 10**8)), min_size=1, max_size=8, unique_by=lambda t: t[0]
    ).map(lambda pairs: tuple(Step(price, wh) for price, wh in sorted(pairs, reverse=True))),
)
clearings = st.builds(
    lambda a, b: clear(a, b, period=PERIOD, interval=INTERVAL),
    st.lists(asks, max_size=12),
    st.lists(bids, max_size=12),
)
messages = st.one_of(
    share_requests, share_offers, share_accepts, wide_asks, wide_bids, wide_curves, clearings
)
