"""A device's demand curve for one pooled round, and what the clearing price
then means for its load (docs/market.md, section 2.8).

A device that needs ``need_wh`` from outside in an interval splits it by its
flexibility (:class:`Flexibility`, from its class and config):

1. **Firm** load, ``need_wh - flexible_wh`` with
   ``flexible_wh = need_wh x flexible_pct / 100`` (rounded down): it must run
   now, so it is bid at up to the tariff (rounded up to the price tick).
2. **Flexible** load (an EV charging, a boiler heating) is bid only below the
   tariff, spread over ``steps`` prices from ``top_pct`` down to ``floor_pct``
   of the tariff (evenly, each rounded down to the tick): step ``k`` of ``n``
   holds ``flexible_wh x (k + 1) // n - flexible_wh x k // n`` Wh, so the
   cheaper the energy, the more the device buys.
3. **Budget.** At a clearing price ``p`` the buyer takes every step priced
   ``>= p`` and pays ``p`` per Wh, at most the step's own price; so the curve
   is affordable when each step's *cumulative* energy times its price is at
   most what pays for it. Firm steps are paid from ``balance_msat``; flexible
   steps only from ``balance_msat - reserve_msat`` (the ``reserve`` is what the
   device's own forecast needs for the rest of the period: flexible load never
   eats it). Steps are cut to fit in price order, dearest first; if the firm
   step is cut, no flexible step is bid (firm load first: flexible load is bid
   only once the firm load is bid in full). A step left empty is dropped;
   flexible prices that round to one tick count once. No step, no curve.

After the round clears at ``p`` (:func:`deferred_wh`), the flexible energy
the curve did not commit to buy at ``p`` (in steps priced below ``p``, or cut
by the budget) is **deferred**: the device does not draw it in this interval.
Firm load, and flexible load bid at or above ``p`` that the pool could not
supply, come from the grid at the tariff as before.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pgrid.market.auction import max_bid_energy
from p2pgrid.market.errors import MarketError
from p2pgrid.market.messages import (
    MAX_PRICE_MSAT_PER_KWH,
    MAX_STEPS,
    PRICE_TICK_MSAT_PER_KWH,
    Step,
)
from p2pgrid.market.policy import to_tick


@dataclass(frozen=True, slots=True)
class Flexibility:
    """How much of a device's load can wait, and what it pays for it."""

    flexible_pct: int = 0  # share of an interval's need that may be deferred
    top_pct: int = 90  # the dearest flexible step, in % of the tariff
    floor_pct: int = 50  # the cheapest one
    steps: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.flexible_pct <= 100:
            raise MarketError("flexible_pct is within 0..100")
        if not 0 < self.floor_pct <= self.top_pct < 100:
            raise MarketError("0 < floor_pct <= top_pct < 100: flexible load bids below the tariff")
        if not 1 <= self.steps < MAX_STEPS:
            raise MarketError(f"1..{MAX_STEPS - 1} flexible steps (one is the firm step)")


FIRM = Flexibility()  # nothing can wait


@dataclass(frozen=True, slots=True)
class CurvePlan:
    """A device's curve for one round and what it rests on."""

    need_wh: int
    flexible_wh: int  # of need_wh
    steps: tuple[Step, ...]  # strictly falling prices; empty: no bid
    firm_price_msat_per_kwh: int  # the firm step's price (the tariff on the tick)

    @property
    def energy_wh(self) -> int:
        return sum(s.energy_wh for s in self.steps)

    def demand_wh(self, price_msat_per_kwh: int) -> int:
        """What the curve buys at ``price``: every step priced at or above it."""
        return sum(s.energy_wh for s in self.steps if s.price_msat_per_kwh >= price_msat_per_kwh)

    @property
    def flexible_bid_wh(self) -> int:
        """The flexible energy the curve bids for (its steps below the firm price)."""
        return sum(
            s.energy_wh for s in self.steps if s.price_msat_per_kwh < self.firm_price_msat_per_kwh
        )


def _floor_tick(price: int) -> int:
    return price // PRICE_TICK_MSAT_PER_KWH * PRICE_TICK_MSAT_PER_KWH


def flexible_prices(rate_msat_per_kwh: int, flex: Flexibility) -> list[int]:
    """The flexible steps' prices, dearest first (on the tick, below the firm
    price, duplicates and zeros left out)."""
    firm = to_tick(rate_msat_per_kwh)
    prices: list[int] = []
    for k in range(flex.steps):
        pct_x = flex.top_pct * (flex.steps - 1 - k) + flex.floor_pct * k  # x (steps - 1)
        price = _floor_tick(rate_msat_per_kwh * pct_x // (100 * max(1, flex.steps - 1)))
        if 0 < price < firm and price not in prices:
            prices.append(price)
    return prices


def demand_curve(
    need_wh: int,
    *,
    rate_msat_per_kwh: int,
    balance_msat: int,
    flex: Flexibility = FIRM,
    reserve_msat: int = 0,
) -> CurvePlan:
    """The curve of the module docstring for ``need_wh`` at tariff ``rate``."""
    if min(need_wh, balance_msat, reserve_msat) < 0:
        raise MarketError("need, balance and reserve are never negative")
    if not 0 < rate_msat_per_kwh <= MAX_PRICE_MSAT_PER_KWH:
        raise MarketError(f"a tariff within 1..{MAX_PRICE_MSAT_PER_KWH} msat/kWh")
    firm_price = to_tick(rate_msat_per_kwh)
    prices = flexible_prices(rate_msat_per_kwh, flex)
    flexible = need_wh * flex.flexible_pct // 100 if prices else 0
    wanted = [(firm_price, need_wh - flexible, balance_msat)]
    spare = max(0, balance_msat - reserve_msat)
    n = len(prices)
    for k, price in enumerate(prices):
        wanted.append((price, flexible * (k + 1) // n - flexible * k // n, spare))
    steps: list[Step] = []
    total = 0
    for price, wh, budget in wanted:
        # cumulative energy at ``price`` within what ``budget`` pays at that price
        take = min(wh, max(0, max_bid_energy(budget, price) - total))
        if take > 0:
            steps.append(Step(price, take))
            total += take
        if price == firm_price and take < wh:
            break  # firm load first: no flexible load while it is not bid in full
    return CurvePlan(need_wh, flexible, tuple(steps), firm_price)


def deferred_wh(plan: CurvePlan, clearing_price_msat_per_kwh: int) -> int:
    """The flexible energy the device does not draw after its round cleared at
    ``clearing_price``: what it did not commit to buy at that price."""
    if clearing_price_msat_per_kwh <= 0:
        raise MarketError("a clearing price is positive")
    committed = sum(
        s.energy_wh
        for s in plan.steps
        if clearing_price_msat_per_kwh <= s.price_msat_per_kwh < plan.firm_price_msat_per_kwh
    )
    return plan.flexible_wh - committed
