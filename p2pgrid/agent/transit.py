"""Energy traded between sites, checked from the log (docs/market.md, section 6.3).

A device may buy energy from a producer of a *neighbouring* site (one its
site's config lists) after its own site's pooled round: the producer's unsold
``Ask`` of the round, at the ask's price. Each side logs one ``site_sale``
entry in its own site's log:

- the buyer, side BOUGHT, carrying the producer's signed ``order`` entry (from
  the producer's site log), so every replica of the buyer's site checks the
  trade against the ask with no access to the other log;
- the producer, side SOLD, carrying the buyer's signed ``site_sale`` entry, so
  every replica of the producer's site credits its proceeds only for a
  purchase the buyer signed, and checks that it never sold more than it asked.

:func:`check_site_sales` is the replica's check; it is pure (log entries and
the neighbouring sites' memberships in, one line per problem out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from p2pgrid.agent.rounds import order_of, round_book
from p2pgrid.ledger import (
    Author,
    Cleared,
    Entry,
    MalformedError,
    Membership,
    Order,
    SaleSide,
    SiteSale,
    decode_entry,
)
from p2pgrid.ledger.views import verified_purchase
from p2pgrid.market import Ask, MarketError, Party


def site_id_of(site_hash: bytes) -> str:
    """The net layer's site id of a site hash: its first 8 bytes in hex."""
    return site_hash[:8].hex()


def ask_of(order: Entry, site_hash: bytes) -> Ask | None:
    """The ``Ask`` an ``order`` entry of the site ``site_hash`` holds for its own
    round and author, or None (no ask: a curve, or a message that does not count)."""
    found = order_of(order, site_id_of(site_hash))
    return found if isinstance(found, Ask) else None


def purchase_problem(
    body: SiteSale, period: int, peer_sites: Mapping[bytes, Membership]
) -> tuple[str | None, Ask | None]:
    """Why a buyer's ``site_sale`` (side BOUGHT) of ``period`` is not a purchase
    from the ask it carries (None if it is), and that ask."""
    membership = peer_sites.get(body.other_site)
    if membership is None:
        return "the seller's site is not a neighbouring site", None
    try:
        order = decode_entry(body.evidence, body.other_site)
    except MalformedError as exc:
        return f"its evidence is no entry of the seller's site: {exc}", None
    if membership.check(order) is not None:
        return "its evidence is not signed by a member of the seller's site", None
    ask = ask_of(order, body.other_site)
    if ask is None or not isinstance(order.body, Order):
        return "its evidence holds no ask", None
    if (order.author, order.period, order.body.interval) != (
        Author.device(body.other_device),
        period,
        body.interval,
    ):
        return "the ask is of another seller or round", None
    if body.energy_wh > ask.energy_wh:
        return f"{body.energy_wh} Wh is more than the ask's {ask.energy_wh} Wh", None
    if body.amount_msat != body.energy_wh * ask.price_msat_per_kwh // 1000:
        return f"{body.amount_msat} msat is not {body.energy_wh} Wh at the ask's price", None
    return None, ask


def check_site_sales(
    entries: Sequence[Entry], site_hash: bytes, peer_sites: Mapping[bytes, Membership]
) -> list[str]:
    """What is wrong with the ``site_sale`` entries of a log of site ``site_hash``
    (one line each; an empty list: every cross-site trade checks):

    - a purchase (side BOUGHT) whose evidence is not a signed ``Ask`` of its
      seller and round in the seller's site (a neighbour in ``peer_sites``),
      buys more than it, or pays another amount than its Wh at the ask's price;
    - the purchases of this log from one seller and round add up to more than
      its ask;
    - a sale (side SOLD) whose evidence is not the buyer's signed purchase of
      this very trade (this site, this seller, its ``order`` entry in this log);
    - a seller whose pooled trades of a round (by its ``cleared`` book) and sales
      to other sites add up to more than its ask of the round.
    """
    problems: list[str] = []
    site_id = site_id_of(site_hash)
    bought: dict[tuple[bytes, int, int, int], int] = {}  # (site, seller, period, i) -> Wh
    asked: dict[tuple[bytes, int, int, int], int] = {}
    sold: dict[tuple[int, int, int], int] = {}  # (seller, period, interval) -> Wh
    orders = {e.id: e for e in entries if isinstance(e.body, Order)}
    counted: set[bytes] = set()
    for entry in entries:
        body = entry.body
        if not isinstance(body, SiteSale):
            continue
        me = entry.author.index
        where = f"device {me} round ({entry.period}, {body.interval})"
        if body.side == SaleSide.BOUGHT:
            problem, ask = purchase_problem(body, entry.period, peer_sites)
            if problem is not None or ask is None:
                problems.append(f"{where}: purchase from device {body.other_device}: {problem}")
                continue
            key = (body.other_site, body.other_device, entry.period, body.interval)
            bought[key] = bought.get(key, 0) + body.energy_wh
            asked[key] = ask.energy_wh
            continue
        purchase = verified_purchase(body, peer_sites)
        if purchase is None:
            problems.append(f"{where}: sale to device {body.other_device}: no signed purchase")
            continue
        p = purchase.body
        assert isinstance(p, SiteSale)
        try:
            order = orders.get(decode_entry(p.evidence, site_hash).id)
        except MalformedError:
            order = None
        if (
            order is None
            or order.author != entry.author
            or purchase.period != entry.period
            or p.other_site != site_hash
            or p.other_device != me
            or purchase.id in counted
        ):
            problems.append(f"{where}: sale to device {body.other_device}: not its own ask's")
            continue
        counted.add(purchase.id)
        key3 = (me, entry.period, body.interval)
        sold[key3] = sold.get(key3, 0) + body.energy_wh
    for key, wh in bought.items():
        if wh > asked[key]:
            problems.append(
                f"purchases from device {key[1]} of site {site_id_of(key[0])} in round "
                f"({key[2]}, {key[3]}): {wh} Wh, more than its ask of {asked[key]} Wh"
            )
    for (seller, period, interval), wh in sold.items():
        ask = _own_ask(entries, site_hash, seller, period, interval)
        local = _pooled_wh(entries, site_id, seller, period, interval)
        if ask is None or local + wh > ask.energy_wh:
            problems.append(
                f"device {seller} round ({period}, {interval}): sold {local} Wh in the pool and "
                f"{wh} Wh to other sites, its ask was "
                f"{ask.energy_wh if ask else 0} Wh"
            )
    return problems


def _own_ask(
    entries: Sequence[Entry], site_hash: bytes, seller: int, period: int, interval: int
) -> Ask | None:
    for e in entries:
        if (
            isinstance(e.body, Order)
            and e.author == Author.device(seller)
            and e.period == period
            and e.body.interval == interval
        ):
            return ask_of(e, site_hash)
    return None


def _pooled_wh(
    entries: Sequence[Entry], site_id: str, seller: int, period: int, interval: int
) -> int:
    """The Wh ``seller`` sold in its site's pooled round, by its ``cleared`` book."""
    for e in entries:
        body = e.body
        if (
            isinstance(body, Cleared)
            and e.author == Author.device(seller)
            and e.period == period
            and body.interval == interval
        ):
            try:
                book = round_book(
                    entries, site_id, period=period, interval=interval, devices=body.devices
                )
            except MarketError:
                return 0  # check_pooled_sales reports it
            me = Party(site_id, seller)
            return sum(t.energy_wh for t in book.clearing.trades if t.seller == me)
    return 0
