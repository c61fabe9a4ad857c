"""What a device does with its surplus at the end of a billing period.

A device ends a period with two kinds of surplus: budget (unspent msat) and,
if it generates, energy (production beyond its own use). Its owner picks one
:class:`SurplusPolicy` per device:

- ``CARRY_OVER``: offer nothing; the whole budget surplus moves to the next
  period (a ``CarryOver`` log entry).
- ``SELL_ENERGY``: ask the surplus production in the auction; carry the whole
  budget surplus over. The usual choice for a solar device.
- ``SELL``: ask the surplus production *and* the energy that the surplus budget
  buys at the tariff (one unit of currency stands for a unit of energy); what
  does not sell is carried over.

An ask never goes below the reserve price: the larger of the owner's minimum
and the tariff rate, rounded up to the price tick, so selling budget never
returns less than it is worth. Production sells first; each Wh of budget
entitlement sold consumes ``rate / 1000`` msat of the budget surplus (the total
rounded up once, as :func:`p2pgrid.billing.charge_msat` does), and the rest is
carried over, so ``carried + consumed == budget surplus`` exactly.

Before the period ends, :func:`offer_leftover` decides how much leftover
budget a device offers in the last rounds of the period, by its
:class:`LeftoverPolicy` (``carry_over``, ``sell`` or ``split(f)``): a share of
its *forecast headroom* (balance minus what its own forecast says the rest of
the period costs, with the safety margin), never of what that forecast needs.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from p2pgrid.market.auction import net_wh
from p2pgrid.market.errors import MarketError
from p2pgrid.market.forecast import Forecast
from p2pgrid.market.messages import (
    MAX_ENERGY_WH,
    MAX_PRICE_MSAT_PER_KWH,
    PRICE_TICK_MSAT_PER_KWH,
    Ask,
    Clearing,
    Party,
)


class SurplusPolicy(enum.Enum):
    CARRY_OVER = "carry_over"
    SELL_ENERGY = "sell_energy"
    SELL = "sell"


def to_tick(price_msat_per_kwh: int) -> int:
    """``price_msat_per_kwh`` rounded up to the price tick."""
    tick = PRICE_TICK_MSAT_PER_KWH
    return -(-price_msat_per_kwh // tick) * tick


@dataclass(frozen=True, slots=True)
class Surplus:
    """What ``party`` has left at the end of ``period``."""

    party: Party
    period: int
    budget_msat: int  # unspent balance
    energy_wh: int = 0  # production beyond own use (Forecast.export_wh, or metered)

    def __post_init__(self) -> None:
        if self.budget_msat < 0 or self.energy_wh < 0:
            raise MarketError(f"a surplus is never negative: {self}")


def sold_in(clearing: Clearing, ask: Ask | None) -> int:
    """The Wh that ``ask``'s party sold (net) in ``clearing``; 0 without an ask."""
    return max(0, net_wh(clearing).get(ask.party, 0)) if ask else 0


