"""Budget sharing: how a device that runs short gets part of its peers' allocations.

The rule (the same between devices of a site and between sites):

1. A requester asks for its need (its forecast shortfall, see ``forecast``).
2. Each peer with headroom offers ``min(need, headroom x offer_pct / 100)``
   (rounded down): a giver never offers more than its headroom, nor more than
   was asked. A peer without headroom stays silent.
3. The requester takes offers largest first, ties to the lower party (device
   index, then site id), each in full until the next would pass the need; that
   one it takes in part. It never accepts more than it needs, nor more than an
   offer holds, nor more than :data:`~p2pgrid.market.messages.MAX_GRANTS` offers.

**Sized from the forecast** (:func:`spare_msat`, :func:`early_need_msat`):
a device's headroom is what its balance holds beyond its own forecast cost of
the rest of the period (:class:`~p2pgrid.market.forecast.Forecast`), so a
giver never gives what its forecast needs; a forecast resting on fewer than
``min_samples`` readings (the device does not know its routine yet) claims no
headroom. A device whose forecast for the rest of the period exceeds its
balance asks for that shortfall early, before the interval that runs short.
**Budget received is not given on in the same period**: a share answers a
request, so its receiver was short; its headroom is at most its balance less
what it received in the period (at the last interval, where the forecast
covers nothing, the balance would otherwise count whole as headroom).

Between sites, a site's headroom is the sum of its devices' headrooms; what a
site grants is then split among its devices in proportion to their headroom
(:func:`p2pgrid.billing.split_budget`, largest remainder), so no device gives
more than its own headroom and the parts add up to the site's grant exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Protocol, TypeVar

from p2pgrid.billing import split_budget
from p2pgrid.market.errors import MarketError
from p2pgrid.market.forecast import Forecast
from p2pgrid.market.messages import MAX_GRANTS, Grant, Party, ShareAccept, ShareOffer, ShareRequest

DEFAULT_OFFER_PCT: Final = 50


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


K = TypeVar("K", bound=_Ordered)


def offer_amount(need_msat: int, headroom_msat: int, *, offer_pct: int = DEFAULT_OFFER_PCT) -> int:
    """What a giver with ``headroom_msat`` offers towards ``need_msat``."""
    if need_msat < 0 or headroom_msat < 0 or not 0 <= offer_pct <= 100:
        raise MarketError("need and headroom are >= 0 and offer_pct within 0..100")
    return min(need_msat, headroom_msat * offer_pct // 100)


def spare_msat(forecast: Forecast, *, min_samples: int = 1, received_msat: int = 0) -> int:
    """What a device may give now: its balance beyond its forecast cost of the
    rest of the period, and never the ``received_msat`` it was given in this
    period (a share answers a request: the device was short; it is spent first,
    so at most ``balance - received`` is its own); nothing while the forecast
    rests on fewer than ``min_samples`` readings."""
    if min_samples < 1:
        raise MarketError("min_samples is at least 1")
    if received_msat < 0:
        raise MarketError("received_msat is never negative")
    if forecast.samples < min_samples:
        return 0
    return max(0, min(forecast.headroom_msat, forecast.balance_msat - received_msat))


def early_need_msat(forecast: Forecast, *, min_samples: int = 1) -> int:
    """What a device asks for early: its forecast shortfall for the rest of the
    period; nothing while the forecast rests on fewer than ``min_samples`` readings."""
    if min_samples < 1:
        raise MarketError("min_samples is at least 1")
    return forecast.need_msat if forecast.samples >= min_samples else 0


def accept_offers(
    need_msat: int, offers: Mapping[K, int], *, max_givers: int | None = None
) -> dict[K, int]:
    """The amounts taken from each giver (only givers that give something):
    largest offers first, ties to the lower key, the last one in part."""
    if need_msat < 0 or any(amount < 0 for amount in offers.values()):
        raise MarketError("need and offers are never negative")
    taken: dict[K, int] = {}
    left = need_msat
    for giver in sorted((g for g, a in offers.items() if a > 0), key=lambda g: (-offers[g], g)):
        if left == 0 or (max_givers is not None and len(taken) == max_givers):
            break
        taken[giver] = min(offers[giver], left)
        left -= taken[giver]
    return taken


def share_plan(
    need_msat: int, headrooms: Mapping[K, int], *, offer_pct: int = DEFAULT_OFFER_PCT
) -> dict[K, int]:
    """The whole rule at once: who gives what towards ``need_msat``."""
    offers = {k: offer_amount(need_msat, h, offer_pct=offer_pct) for k, h in headrooms.items()}
    return accept_offers(need_msat, offers)


def site_share_plan(
    need_msat: int,
    site_headrooms: Mapping[str, Mapping[int, int]],
    *,
    offer_pct: int = DEFAULT_OFFER_PCT,
) -> dict[str, dict[int, int]]:
    """Site-to-site sharing: site id -> device -> amount it gives (positive only).

    ``site_headrooms`` maps each peer site (not the requesting one) to the
    headroom of each of its devices."""
    totals = {site: sum(devices.values()) for site, devices in site_headrooms.items()}
    plan: dict[str, dict[int, int]] = {}
    for site, grant in share_plan(need_msat, totals, offer_pct=offer_pct).items():
        parts = split_budget(grant, site_headrooms[site])
        plan[site] = {device: amount for device, amount in parts.items() if amount > 0}
    return plan


def make_offer(
    request: ShareRequest,
    giver: Party,
    headroom_msat: int,
    *,
    now_ms: int,
    offer_pct: int = DEFAULT_OFFER_PCT,
) -> ShareOffer | None:
    """The giver's answer to ``request``, or None (its own request, expired, no headroom).

    ``headroom_msat`` is what the giver can spare now: the caller subtracts
    what it has already offered to other open requests."""
    if giver == request.requester or not request.is_open(now_ms):
        return None
    amount = offer_amount(request.amount_msat, headroom_msat, offer_pct=offer_pct)
    return ShareOffer(request.id, giver, amount) if amount else None


def make_accept(
    request: ShareRequest, offers: Iterable[ShareOffer], *, need_msat: int | None = None
) -> ShareAccept:
    """The requester's answer: which offers it takes, and how much of each.

    Offers for another request or from the requester itself are ignored. A
    giver that sent several different offers is held to the smallest (it may
    have lowered its offer after committing elsewhere). ``need_msat`` is the
    need now (it may have fallen since the request); it is capped by the
    request's amount."""
    need = request.amount_msat if need_msat is None else min(need_msat, request.amount_msat)
    by_giver: dict[Party, int] = {}
    for offer in offers:
        if offer.request_id != request.id or offer.giver == request.requester:
            continue
        known = by_giver.get(offer.giver)
        by_giver[offer.giver] = (
            offer.amount_msat if known is None else min(known, offer.amount_msat)
        )
    taken = accept_offers(need, by_giver, max_givers=MAX_GRANTS)
    grants = tuple(Grant(giver, amount) for giver, amount in sorted(taken.items()))
    return ShareAccept(request.id, grants)


def amount_to_give(accept: ShareAccept, offer: ShareOffer) -> int:
    """What the giver of ``offer`` now gives (0 if declined). An accept that
    takes more than the offer held is refused with :class:`MarketError`."""
    if accept.request_id != offer.request_id:
        raise MarketError("the accept answers another request")
    amount = accept.granted_by(offer.giver)
    if amount > offer.amount_msat:
        raise MarketError(f"accept takes {amount} msat, the offer held {offer.amount_msat}")
    return amount
