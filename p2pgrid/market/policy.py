"""What a device does with its leftover budget, at and near the end of a period.

At the end of a period, its owner's :class:`SurplusPolicy` per device: under
either policy the whole unspent balance moves to the next period (a
``CarryOver`` log entry), so no budget is left in a closed period; what a
producer exports is offered in the pooled round whatever the policy
(docs/market.md 2.6).

Near the end, :func:`leftover_msat` decides how much leftover budget a device
offers in the last rounds of the period, by its :class:`LeftoverPolicy`
(``carry_over``, ``sell`` or ``split(f)``): a share of its *forecast headroom*
(balance minus what its own forecast says the rest of the period costs, with
the safety margin), never of what that forecast needs. It is sold as allowance
(:func:`allowance_deal`, docs/market.md 2.9).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

from p2pgrid.market.errors import MarketError
from p2pgrid.market.messages import PRICE_TICK_MSAT_PER_KWH


class SurplusPolicy(enum.Enum):
    CARRY_OVER = "carry_over"
    #: Deprecated (read with a warning, p2pgrid.scenario_schema.warn_deprecated):
    #: the same as ``CARRY_OVER`` at the close; selling is the ``leftover`` policy's.
    SELL_ENERGY = "sell_energy"


def to_tick(price_msat_per_kwh: int) -> int:
    """``price_msat_per_kwh`` rounded up to the price tick."""
    tick = PRICE_TICK_MSAT_PER_KWH
    return -(-price_msat_per_kwh // tick) * tick


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
