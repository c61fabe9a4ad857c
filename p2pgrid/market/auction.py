"""A pay-as-clear double auction on energy, one round per interval or per period.

Sellers post :class:`Ask` orders (energy at a minimum price), buyers post
:class:`Bid` orders (energy at a maximum price), all for one round (a period
and an interval, or :data:`PERIOD_WIDE`). Every agent that holds the same
orders computes the same :class:`Clearing`:

1. Orders of another round are refused (:class:`MarketError`). Equal orders
   (a retried message, same id) count once. A party with both an ask and a bid
   in the round has all its orders dropped: nobody trades with itself.
2. Asks are sorted by ascending price, bids by descending price; ties go to
   the lower party (device index, then site id), then to the lower order id.
3. Walking both lists, the best remaining ask and bid are matched while the
   ask's price is at most the bid's, for the smaller of their remaining energy
   (partial fills allowed; what is left of an order waits for the next match).
4. The price interval is ``[max(a, b'), min(b, a')]``, where ``a`` and ``b``
   are the prices of the last (marginal) matched ask and bid, and ``a'`` and
   ``b'`` those of the first ask and bid with energy left unmatched (if any).
   It is never empty: every matched seller asked at most its lower end, every
   matched buyer bid at least its upper end, and every order left with
   unmatched energy is priced at or beyond it. The clearing price is the interval's midpoint,
   rounded down to the price tick.
5. Every trade, one per (seller, buyer) pair, pays that single price:
   ``amount_msat = energy_wh x price / 1000``, exact because prices are whole
   msat per Wh (:data:`PRICE_TICK_MSAT_PER_KWH`). Buyers pay exactly what
   sellers receive; nothing is rounded, nothing is created or lost.

No seller sells more than it asked, no buyer buys more than it bid nor pays
more than ``energy x max price / 1000`` (see :func:`max_bid_energy` to size a
bid to a balance). The result does not depend on the order of the inputs.

Steps 3 to 5 (:func:`match`, :func:`publish`) are shared with the pooled
auction of a site (:mod:`p2pgrid.market.pool`), which feeds them every ask and
every demand-curve step of a round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from p2pgrid.market.errors import MarketError
from p2pgrid.market.messages import (
    MAX_ENERGY_WH,
    MAX_TRADES,
    PRICE_TICK_MSAT_PER_KWH,
    Ask,
    Bid,
    Clearing,
    Party,
    Trade,
    book_id,
    trade_amount_msat,
)

TICK: Final = PRICE_TICK_MSAT_PER_KWH


def max_bid_energy(balance_msat: int, max_price_msat_per_kwh: int) -> int:
    """The most energy a bid at ``max_price_msat_per_kwh`` may ask for so that
    the buyer can pay for all of it from ``balance_msat``."""
    if balance_msat < 0 or max_price_msat_per_kwh <= 0 or max_price_msat_per_kwh % TICK:
        raise MarketError("a balance >= 0 and a positive price on the tick")
    return min(MAX_ENERGY_WH, balance_msat // (max_price_msat_per_kwh // TICK))


def _distinct(
    orders: Iterable[Ask] | Iterable[Bid], period: int, interval: int
) -> dict[bytes, Ask | Bid]:
    out: dict[bytes, Ask | Bid] = {}
    for order in orders:
        if order.round != (period, interval):
            raise MarketError(f"{order} is not an order of round ({period}, {interval})")
        out[order.id] = order
    return out


@dataclass(frozen=True, slots=True)
class Block:
    """A quantity of energy one party sells (at no less than) or buys (at no
    more than) ``price_msat_per_kwh``: the unit the matching walks over."""

    party: Party
    price_msat_per_kwh: int
    energy_wh: int


def match(
    sells: Sequence[Block], buys: Sequence[Block]
) -> tuple[int, dict[tuple[Party, Party], int]]:
    """Steps 3 and 4 of the rule: walk ``sells`` (best first: ascending price)
    against ``buys`` (best first: descending price) and return the clearing
    price (0 without a match) and the energy matched per (seller, buyer)."""
    sell_left = [b.energy_wh for b in sells]
    buy_left = [b.energy_wh for b in buys]
    matched: dict[tuple[Party, Party], int] = {}
    i = j = 0
    marginal: tuple[int, int] | None = None
    while i < len(sells) and j < len(buys):
        ask, bid = sells[i], buys[j]
        if ask.price_msat_per_kwh > bid.price_msat_per_kwh:
            break
        energy = min(sell_left[i], buy_left[j])
        pair = (ask.party, bid.party)
        matched[pair] = matched.get(pair, 0) + energy
        marginal = (ask.price_msat_per_kwh, bid.price_msat_per_kwh)
        sell_left[i] -= energy
        buy_left[j] -= energy
        if sell_left[i] == 0:
            i += 1
        if buy_left[j] == 0:
            j += 1
    if marginal is None:
        return 0, {}
    low, high = marginal
    if j < len(buys):
        low = max(low, buys[j].price_msat_per_kwh)
    if i < len(sells):
        high = min(high, sells[i].price_msat_per_kwh)
    return low + (high - low) // (2 * TICK) * TICK, matched


def publish(
    period: int, interval: int, book: bytes, price: int, matched: dict[tuple[Party, Party], int]
) -> Clearing:
    """The :class:`Clearing` of ``matched`` at ``price``: one trade per pair, in
    canonical order, each paying ``energy x price / 1000`` exactly."""
    if not matched:
        return Clearing(period, interval, 0, book, ())
    if len(matched) > MAX_TRADES:
        raise MarketError(f"{len(matched)} trades exceed {MAX_TRADES}: split the round")
    trades = tuple(
        Trade(seller, buyer, energy, trade_amount_msat(energy, price))
        for (seller, buyer), energy in sorted(
            matched.items(), key=lambda kv: (kv[0][0].sort_key, kv[0][1].sort_key)
        )
    )
    return Clearing(period, interval, price, book, trades)


def clear(asks: Iterable[Ask], bids: Iterable[Bid], *, period: int, interval: int) -> Clearing:
    """Clear one round (see the module docstring for the rule)."""
    ask_book = _distinct(asks, period, interval)
    bid_book = _distinct(bids, period, interval)
    book = book_id([*ask_book.values(), *bid_book.values()])
    both = {o.party for o in ask_book.values()} & {o.party for o in bid_book.values()}
    sells = sorted(
        (o for o in ask_book.values() if o.party not in both),
        key=lambda o: (o.price_msat_per_kwh, o.party.sort_key, o.id),
    )
    buys = sorted(
        (o for o in bid_book.values() if o.party not in both),
        key=lambda o: (-o.price_msat_per_kwh, o.party.sort_key, o.id),
    )
    price, matched = match(
        [Block(o.party, o.price_msat_per_kwh, o.energy_wh) for o in sells],
        [Block(o.party, o.price_msat_per_kwh, o.energy_wh) for o in buys],
    )
    return publish(period, interval, book, price, matched)


def net_msat(clearing: Clearing) -> dict[Party, int]:
    """Per party: msat received minus msat paid (sellers positive, buyers negative).
    The values add up to zero."""
    net: dict[Party, int] = {}
    for trade in clearing.trades:
        net[trade.seller] = net.get(trade.seller, 0) + trade.amount_msat
        net[trade.buyer] = net.get(trade.buyer, 0) - trade.amount_msat
    return net


def net_wh(clearing: Clearing) -> dict[Party, int]:
    """Per party: Wh sold minus Wh bought."""
    net: dict[Party, int] = {}
    for trade in clearing.trades:
        net[trade.seller] = net.get(trade.seller, 0) + trade.energy_wh
        net[trade.buyer] = net.get(trade.buyer, 0) - trade.energy_wh
    return net


def check_clearing(clearing: Clearing, asks: Iterable[Ask], bids: Iterable[Bid]) -> None:
    """Raise :class:`MarketError` unless ``clearing`` is what these orders clear to."""
    mine = clear(asks, bids, period=clearing.period, interval=clearing.interval)
    if mine.book_id != clearing.book_id:
        raise MarketError("the clearing was computed from another order book")
    if mine != clearing:
        raise MarketError("the clearing does not follow from its order book")
