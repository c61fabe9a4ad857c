"""Meters: where a device's consumption and production readings come from."""

from p2pgrid.meter.profiles import BDEW_PROFILES, INTERVALS_PER_DAY, bdew_profile, solar_profile
from p2pgrid.meter.source import (
    METER_INTERVAL_S,
    AtEnd,
    CsvFormat,
    CsvSource,
    MeterError,
    MeterSource,
    Reading,
    SeriesSource,
    Unit,
    to_integer_wh,
)

__all__ = [
    "BDEW_PROFILES",
    "INTERVALS_PER_DAY",
    "METER_INTERVAL_S",
    "AtEnd",
    "CsvFormat",
    "CsvSource",
    "MeterError",
    "MeterSource",
    "Reading",
    "SeriesSource",
    "Unit",
    "bdew_profile",
    "solar_profile",
    "to_integer_wh",
]
