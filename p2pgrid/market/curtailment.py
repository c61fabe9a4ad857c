"""Curtailment: which devices run less when the money runs out, and by how much.

A device whose forecast shortfall is not covered by its balance nor by any
accepted share must use less energy. The rule:

1. A deferrable or normal device with an uncovered shortfall is cut by the
   energy that shortfall would buy at its own forecast price
   (``ceil(shortfall x expected_wh / expected_msat)``, at most ``expected_wh``).
2. A critical device is never cut: its uncovered shortfall is reported as an
   overdraft (the utility invoices it; the inefficiency view names it).
3. If the site must also shed ``target_wh`` (a utility curtailment, turned into
   energy by the agent), the energy cut in step 1 counts towards it and the rest
   is cut from what deferrable devices still expect to use, then from normal
   devices; within a class, the largest remaining use first, ties to the lower
   device index. Critical devices never; what cannot be cut is ``unmet_wh``.

The plan lists one cut per curtailed device, deferrable devices first, then
normal ones, each by device index.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from p2pgrid.market.errors import MarketError
from p2pgrid.market.forecast import Forecast


class Priority(enum.IntEnum):
    """How much a device's load matters; lower values are curtailed first."""

    DEFERRABLE = 0  # can wait: EV charging, water heating
    NORMAL = 1
    CRITICAL = 2  # never curtailed: refrigeration, medical


@dataclass(frozen=True, slots=True)
class Load:
    """A device's outlook for the rest of the period."""

    device: int
    priority: Priority
    expected_wh: int  # energy it expects to draw (Forecast.import_wh)
    expected_msat: int  # what that costs (Forecast.cost_msat)
    shortfall_msat: int = 0  # what neither its balance nor accepted shares cover

    def __post_init__(self) -> None:
        if min(self.device, self.expected_wh, self.expected_msat, self.shortfall_msat) < 0:
            raise MarketError(f"a load is never negative: {self}")

    @classmethod
    def from_forecast(
        cls, device: int, priority: Priority, forecast: Forecast, *, shared_msat: int = 0
    ) -> Load:
        """The load of a forecast, after ``shared_msat`` of accepted shares."""
        shortfall = max(0, forecast.need_msat - shared_msat)
        return cls(device, priority, forecast.import_wh, forecast.cost_msat, shortfall)

    @property
    def shortfall_wh(self) -> int:
        """The energy its shortfall would buy at its own forecast price."""
        if self.shortfall_msat == 0 or self.expected_msat == 0:
            return 0
        wh = -(-self.shortfall_msat * self.expected_wh // self.expected_msat)
        return min(self.expected_wh, wh)


@dataclass(frozen=True, slots=True)
class Cut:
    device: int
    priority: Priority
    energy_wh: int


@dataclass(frozen=True, slots=True)
class CurtailmentPlan:
    cuts: tuple[Cut, ...]
    overdraft: tuple[tuple[int, int], ...]  # (critical device, uncovered msat)
    unmet_wh: int  # part of the site target that could not be cut

    @property
    def total_wh(self) -> int:
        return sum(cut.energy_wh for cut in self.cuts)

    def cut_of(self, device: int) -> int:
        return next((c.energy_wh for c in self.cuts if c.device == device), 0)


def plan_curtailment(loads: Iterable[Load], *, target_wh: int = 0) -> CurtailmentPlan:
    """Apply the rule of the module docstring to the loads of a site."""
    if target_wh < 0:
        raise MarketError("a curtailment target is never negative")
    by_device: dict[int, Load] = {}
    for load in loads:
        if by_device.setdefault(load.device, load) != load:
            raise MarketError(f"two loads for device {load.device}")
    cut: dict[int, int] = {}
    overdraft: list[tuple[int, int]] = []
    for device, load in sorted(by_device.items()):
        if load.priority is Priority.CRITICAL:
            if load.shortfall_msat:
                overdraft.append((device, load.shortfall_msat))
        elif load.shortfall_wh:
            cut[device] = load.shortfall_wh
    left = max(0, target_wh - sum(cut.values()))
    for priority in (Priority.DEFERRABLE, Priority.NORMAL):
        remaining = {
            d: load.expected_wh - cut.get(d, 0)
            for d, load in by_device.items()
            if load.priority is priority
        }
        for device in sorted(remaining, key=lambda d: (-remaining[d], d)):
            if left == 0:
                break
            more = min(left, remaining[device])
            if more:
                cut[device] = cut.get(device, 0) + more
                left -= more
    cuts = tuple(
        Cut(d, by_device[d].priority, wh)
        for d, wh in sorted(cut.items(), key=lambda kv: (by_device[kv[0]].priority, kv[0]))
    )
    return CurtailmentPlan(cuts, tuple(overdraft), left)
