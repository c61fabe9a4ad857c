"""Standard load profiles (BDEW, via demandlib) scaled to a device.

demandlib 0.2.2 ships the German BDEW standard load profiles at 15-minute
resolution: households ``h0`` (and ``h0_dyn``), commercial ``g0``-``g6``,
agriculture ``l0``-``l2``. A device agent replays its class's profile scaled to
the device's annual energy (the profile is an aggregate: we scale it, we do not
invent appliance cycles). Solar generation is a separate, documented model
(:func:`solar_profile`): demandlib has no PV profile in 0.2.2.
"""

from __future__ import annotations

import functools
import math
from typing import Final

from p2pgrid.meter.source import MeterError, SeriesSource, to_integer_wh

#: BDEW profiles that demandlib 0.2.2 provides.
BDEW_PROFILES: Final = frozenset(
    {"h0", "h0_dyn", "g0", "g1", "g2", "g3", "g4", "g5", "g6", "l0", "l1", "l2"}
)
INTERVALS_PER_DAY: Final = 96  # 15-minute metering


@functools.cache
def _bdew_kwh(profile: str, year: int, annual_kwh: int) -> tuple[float, ...]:
    from demandlib import bdew  # imported on use: pandas costs ~0.5 s at import

    frame = bdew.ElecSlp(year).get_scaled_profiles({profile: annual_kwh})
    return tuple(float(v) for v in frame[profile].to_numpy())


def bdew_profile(
    profile: str, annual_kwh: int, *, year: int = 2024, start_day: int = 0, days: int = 366
) -> SeriesSource:
    """The BDEW ``profile`` scaled to ``annual_kwh``, as integer Wh per 15 minutes,
    from day ``start_day`` of ``year`` for ``days`` days."""
    if profile not in BDEW_PROFILES:
        known = ", ".join(sorted(BDEW_PROFILES))
        raise MeterError(f"unknown BDEW profile {profile!r} (known: {known})")
    if annual_kwh <= 0 or days <= 0 or start_day < 0:
        raise MeterError("annual_kwh and days must be positive, start_day not negative")
    kwh = _bdew_kwh(profile, year, annual_kwh)
    first = start_day * INTERVALS_PER_DAY
    window = kwh[first : first + days * INTERVALS_PER_DAY]
    if not window:
        raise MeterError(f"day {start_day} is past the end of {year}")
    return SeriesSource(consumed_wh=tuple(to_integer_wh(window)))


def solar_profile(
    peak_w: int, *, days: int = 1, sunrise_h: float = 6.0, sunset_h: float = 20.0
) -> SeriesSource:
    """A clear-sky PV inverter: output follows a half sine between sunrise and
    sunset with ``peak_w`` at solar noon, as integer Wh produced per 15 minutes.
    A documented model, not measured data: weather is not simulated."""
    if peak_w <= 0 or days <= 0 or not 0 <= sunrise_h < sunset_h <= 24:
        raise MeterError("solar needs peak_w > 0, days > 0 and 0 <= sunrise < sunset <= 24")
    day_kwh = []
    for i in range(INTERVALS_PER_DAY):
        mid_h = (i + 0.5) * 24 / INTERVALS_PER_DAY
        phase = (mid_h - sunrise_h) / (sunset_h - sunrise_h)
        watts = peak_w * math.sin(math.pi * phase) if 0 < phase < 1 else 0.0
        day_kwh.append(watts * 0.25 / 1000)  # a quarter hour at that power
    return SeriesSource(produced_wh=tuple(to_integer_wh(day_kwh * days)))