@dataclass(frozen=True, slots=True)
class SurplusDecision:
    """The ask to post (if any) and how to settle the budget after the clearing."""

    policy: SurplusPolicy
    ask: Ask | None
    from_energy_wh: int  # part of the ask that is surplus production
    from_budget_wh: int  # part of the ask that is budget entitlement
    rate_msat_per_kwh: int  # the tariff rate that values the entitlement
    budget_msat: int

    def budget_used_msat(self, sold_wh: int) -> int:
        """The budget consumed when ``sold_wh`` of the ask sold (production first)."""
        offered = self.ask.energy_wh if self.ask else 0
        if not 0 <= sold_wh <= offered:
            raise MarketError(f"sold {sold_wh} Wh of an ask of {offered} Wh")
        from_budget = max(0, sold_wh - self.from_energy_wh)
        return -(-from_budget * self.rate_msat_per_kwh // 1000)

    def carry_over_msat(self, sold_wh: int = 0) -> int:
        """What moves to the next period once ``sold_wh`` of the ask sold."""
        return self.budget_msat - self.budget_used_msat(sold_wh)

    def carry_over_after(self, clearing: Clearing) -> int:
        """:meth:`carry_over_msat` for what this device sold in ``clearing``."""
        return self.carry_over_msat(sold_in(clearing, self.ask))


def decide_surplus(
    surplus: Surplus,
    policy: SurplusPolicy,
    *,
    interval: int,
    rate_msat_per_kwh: int,
    min_price_msat_per_kwh: int = 0,
) -> SurplusDecision:
    """Apply ``policy`` to ``surplus`` for the auction round ``(period, interval)``;
    ``rate_msat_per_kwh`` is the tariff rate of that round."""
    if rate_msat_per_kwh <= 0 or min_price_msat_per_kwh < 0:
        raise MarketError("a tariff rate > 0 and a minimum price >= 0")
    from_energy = from_budget = 0
    if policy is not SurplusPolicy.CARRY_OVER:
        from_energy = min(surplus.energy_wh, MAX_ENERGY_WH)
    if policy is SurplusPolicy.SELL:
        entitlement = surplus.budget_msat * 1000 // rate_msat_per_kwh
        from_budget = min(entitlement, MAX_ENERGY_WH - from_energy)
    reserve = to_tick(max(min_price_msat_per_kwh, rate_msat_per_kwh))
    if reserve > MAX_PRICE_MSAT_PER_KWH:
        raise MarketError(f"reserve price {reserve} exceeds {MAX_PRICE_MSAT_PER_KWH}")
    energy = from_energy + from_budget
    ask = Ask(surplus.party, surplus.period, interval, energy, reserve) if energy else None
    return SurplusDecision(
        policy, ask, from_energy, from_budget, rate_msat_per_kwh, surplus.budget_msat
    )


#: A device offers leftover budget in the last this many intervals of a period.
DEFAULT_LEFTOVER_WINDOW: Final = 4
_SPLIT = re.compile(r"split\((0?\.\d+|[01](?:\.0*)?)\)")


@dataclass(frozen=True, slots=True)
class LeftoverPolicy:
    """The share of its forecast headroom a device offers for sale near the end
    of a period: ``carry_over`` (none: all is carried over), ``sell`` (all) or
    ``split(f)`` (the fraction ``f``, 0..1, exact: ``split(0.3)`` is 3/10)."""

    sell: Fraction

    def __post_init__(self) -> None:
        if not isinstance(self.sell, Fraction) or not 0 <= self.sell <= 1:
            raise MarketError(f"a leftover share is a fraction within 0..1, got {self.sell!r}")

    @classmethod
    def parse(cls, text: str) -> LeftoverPolicy:
        """``"carry_over"``, ``"sell"`` or ``"split(0.25)"``."""
        if text == "carry_over":
            return cls(Fraction(0))
        if text == "sell":
            return cls(Fraction(1))
        found = _SPLIT.fullmatch(text)
        if found is None:
            raise MarketError(
                f"leftover policy {text!r}: carry_over, sell or split(f) with 0 <= f <= 1"
            )
        return cls(Fraction(found.group(1)))

    def __str__(self) -> str:
        if self.sell == 0:
            return "carry_over"
        if self.sell == 1:
            return "sell"
        return f"split({float(self.sell)})"


#: The default policy: nothing is sold, the whole leftover is carried over.
KEEP_LEFTOVER: Final = LeftoverPolicy(Fraction(0))


@dataclass(frozen=True, slots=True)
class LeftoverOffer:
    """What a device offers of its leftover budget in one round, and what that
    leaves it: selling ``sold_wh`` of the ask uses :meth:`budget_used_msat`,
    never more than ``offered_msat``, which never exceeds the headroom."""

    ask: Ask | None
    headroom_msat: int  # the forecast's headroom (0 without history)
    offered_msat: int  # the part of it set aside for the ask
    rate_msat_per_kwh: int  # the tariff rate that values the entitlement

    def budget_used_msat(self, sold_wh: int) -> int:
        """The budget consumed when ``sold_wh`` of the ask sold (rounded up once)."""
        offered = self.ask.energy_wh if self.ask else 0
        if not 0 <= sold_wh <= offered:
            raise MarketError(f"sold {sold_wh} Wh of an ask of {offered} Wh")
        return -(-sold_wh * self.rate_msat_per_kwh // 1000)

    def used_after(self, clearing: Clearing) -> int:
        """:meth:`budget_used_msat` for what this device sold in ``clearing``."""
        return self.budget_used_msat(sold_in(clearing, self.ask))


def offer_leftover(
    forecast: Forecast,
    policy: LeftoverPolicy,
    *,
    party: Party,
    rate_msat_per_kwh: int,
    min_price_msat_per_kwh: int = 0,
    window: int = DEFAULT_LEFTOVER_WINDOW,
) -> LeftoverOffer:
    """The ask of ``party`` for its leftover budget in the round of the
    forecast's first interval, ``(forecast.period, forecast.first_interval)``.

    - Only in the last ``window`` intervals of the period (the forecast covers
      at most ``window`` intervals); earlier, no ask: the device may still need
      its budget, and a forecast far from the end is less sure.
    - ``offered = floor(headroom x share)``: the forecast's headroom (0 without
      history), so what the device's own forecast needs is never offered.
    - The ask is the energy that budget buys at the tariff,
      ``floor(offered x 1000 / rate)`` Wh (at most ``MAX_ENERGY_WH``), at the
      reserve price ``to_tick(max(min_price, rate))``: a sale never returns
      less than the budget it consumes, and consumes at most ``offered``.
    """
    if rate_msat_per_kwh <= 0 or min_price_msat_per_kwh < 0 or window < 1:
        raise MarketError("a tariff rate > 0, a minimum price >= 0 and a window >= 1")
    headroom = forecast.headroom_msat
    left = forecast.end_interval - forecast.first_interval
    offered = leftover_msat(headroom, policy, intervals_left=left, window=window)
    energy = min(offered * 1000 // rate_msat_per_kwh, MAX_ENERGY_WH)
    reserve = to_tick(max(min_price_msat_per_kwh, rate_msat_per_kwh))
    if reserve > MAX_PRICE_MSAT_PER_KWH:
        raise MarketError(f"reserve price {reserve} exceeds {MAX_PRICE_MSAT_PER_KWH}")
    interval = forecast.first_interval
    ask = Ask(party, forecast.period, interval, energy, reserve) if energy else None
    return LeftoverOffer(ask, headroom, offered if ask else 0, rate_msat_per_kwh)


def leftover_msat(
    headroom_msat: int,
    policy: LeftoverPolicy,
    *,
    intervals_left: int,
    window: int = DEFAULT_LEFTOVER_WINDOW,
) -> int:
    """What a device offers of its leftover budget (2.7 step 2):
    ``floor(headroom x f)`` when at most ``window`` intervals of the period are
    left, else 0. ``headroom_msat`` is its forecast's headroom (balance less what
    the rest of the period is forecast to cost), so what the forecast needs is
    never offered."""
    if headroom_msat < 0 or intervals_left < 0 or window < 1:
        raise MarketError("a headroom >= 0, intervals left >= 0 and a window >= 1")
    if intervals_left > window:
        return 0
    return headroom_msat * policy.sell.numerator // policy.sell.denominator


@dataclass(frozen=True, slots=True)
class AllowanceDeal:
    """One sale of allowance (docs/market.md, section 2.9): ``allowance_msat``
    moves from the seller's balance to the buyer's, and the buyer pays
    ``price_msat = ceil(allowance x price_pct / 100)`` over Lightning."""

    allowance_msat: int
    price_pct: int
    price_msat: int


def allowance_price_msat(allowance_msat: int, price_pct: int) -> int:
    """``ceil(allowance x price_pct / 100)``: a share of face value, rounded up once."""
    if allowance_msat < 0 or not 1 <= price_pct <= 100:
        raise MarketError("an allowance >= 0 and a price of 1..100 % of face value")
    return -(-allowance_msat * price_pct // 100)


def allowance_deal(
    *, offered_msat: int, requested_msat: int, price_pct: int, max_price_pct: int
) -> AllowanceDeal | None:
    """The sale between a seller offering ``offered_msat`` (its :func:`leftover_msat`)
    at ``price_pct`` of face value and a buyer short of ``requested_msat`` that pays
    at most ``max_price_pct``: none if the price is above the buyer's maximum or
    nothing is offered or asked; else ``min(offered, requested)`` at the seller's
    price. Never more than offered (so never what the seller's forecast needs)
    nor more than asked, and never at more than face value."""
    if offered_msat < 0 or requested_msat < 0 or not 0 <= max_price_pct <= 100:
        raise MarketError("amounts >= 0 and a maximum price of 0..100 % of face value")
    amount = min(offered_msat, requested_msat)
    if price_pct > max_price_pct or amount == 0:
        return None
    return AllowanceDeal(amount, price_pct, allowance_price_msat(amount, price_pct))
