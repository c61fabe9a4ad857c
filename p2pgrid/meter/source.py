"""Meter sources: where a device's readings come from.

A source answers, for metering interval ``i`` (counted from the start of the
replay), how many watt-hours the device consumed and produced in it. Readings
are integer Wh. Three sources share the :class:`MeterSource` protocol: a
replayed standard load profile (:class:`ProfileSource`), a CSV of real readings
(:class:`CsvSource`) and, for a deployment, anything else that implements it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from p2pgrid.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Reading:
    """One metering interval of one device, in integer watt-hours."""

    interval: int
    consumed_wh: int
    produced_wh: int = 0

    def __post_init__(self) -> None:
        if self.interval < 0 or self.consumed_wh < 0 or self.produced_wh < 0:
            raise ValueError(f"a reading is never negative: {self}")


class MeterError(ConfigError):
    """A meter source cannot be built or read (unknown profile, bad CSV row)."""


class MeterSource(Protocol):
    """Readings of one device, interval by interval."""

    def reading(self, interval: int) -> Reading: ...


def to_integer_wh(kwh: Sequence[float]) -> list[int]:
    """Quantise per-interval kWh to integer Wh so that every prefix sum stays
    within 1 Wh of the exact one (rounding the running total, not each value):
    the total of a replay equals the profile's total, rounded once."""
    out: list[int] = []
    total_wh = 0.0
    emitted = 0
    for value in kwh:
        if value < 0:
            raise MeterError(f"negative energy {value} kWh in a profile")
        total_wh += value * 1000.0
        step = round(total_wh) - emitted
        out.append(step)
        emitted += step
    return out


@dataclass(frozen=True)
class SeriesSource:
    """Readings from two integer series, repeated if the replay runs longer."""

    consumed_wh: tuple[int, ...] = ()
    produced_wh: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.consumed_wh and not self.produced_wh:
            raise MeterError("a meter series needs at least one interval")
        if (
            self.produced_wh
            and self.consumed_wh
            and (len(self.produced_wh) != len(self.consumed_wh))
        ):
            raise MeterError("consumed and produced series differ in length")

    def __len__(self) -> int:
        return max(len(self.consumed_wh), len(self.produced_wh))

    def reading(self, interval: int) -> Reading:
        i = interval % len(self)
        used = self.consumed_wh[i] if self.consumed_wh else 0
        made = self.produced_wh[i] if self.produced_wh else 0
        return Reading(interval, used, made)


class CsvSource(SeriesSource):
    """Real readings from a CSV file with the header ``consumed_wh,produced_wh``
    (``produced_wh`` optional), one metering interval per row."""

    def __init__(self, path: Path) -> None:
        consumed: list[int] = []
        produced: list[int] = []
        try:
            with path.open(newline="") as f:
                rows = csv.DictReader(f)
                if rows.fieldnames is None or "consumed_wh" not in rows.fieldnames:
                    raise MeterError(f"{path}: the header must name consumed_wh")
                for line, row in enumerate(rows, start=2):
                    try:
                        consumed.append(int(row["consumed_wh"]))
                        produced.append(int(row.get("produced_wh") or 0))
                    except ValueError as exc:
                        raise MeterError(f"{path}:{line}: not an integer Wh: {exc}") from exc
                    if consumed[-1] < 0 or produced[-1] < 0:
                        raise MeterError(f"{path}:{line}: negative Wh")
        except OSError as exc:
            raise MeterError(f"cannot read {path}: {exc}") from exc
        super().__init__(tuple(consumed), tuple(produced))
