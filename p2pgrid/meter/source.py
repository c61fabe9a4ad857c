"""Meter sources: where a device's readings come from.

A source answers, for metering interval ``i`` (counted from the start of the
replay), how many watt-hours the device consumed and produced in it. Readings
are integer Wh. Three sources share the :class:`MeterSource` protocol: a
replayed standard load profile or solar model (:class:`SeriesSource`), a CSV of
real readings resampled to 15 minutes (:class:`CsvSource`, read as
:class:`CsvFormat` says: docs/operations.md, "Meters") and, for a deployment,
anything else that implements it. A series repeats; a CSV source does what its
``at_end`` says past its data (by default: an error naming the interval).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Final, Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from p2pgrid.errors import ConfigError

#: Seconds per metering interval (15 minutes; billing's ``METER_INTERVAL_S``,
#: not imported from there because billing's tariff imports this package).
METER_INTERVAL_S: Final = 900


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


Unit = Literal["W", "kW", "Wh", "kWh"]
AtEnd = Literal["error", "stop", "wrap"]
#: Wh in one row of each unit: energy units as they are, power units times the
#: row's duration (so a power column is averaged over each interval).
_WH_PER_UNIT: Final[dict[str, float]] = {"Wh": 1.0, "kWh": 1000.0, "W": 1.0, "kW": 1000.0}
_POWER_UNITS: Final = frozenset({"W", "kW"})


@dataclass(frozen=True, slots=True)
class CsvFormat:
    """How to read a CSV of real readings (docs/operations.md, "Meters").

    ``column`` (consumption) and ``produced_column`` are a header name or a
    0-based column index; ``unit`` and ``scale`` turn a cell into energy; rows
    are consecutive, ``resolution_s`` apart, which divides 900 s or is a multiple
    of it. ``start`` is the time of the first row (ISO 8601, local time of
    ``timezone`` unless it has an offset); the replay's interval 0 (modelled
    day 0, 00:00) is then the first local midnight at or after it. Without
    ``start`` the first row is interval 0. ``at_end``: what a reading past the
    data gives: an error, 0 Wh (``stop``: the device is off), or the data from
    its beginning again (``wrap``).
    """

    column: str | int = "consumed_wh"
    produced_column: str | int | None = None
    unit: Unit = "Wh"
    scale: float = 1.0
    resolution_s: int = METER_INTERVAL_S
    start: str | None = None
    timezone: str = "UTC"
    at_end: AtEnd = "error"
    header: bool = True
    delimiter: str = ","
    decimal: str = "."

    def __post_init__(self) -> None:
        if self.unit not in _WH_PER_UNIT:
            raise MeterError(f"unit must be one of W, kW, Wh, kWh, got {self.unit!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise MeterError(f"scale must be a finite number > 0, got {self.scale!r}")
        res = self.resolution_s
        if res <= 0 or (METER_INTERVAL_S % res and res % METER_INTERVAL_S):
            raise MeterError(f"resolution_s must divide {METER_INTERVAL_S} or be a multiple of it")
        if self.at_end not in ("error", "stop", "wrap"):
            raise MeterError(f"at_end must be error, stop or wrap, got {self.at_end!r}")
        if len(self.delimiter) != 1 or self.decimal not in (".", ","):
            raise MeterError("delimiter is one character and decimal is '.' or ','")
        if self.delimiter == self.decimal:
            raise MeterError(f"delimiter and decimal are both {self.decimal!r}")
        for name, col in (("column", self.column), ("produced_column", self.produced_column)):
            if isinstance(col, str) and not self.header:
                raise MeterError(f"{name} {col!r} is a name, but the file has no header")
            if isinstance(col, int) and col < 0:
                raise MeterError(f"{name} index must be >= 0, got {col}")
        self.first_midnight_s()  # the start and the time zone parse

    def first_midnight_s(self) -> int:
        """Seconds from the first row to the replay's interval 0."""
        if self.start is None:
            return 0
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise MeterError(f"unknown timezone {self.timezone!r}") from exc
        try:
            first = datetime.fromisoformat(self.start)
        except ValueError as exc:
            raise MeterError(f"start {self.start!r} is not an ISO 8601 date and time") from exc
        if first.tzinfo is None:
            first = first.replace(tzinfo=zone)
        local = first.astimezone(zone)
        midnight = datetime.combine(local.date(), time(0), tzinfo=zone)
        if midnight < local:
            midnight = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=zone)
        offset = midnight.astimezone(UTC) - first.astimezone(UTC)
        seconds = int(offset.total_seconds())
        step = min(self.resolution_s, METER_INTERVAL_S)
        if seconds % step:
            raise MeterError(
                f"start {self.start!r}: local midnight is {seconds} s after the first row, "
                f"not a multiple of {step} s"
            )
        return seconds


