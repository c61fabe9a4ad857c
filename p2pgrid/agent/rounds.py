"""The site's pooled auction rounds, read from the replicated log.

A round ``(period, interval)`` of the pooled auction (docs/market.md, sections
2.4 and 6) is made of ``order`` log entries: each device that takes part
signs one, holding one market ``Ask`` or ``DemandCurve`` of that round. A
device that trades in the round logs a ``cleared`` entry naming the devices
whose orders its trades were cleared from (the *book*), the book's id and the
clearing price; a buyer's ``sale`` entries of the period are trades of its
clearings. Everything here is a pure function of log entries, so any replica
recomputes any round and checks any sale:

- :func:`order_text` / :func:`order_of`: an order as an ``order`` body, and
  back (an entry whose order does not name its author, period and interval is
  no order);
- :func:`round_book`: the devices and orders of a round in a log, and the
  :class:`~p2pgrid.market.Clearing` they clear to (``clear_pool``);
- :func:`check_pooled_sales`: what a replica finds wrong with the ``cleared``,
  ``sale`` and ``delivered`` entries of a log (an empty list: every pooled sale
  is a trade its author's clearing says, at that price, no seller sold on two
  books, and every sale paid on delivery was delivered in full).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pgrid.ledger import Cleared, Delivered, Entry, Order, Payment, Role, Sale
from p2pgrid.market import (
    Ask,
    Clearing,
    DemandCurve,
    MarketError,
    MessageError,
    Party,
    clear_pool,
    decode_message,
)

PoolOrder = Ask | DemandCurve


def order_text(order: PoolOrder) -> str:
    """The ``order`` field of an ``order`` entry: hex of the kind (u16) and bytes."""
    return f"{order.KIND:04x}{order.encode().hex()}"


def order_of(entry: Entry, site_id: str) -> PoolOrder | None:
    """The order an ``order`` entry holds, or None if it holds none that counts:
    not an ``Ask`` or ``DemandCurve``, or one that names another party than
    (``site_id``, the author's index) or another round than the entry's."""
    body = entry.body
    if not isinstance(body, Order) or entry.author.role is not Role.DEVICE:
        return None
    raw = bytes.fromhex(body.order)
    try:
        message = decode_message(int.from_bytes(raw[:2], "big"), raw[2:])
    except MessageError:
        return None
    if not isinstance(message, Ask | DemandCurve):
        return None
    if message.party != Party(site_id, entry.author.index):
        return None
    if message.round != (entry.period, body.interval):
        return None
    return message


def asks_in(entries: Iterable[Entry], site_id: str, *, period: int, interval: int) -> int:
    """How many asks of round (period, interval) ``entries`` hold."""
    return sum(
        1
        for e in entries
        if isinstance(e.body, Order)
        and e.period == period
        and e.body.interval == interval
        and isinstance(order_of(e, site_id), Ask)
    )


def book_text(devices: Iterable[int]) -> str:
    """The ``book`` field of a ``cleared`` entry: the indices, ascending, u32 hex."""
    return "".join(f"{d:08x}" for d in sorted(set(devices)))


@dataclass(frozen=True, slots=True)
class RoundBook:
    """The orders of one round that a log holds (of the listed devices only)."""

    devices: tuple[int, ...]
    orders: tuple[PoolOrder, ...]
    clearing: Clearing

    @property
    def book(self) -> str:
        return book_text(self.devices)


def round_book(
    entries: Iterable[Entry],
    site_id: str,
    *,
    period: int,
    interval: int,
    devices: Sequence[int] | None = None,
) -> RoundBook:
    """The round's orders in ``entries`` (every device's, or only those of
    ``devices``) and their clearing by the pooled rule. A device's two orders
    of one round (a forked chain) both count: the rule drops them both."""
    wanted = None if devices is None else set(devices)
    orders: list[PoolOrder] = []
    seen: set[int] = set()
    for entry in entries:
        if entry.period != period or not isinstance(entry.body, Order):
            continue
        if entry.body.interval != interval:
            continue
        if wanted is not None and entry.author.index not in wanted:
            continue
        order = order_of(entry, site_id)
        if order is not None:
            orders.append(order)
            seen.add(entry.author.index)
    clearing = clear_pool(orders, period=period, interval=interval)
    return RoundBook(tuple(sorted(seen)), tuple(orders), clearing)


def check_pooled_sales(entries: Sequence[Entry], site_id: str) -> list[str]:
    """What is wrong with the pooled rounds of ``entries`` (one line each):

    - a ``cleared`` entry whose book's orders (of the listed devices, in this
      log) do not hash to its ``book_id``, clear at another price, or give its
      author no trade;
    - a ``sale`` of a period in which its author has ``cleared`` entries that
      is not one of the trades (seller, author, Wh, msat) of those clearings,
      each trade counted once;
    - a ``sale`` whose seller logged a ``cleared`` entry of that round with
      another book than the buyer's (a seller sells on one book per round).

    A period in which a buyer logged no ``cleared`` entry holds sales of the
    per-producer auction (before version 2 of the log); they are not checked here.
    Deliveries (pay on delivery, docs/market.md section 6.2) are checked by
    :func:`check_deliveries`, whose findings are appended.
    """
    problems: list[str] = []
    clearings: dict[tuple[int, int, int], Clearing] = {}  # (author, period, interval)
    books: dict[tuple[int, int, int], bytes] = {}
    for entry in entries:
        body = entry.body
        if not isinstance(body, Cleared):
            continue
        me = entry.author.index
        where = f"device {me} round ({entry.period}, {body.interval})"
        try:
            found = round_book(
                entries, site_id, period=entry.period, interval=body.interval, devices=body.devices
            )
        except MarketError as exc:
            problems.append(f"{where}: its book does not clear: {exc}")
            continue
        clearing = found.clearing
        mine = Party(site_id, me)
        if clearing.book_id != body.book_id or found.devices != body.devices:
            problems.append(f"{where}: the log's orders of its book are not the book it names")
        elif clearing.price_msat_per_kwh != body.price_msat_per_kwh:
            problems.append(
                f"{where}: logged price {body.price_msat_per_kwh}, "
                f"the book clears at {clearing.price_msat_per_kwh}"
            )
        elif not any(mine in (t.seller, t.buyer) for t in clearing.trades):
            problems.append(f"{where}: the clearing gives it no trade")
        else:
            clearings[(me, entry.period, body.interval)] = clearing
            books[(me, entry.period, body.interval)] = body.book_id
    # (buyer, period, seller, Wh, msat) -> the rounds whose clearing has that trade
    owed: dict[tuple[int, int, int, int, int], list[int]] = {}
    for (me, period, interval), clearing in clearings.items():
        for trade in clearing.trades:
            if trade.buyer.device == me:
                key = (me, period, trade.seller.device, trade.energy_wh, trade.amount_msat)
                owed.setdefault(key, []).append(interval)
    pooled = {(e.author.index, e.period) for e in entries if isinstance(e.body, Cleared)}
    for entry in entries:
        body = entry.body
        me = entry.author.index
        if not isinstance(body, Sale) or (me, entry.period) not in pooled:
            continue
        key = (me, entry.period, body.seller, body.energy_wh, body.amount_msat)
        rounds = owed.get(key)
        if not rounds:
            problems.append(
                f"device {me} period {entry.period}: sale of {body.energy_wh} Wh from "
                f"device {body.seller} for {body.amount_msat} msat is no trade of its clearings"
            )
            continue
        interval = rounds.pop(0)
        theirs = books.get((body.seller, entry.period, interval))
        if theirs is not None and theirs != books[(me, entry.period, interval)]:
            problems.append(
                f"device {body.seller} sold to device {me} in round ({entry.period}, "
                f"{interval}) on another book than the one it cleared"
            )
    return problems + check_deliveries(entries, clearings)


def check_deliveries(
    entries: Sequence[Entry], clearings: dict[tuple[int, int, int], Clearing]
) -> list[str]:
    """What is wrong with the ``delivered`` entries of ``entries`` (one line
    each), given the valid clearings of :func:`check_pooled_sales` by
    (author, period, interval). A buyer that logged a ``delivered`` entry in a
    period pays on delivery in that period (the log does not say it otherwise):

    - two ``delivered`` entries of one buyer for one trade (round and seller);
    - a ``delivered`` entry for no trade (seller to author) of its author's
      clearing of that round;
    - a ``delivered`` entry whose hash the buyer paid (a ``payment`` of that
      period) for another amount than the trade's, or that shows fewer Wh than
      the trade it paid for (a seller settles only a whole delivery);
    - a ``sale`` of such a buyer and period that is not the trade of one paid
      ``delivered`` entry (each counted once): paid without a delivery shown.

    A ``delivered`` entry whose hash nobody paid is a cancelled trade: fine.
    """
    problems: list[str] = []
    paid: dict[tuple[int, int], dict[bytes, int]] = {}  # (buyer, period) -> hash -> msat
    for entry in entries:
        if isinstance(entry.body, Payment) and entry.author.role is Role.DEVICE:
            by_hash = paid.setdefault((entry.author.index, entry.period), {})
            by_hash[entry.body.payment_hash] = entry.body.amount_msat
    # (buyer, period) -> the trades (seller, Wh, msat) paid on a delivery entry
    settled: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    seen: set[tuple[int, int, int, int]] = set()
    for entry in entries:
        body = entry.body
        if not isinstance(body, Delivered) or entry.author.role is not Role.DEVICE:
            continue
        me = entry.author.index
        settled.setdefault((me, entry.period), [])
        where = f"device {me} round ({entry.period}, {body.interval})"
        key = (me, entry.period, body.interval, body.seller)
        if key in seen:
            problems.append(
                f"{where}: two delivered entries for its trade with device {body.seller}"
            )
            continue
        seen.add(key)
        clearing = clearings.get((me, entry.period, body.interval))
        trade = next(
            (
                t
                for t in (clearing.trades if clearing is not None else ())
                if t.buyer.device == me and t.seller.device == body.seller
            ),
            None,
        )
        if trade is None:
            problems.append(
                f"{where}: delivered from device {body.seller} is no trade of its clearing"
            )
            continue
        amount = paid.get((me, entry.period), {}).get(body.payment_hash)
        if amount is None:
            continue  # not paid: the seller cancelled
        if amount != trade.amount_msat:
            problems.append(
                f"{where}: paid {amount} msat on the delivery from device {body.seller}, "
                f"the trade is {trade.amount_msat} msat"
            )
            continue
        if body.energy_wh < trade.energy_wh:
            problems.append(
                f"{where}: paid for {trade.energy_wh} Wh from device {body.seller} "
                f"on a delivery of {body.energy_wh} Wh"
            )
        settled[(me, entry.period)].append(
            (trade.seller.device, trade.energy_wh, trade.amount_msat)
        )
    for entry in entries:
        body = entry.body
        if not isinstance(body, Sale) or entry.author.role is not Role.DEVICE:
            continue
        trades = settled.get((entry.author.index, entry.period))
        if trades is None:
            continue  # this buyer does not pay on delivery in this period
        sold = (body.seller, body.energy_wh, body.amount_msat)
        if sold in trades:
            trades.remove(sold)
        else:
            problems.append(
                f"device {entry.author.index} period {entry.period}: sale of "
                f"{body.energy_wh} Wh from device {body.seller} paid on delivery has no "
                "delivered entry naming its payment"
            )
    return problems
