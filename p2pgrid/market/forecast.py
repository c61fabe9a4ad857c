"""A device forecasts what the rest of its billing period will cost it.

The model is the simplest one that follows a daily routine: the expected
energy of a future interval is the mean of the device's readings at the same
interval of the day over the past ``window_days`` days; an interval of the day
with no reading yet takes the mean of all readings in the window (the running
mean); a device with no history expects nothing and, knowing nothing about
itself, claims no headroom. Means are integers rounded half up.

Energy is metered per interval: what a device produces in an interval first
covers its own use there (it imports ``max(0, used - made)`` from the grid and
can sell ``max(0, made - used)``). The import is priced with the tariff over
the whole horizon at once (:func:`p2pgrid.billing.charge_msat`) and raised by
a safety margin (``margin_pct``, rounded up); the forecast compares that cost
with the device's balance to tell its need (a shortfall to ask peers for) or
its headroom (a surplus it may share or sell).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from p2pgrid.billing import Tariff, charge_msat
from p2pgrid.market.errors import MarketError
from p2pgrid.meter import INTERVALS_PER_DAY, Reading

DEFAULT_WINDOW_DAYS: Final = 7
DEFAULT_MARGIN_PCT: Final = 10


def _mean(total: int, count: int) -> int:
    return (2 * total + count) // (2 * count)  # integer mean, rounded half up


@dataclass(frozen=True, slots=True)
class DailyProfile:
    """Expected (consumed, produced) Wh per interval, learnt from past readings."""

    intervals_per_day: int
    by_slot: dict[int, tuple[int, int]]  # interval of the day -> mean (used, made)
    fallback: tuple[int, int]  # running mean over the window
    samples: int

    @classmethod
    def learn(
        cls,
        history: Iterable[Reading],
        *,
        before: int,
        window_days: int = DEFAULT_WINDOW_DAYS,
        intervals_per_day: int = INTERVALS_PER_DAY,
    ) -> DailyProfile:
        """Learn from the readings of the ``window_days`` days before interval
        ``before``. Readings outside the window are ignored; two different
        readings of one interval are a :class:`MarketError` (equal ones count once)."""
        if window_days < 1 or intervals_per_day < 1 or before < 0:
            raise MarketError("a forecast needs window_days >= 1, intervals_per_day >= 1")
        first = before - window_days * intervals_per_day
        seen: dict[int, Reading] = {}
        for reading in history:
            if not first <= reading.interval < before:
                continue
            known = seen.setdefault(reading.interval, reading)
            if known != reading:
                raise MarketError(f"two different readings of interval {reading.interval}")
        sums: dict[int, list[int]] = {}
        for reading in seen.values():
            slot = sums.setdefault(reading.interval % intervals_per_day, [0, 0, 0])
            slot[0] += reading.consumed_wh
            slot[1] += reading.produced_wh
            slot[2] += 1
        by_slot = {s: (_mean(u, n), _mean(m, n)) for s, (u, m, n) in sums.items()}
        n = len(seen)
        fallback = (
            (
                _mean(sum(r.consumed_wh for r in seen.values()), n),
                _mean(sum(r.produced_wh for r in seen.values()), n),
            )
            if n
            else (0, 0)
        )
        return cls(intervals_per_day, by_slot, fallback, n)

    def expected(self, interval: int) -> tuple[int, int]:
        """Expected (consumed, produced) Wh in ``interval``."""
        return self.by_slot.get(interval % self.intervals_per_day, self.fallback)


@dataclass(frozen=True, slots=True)
class Forecast:
    """A device's outlook for intervals ``first_interval .. end_interval - 1``
    of ``period``, against ``balance_msat``."""

    period: int
    first_interval: int
    end_interval: int
    import_wh: int  # expected energy drawn from the grid
    export_wh: int  # expected production beyond own use (sellable)
    cost_msat: int  # the import at the tariff, with the safety margin
    balance_msat: int
    samples: int  # readings the forecast rests on

    @property
    def need_msat(self) -> int:
        """The expected shortfall: what to ask peers for (0 if the balance covers it)."""
        return max(0, self.cost_msat - self.balance_msat)

    @property
    def headroom_msat(self) -> int:
        """The expected surplus: what the device can spare (0 without history)."""
        if self.samples == 0:
            return 0
        return max(0, self.balance_msat - self.cost_msat)


def forecast_period(
    history: Iterable[Reading],
    *,
    balance_msat: int,
    tariff: Tariff,
    next_interval: int,
    intervals_per_period: int = 0,
    period_bounds: tuple[int, int] | None = None,
    margin_pct: int = DEFAULT_MARGIN_PCT,
    window_days: int = DEFAULT_WINDOW_DAYS,
    intervals_per_day: int = INTERVALS_PER_DAY,
) -> Forecast:
    """Forecast from ``next_interval`` (the first interval not yet metered) to
    the end of its billing period: periods of ``intervals_per_period`` intervals
    each, or ``period_bounds`` = (the period, its end: the first interval of the
    next) as the clock says (calendar months differ in length)."""
    if period_bounds is not None:
        period, end = period_bounds
        valid = period >= 0 and end > next_interval
    else:
        valid = intervals_per_period >= 1
        period = next_interval // max(1, intervals_per_period)
        end = (period + 1) * intervals_per_period
    if balance_msat < 0 or margin_pct < 0 or not valid or next_interval < 0:
        raise MarketError("a forecast needs balance >= 0, margin >= 0 and a valid period")
    profile = DailyProfile.learn(
        history, before=next_interval, window_days=window_days, intervals_per_day=intervals_per_day
    )
    imports: list[tuple[int, int]] = []
    export_wh = 0
    for interval in range(next_interval, end):
        used, made = profile.expected(interval)
        imports.append((interval, max(0, used - made)))
        export_wh += max(0, made - used)
    cost = charge_msat(tariff, imports)
    return Forecast(
        period=period,
        first_interval=next_interval,
        end_interval=end,
        import_wh=sum(wh for _, wh in imports),
        export_wh=export_wh,
        cost_msat=-(-cost * (100 + margin_pct) // 100),
        balance_msat=balance_msat,
        samples=profile.samples,
    )