class CsvSource:
    """Real readings from a CSV file, resampled to 15-minute intervals.

    Each row's cell becomes energy: ``value x scale`` Wh (or kWh x 1000) for an
    energy unit, ``value x scale x resolution_s / 3600`` Wh (W, or kW x 1000)
    for a power unit. A row longer than 15 min is spread evenly over its
    intervals; shorter rows are summed into theirs (energy summed, power
    averaged). Interval ``i`` starts ``i x 900`` s after the first local
    midnight (:class:`CsvFormat`), in absolute time. An interval the file covers
    only in part is past the end of the data. Per-interval energies are rounded
    to integer Wh on their running total (:func:`to_integer_wh`), so the replay's
    total is the file's, rounded once. A bad cell is a :class:`MeterError` naming
    the file and line; so is an empty or too short file.
    """

    def __init__(self, path: Path, fmt: CsvFormat | None = None) -> None:
        self.path = path
        self.format = fmt = fmt or CsvFormat()
        consumed, produced = self._rows()
        skip = fmt.first_midnight_s()
        self.consumed_wh = self._resample(consumed, skip)
        self.produced_wh = self._resample(produced, skip) if produced else ()
        if not self.consumed_wh:
            raise MeterError(f"{path}: no complete {METER_INTERVAL_S} s interval of data")

    def __len__(self) -> int:
        return len(self.consumed_wh)

    def reading(self, interval: int) -> Reading:
        n = len(self)
        if interval >= n:
            if self.format.at_end == "stop":
                return Reading(interval, 0, 0)
            if self.format.at_end == "error":
                raise MeterError(
                    f"{self.path}: no data for interval {interval} (the file covers 0..{n - 1}); "
                    'set the meter\'s at_end to "stop" or "wrap" to run past it'
                )
        i = interval % n
        return Reading(
            interval, self.consumed_wh[i], self.produced_wh[i] if self.produced_wh else 0
        )

    def _rows(self) -> tuple[list[float], list[float]]:
        fmt, path = self.format, self.path
        consumed: list[float] = []
        produced: list[float] = []
        try:
            with path.open(newline="", encoding="utf-8") as f:
                rows = csv.reader(f, delimiter=fmt.delimiter)
                names = next(rows, None) if fmt.header else None
                if fmt.header and names is None:
                    raise MeterError(f"{path}: empty file (a header was expected)")
                col = self._index(fmt.column, names, "column")
                made = None
                if fmt.produced_column is not None:
                    made = self._index(fmt.produced_column, names, "produced_column")
                blank = None  # the first empty line: only the end of the file may be empty
                for line, row in enumerate(rows, start=2 if fmt.header else 1):
                    if not row:
                        blank = blank or line
                        continue
                    if blank is not None:
                        raise MeterError(f"{path}:{blank}: empty line in the data (lost reading?)")
                    consumed.append(self._cell(row, col, line))
                    if made is not None:
                        produced.append(self._cell(row, made, line))
        except OSError as exc:
            raise MeterError(f"cannot read {path}: {exc}") from exc
        except (UnicodeDecodeError, csv.Error) as exc:
            raise MeterError(f"{path}: not a CSV text file: {exc}") from exc
        return consumed, produced

    def _index(self, column: str | int, names: list[str] | None, key: str) -> int:
        if isinstance(column, int):
            return column
        assert names is not None  # CsvFormat refuses a name without a header
        stripped = [n.strip() for n in names]
        if column not in stripped:
            raise MeterError(f"{self.path}: {key} {column!r} is not in the header {stripped}")
        return stripped.index(column)

    def _cell(self, row: list[str], col: int, line: int) -> float:
        fmt = self.format
        if col >= len(row):
            raise MeterError(f"{self.path}:{line}: no column {col} (the row has {len(row)})")
        text = row[col].strip()
        try:
            value = float(text.replace(",", ".") if fmt.decimal == "," else text)
        except ValueError:
            raise MeterError(f"{self.path}:{line}: not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise MeterError(f"{self.path}:{line}: energy must be finite and >= 0, got {text!r}")
        wh = value * fmt.scale * _WH_PER_UNIT[fmt.unit]
        return wh * fmt.resolution_s / 3600 if fmt.unit in _POWER_UNITS else wh

    def _resample(self, rows_wh: list[float], skip_s: int) -> tuple[int, ...]:
        """Cut the rows into pieces of ``g = min(resolution, 900)`` s (a row's
        energy split evenly), drop ``skip_s``, and sum 900 s worth per interval."""
        res = self.format.resolution_s
        g = min(res, METER_INTERVAL_S)
        per_row, per_interval = res // g, METER_INTERVAL_S // g
        pieces = len(rows_wh) * per_row - skip_s // g
        out: list[float] = []
        for first in range(skip_s // g, skip_s // g + pieces - pieces % per_interval, per_interval):
            out.append(
                sum(rows_wh[p // per_row] / per_row for p in range(first, first + per_interval))
            )
        return tuple(to_integer_wh([wh / 1000 for wh in out]))
