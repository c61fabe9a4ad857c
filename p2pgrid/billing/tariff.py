"""The utility's tariff and the site owner's budget split, in exact integers.

Prices are millisatoshis per kWh; energy is integer Wh; a charge is computed
over a whole period at once (sum of Wh x rate, divided by 1000 and rounded up
once), so the utility and every agent that folds the same log get the same
msat, whatever the order of the readings.

A tariff also names the utility's **grid fee** (``grid_fee_msat_per_kwh``,
default 0): what energy sold from one site to another pays for crossing the
public grid, billed by the utility to the buyer (:func:`grid_fee_msat`,
docs/market.md, section 7).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from p2pgrid.errors import ConfigError
from p2pgrid.meter import INTERVALS_PER_DAY


class Tariff(Protocol):
    def rate_msat_per_kwh(self, interval: int) -> int: ...
    @property
    def grid_fee_msat_per_kwh(self) -> int: ...


@dataclass(frozen=True)
class FlatTariff:
    msat_per_kwh: int
    grid_fee_msat_per_kwh: int = 0

    def __post_init__(self) -> None:
        if self.msat_per_kwh < 0 or self.grid_fee_msat_per_kwh < 0:
            raise ConfigError("a tariff (and its grid fee) is never negative")

    def rate_msat_per_kwh(self, interval: int) -> int:
        return self.msat_per_kwh


@dataclass(frozen=True)
class TimeOfUseTariff:
    """A rate per band of the day: ``bands`` maps the first interval of the day
    (0..95) where a rate starts to that rate; the first band must start at 0."""

    bands: tuple[tuple[int, int], ...]
    grid_fee_msat_per_kwh: int = 0

    def __post_init__(self) -> None:
        if self.grid_fee_msat_per_kwh < 0:
            raise ConfigError("a grid fee is never negative")
        starts = [start for start, _ in self.bands]
        if not starts or starts[0] != 0 or starts != sorted(set(starts)):
            raise ConfigError("time-of-use bands start at interval 0, strictly increasing")
        if starts[-1] >= INTERVALS_PER_DAY or any(rate < 0 for _, rate in self.bands):
            raise ConfigError("a band starts within the day, at a rate that is not negative")

    def rate_msat_per_kwh(self, interval: int) -> int:
        of_day = interval % INTERVALS_PER_DAY
        rate = self.bands[0][1]
        for start, band_rate in self.bands:
            if start > of_day:
                break
            rate = band_rate
        return rate


def charge_msat(tariff: Tariff, usage: Iterable[tuple[int, int]]) -> int:
    """What ``usage`` (pairs of interval and Wh consumed) costs, in msat."""
    total = 0
    for interval, wh in usage:
        if wh < 0:
            raise ValueError(f"negative energy {wh} Wh at interval {interval}")
        total += wh * tariff.rate_msat_per_kwh(interval)
    return -(-total // 1000)  # Wh x msat/kWh is 1/1000 msat: round up once


def grid_fee_msat(tariff: Tariff, transit_wh: int) -> int:
    """The grid fee of ``transit_wh`` Wh bought from other sites in one period:
    ``ceil(transit_wh x grid_fee_msat_per_kwh / 1000)``, rounded up once."""
    if transit_wh < 0:
        raise ValueError(f"negative transit energy {transit_wh} Wh")
    return -(-transit_wh * tariff.grid_fee_msat_per_kwh // 1000)


def split_budget(total_msat: int, weights: Mapping[int, int]) -> dict[int, int]:
    """Split ``total_msat`` between devices in proportion to ``weights``
    (largest remainder; ties to the lower device index). The parts add up to
    ``total_msat`` exactly."""
    if total_msat < 0 or not weights or any(w < 0 for w in weights.values()):
        raise ConfigError("a budget split needs a total >= 0 and weights >= 0")
    weight_sum = sum(weights.values())
    if weight_sum == 0:
        raise ConfigError("at least one device must have a positive weight")
    parts = {dev: total_msat * w // weight_sum for dev, w in weights.items()}
    left = total_msat - sum(parts.values())
    by_remainder = sorted(weights, key=lambda d: (-(total_msat * weights[d] % weight_sum), d))
    for dev in by_remainder[:left]:
        parts[dev] += 1
    return parts
