"""The pooled pay-as-clear auction of a site: every producer's ask and every
buyer's demand curve of one round clear together at one price.

Inputs of a round ``(period, interval)``: :class:`Ask` orders (a seller's
energy at a minimum price) and :class:`DemandCurve` orders (how much a buyer
takes at each price, PowerMatcher style). Every agent that holds the same
orders computes the same :class:`Clearing`, whatever order they arrived in:

1. An order of another round is refused (:class:`MarketError`). Equal orders
   (same id: a retried message) count once. **One order per party and round**:
   a party with two or more distinct orders in the round (two asks, two
   curves, or an ask and a curve) has all of them dropped. So nobody trades
   with itself, and a peer that equivocates trades nothing. The dropped orders
   still count in ``book_id``: replicas agree on what they were given.
2. Each ask is one sell block; each curve step is one buy block. Sell blocks
   are sorted by ascending price, then the lower party (device index, then
   site id); buy blocks by descending price, then the lower party. The keys are
   unique (one order per party, distinct prices within a curve), so the order
   is total and needs no tie-break on ids.
3. The blocks are matched as :func:`p2pgrid.market.auction.match` walks them:
   the best remaining sell block against the best remaining buy block while its
   price is at most the buy block's, for the smaller of their remaining energy.
4. The price interval ``[max(a, b'), min(b, a')]`` (the marginal matched
   prices ``a``, ``b``; the first blocks with energy left ``a'``, ``b'``) is
   never empty; the price is its midpoint rounded down to the price tick
   (1000 msat/kWh = 1 msat/Wh).
5. One trade per (seller, buyer) pair, ``amount = energy_wh x price / 1000``:
   an exact integer because the price is on the tick, so nothing is rounded and
   buyers pay exactly what sellers receive.

Hence, at the clearing price ``p``: no seller sells below its ask nor more
than it asked; no buyer takes more than its curve's demand at ``p`` (it pays
``p`` for each Wh, at most the price of the step that Wh came from); every
block left with energy is priced at or beyond ``p`` (an unserved buyer would
not pay ``p``, an unsold seller would not take it), so the volume is the
largest the curves allow. :func:`check_pool_clearing` recomputes a published
clearing from its orders.
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pgrid.market.auction import Block, match, publish
from p2pgrid.market.errors import MarketError
from p2pgrid.market.messages import Ask, Clearing, DemandCurve, Party, book_id

Order = Ask | DemandCurve


def pool_orders(
    orders: Iterable[Order], *, period: int, interval: int
) -> tuple[bytes, list[Ask], list[DemandCurve]]:
    """Step 1: the round's ``book_id`` and the asks and curves that take part
    (one order per party; a party with several distinct orders is left out)."""
    book: dict[bytes, Order] = {}
    for order in orders:
        if not isinstance(order, Ask | DemandCurve):
            raise MarketError(f"{type(order).__name__} is not an order of the pooled auction")
        if order.round != (period, interval):
            raise MarketError(f"{order} is not an order of round ({period}, {interval})")
        book[order.id] = order
    count: dict[Party, int] = {}
    for order in book.values():
        count[order.party] = count.get(order.party, 0) + 1
    single = [o for o in book.values() if count[o.party] == 1]
    asks = [o for o in single if isinstance(o, Ask)]
    curves = [o for o in single if isinstance(o, DemandCurve)]
    return book_id(list(book.values())), asks, curves


def clear_pool(orders: Iterable[Order], *, period: int, interval: int) -> Clearing:
    """Clear one round of the site's pool (see the module docstring for the rule)."""
    book, asks, curves = pool_orders(orders, period=period, interval=interval)
    sells = sorted(
        (Block(a.party, a.price_msat_per_kwh, a.energy_wh) for a in asks),
        key=lambda b: (b.price_msat_per_kwh, b.party.sort_key),
    )
    buys = sorted(
        (
            Block(c.party, step.price_msat_per_kwh, step.energy_wh)
            for c in curves
            for step in c.steps
        ),
        key=lambda b: (-b.price_msat_per_kwh, b.party.sort_key),
    )
    price, matched = match(sells, buys)
    return publish(period, interval, book, price, matched)


def check_pool_clearing(clearing: Clearing, orders: Iterable[Order]) -> None:
    """Raise :class:`MarketError` unless ``clearing`` is what ``orders`` clear to
    in the pool: a replica's check of a published (or logged) result."""
    mine = clear_pool(orders, period=clearing.period, interval=clearing.interval)
    if mine.book_id != clearing.book_id:
        raise MarketError("the clearing was computed from another order book")
    if mine != clearing:
        raise MarketError("the clearing does not follow from its order book")
