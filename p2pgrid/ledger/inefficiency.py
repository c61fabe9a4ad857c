"""Consumption per device and interval, and the inefficiency view.

The inefficiency view names, for one period, the devices that borrowed (received
shares), exceeded their own allocation, consumed more than their own history
(mean of their previous periods) or more than their class (median of the other
devices of the same class in the period), and authors that equivocated.
Thresholds are integer percentages; no floats touch energy or money.
"""

from __future__ import annotations

import dataclasses
import enum
import statistics
from collections.abc import Iterable, Mapping

from p2pgrid.ledger.bodies import MeterReading, Role
from p2pgrid.ledger.entry import Entry
from p2pgrid.ledger.views import LedgerView, canonical

DEFAULT_TOLERANCE_PCT = 125
DEFAULT_HISTORY_PERIODS = 3


def consumption(
    entries: Iterable[Entry], *, interval_s: int, period: int | None = None
) -> dict[int, dict[int, int]]:
    """Wh per device per interval: ``{device: {interval_start_ms: wh}}``.

    A reading counts in the interval where it starts (``interval_s`` buckets,
    aligned on the epoch). Equivocating siblings count once.
    """
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    step = interval_s * 1000
    out: dict[int, dict[int, int]] = {}
    ordered, _ = canonical(entries)
    for entry in ordered:
        body = entry.body
        if not isinstance(body, MeterReading) or (period is not None and entry.period != period):
            continue
        bucket = body.interval_start_ms - body.interval_start_ms % step
        per_device = out.setdefault(entry.author.index, {})
        per_device[bucket] = per_device.get(bucket, 0) + body.energy_wh
    return out


class Finding(enum.StrEnum):
    BORROWED = "borrowed"
    EXCEEDED_ALLOCATION = "exceeded_allocation"
    ABOVE_HISTORY = "above_history"
    ABOVE_CLASS = "above_class"
    EQUIVOCATED = "equivocated"


@dataclasses.dataclass(frozen=True, slots=True)
class Inefficiency:
    """Why a device is flagged in a period, with the numbers behind it."""

    device: int
    period: int
    findings: frozenset[Finding]
    energy_wh: int
    history_mean_wh: int | None  # integer mean of previous periods, if any
    class_median_wh: int | None  # median of the other devices of its class, if any


def _above(value: int, reference: int, tolerance_pct: int) -> bool:
    return value * 100 > reference * tolerance_pct


def inefficiencies(
    view: LedgerView,
    period: int,
    *,
    tolerance_pct: int = DEFAULT_TOLERANCE_PCT,
    history_periods: int = DEFAULT_HISTORY_PERIODS,
) -> list[Inefficiency]:
    """The devices of ``period`` with at least one finding, by device index."""
    now = view.period(period)
    previous = sorted(p for p in view.periods if p < period)[-history_periods:]
    by_class: dict[str, dict[int, int]] = {}
    for device, acc in now.accounts.items():
        cls = view.device_classes.get(device)
        if cls is not None:
            by_class.setdefault(cls, {})[device] = acc.energy_wh
    flagged_devices = {a.index for a in view.equivocators if a.role is Role.DEVICE}
    found: list[Inefficiency] = []
    for device, acc in now.accounts.items():
        findings: set[Finding] = set()
        if acc.borrowed:
            findings.add(Finding.BORROWED)
        if acc.exceeded_allocation:
            findings.add(Finding.EXCEEDED_ALLOCATION)
        if device in flagged_devices:
            findings.add(Finding.EQUIVOCATED)
        history = [
            view.periods[p].accounts[device].energy_wh
            for p in previous
            if device in view.periods[p].accounts and view.periods[p].accounts[device].energy_wh
        ]
        mean = sum(history) // len(history) if history else None
        if mean is not None and _above(acc.energy_wh, mean, tolerance_pct):
            findings.add(Finding.ABOVE_HISTORY)
        median = _class_median(by_class, view.device_classes.get(device), device)
        if median is not None and _above(acc.energy_wh, median, tolerance_pct):
            findings.add(Finding.ABOVE_CLASS)
        if findings:
            found.append(
                Inefficiency(device, period, frozenset(findings), acc.energy_wh, mean, median)
            )
    return sorted(found, key=lambda f: f.device)


def _class_median(
    by_class: Mapping[str, Mapping[int, int]], cls: str | None, device: int
) -> int | None:
    if cls is None:
        return None
    others = [wh for d, wh in by_class.get(cls, {}).items() if d != device]
    if not others:
        return None
    return int(statistics.median_low(others))
