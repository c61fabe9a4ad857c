"""Meter sources: real BDEW profiles from demandlib, CSV readings, the solar model."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.meter import (
    INTERVALS_PER_DAY,
    CsvFormat,
    CsvSource,
    MeterError,
    Reading,
    bdew_profile,
    solar_profile,
    to_integer_wh,
)


@given(st.lists(st.floats(min_value=0, max_value=50, allow_nan=False), max_size=200))
def test_quantising_keeps_every_running_total_within_half_a_wh(kwh: list[float]) -> None:
    wh = to_integer_wh(kwh)
    assert len(wh) == len(kwh)
    assert all(v >= 0 for v in wh)
    exact = 0.0
    for n, (value, got) in enumerate(zip(kwh, wh, strict=True), start=1):
        exact += value * 1000
        assert abs(sum(wh[:n]) - exact) <= 0.5 + 1e-6 * exact
        assert isinstance(got, int)


def test_bdew_household_year_sums_to_its_annual_energy() -> None:
    source = bdew_profile("h0", 3000)  # a 3,000 kWh/year household, 2024 (leap year)
    readings = [source.reading(i) for i in range(366 * INTERVALS_PER_DAY)]
    assert sum(r.consumed_wh for r in readings) == 3_000_000
    assert all(r.produced_wh == 0 for r in readings)
    # A household uses more in the evening than at 4 am (a real profile, not a flat one).
    day = [r.consumed_wh for r in readings[:INTERVALS_PER_DAY]]
    assert max(day[72:84]) > 2 * day[16]


def test_bdew_window_and_unknown_profile() -> None:
    week = bdew_profile("g0", 5000, start_day=10, days=7)
    assert len(week) == 7 * INTERVALS_PER_DAY
    assert week.reading(len(week)) == Reading(len(week), week.reading(0).consumed_wh)
    with pytest.raises(MeterError, match="unknown BDEW profile 'p25'"):
        bdew_profile("p25", 3000)
    with pytest.raises(MeterError, match="past the end"):
        bdew_profile("h0", 3000, start_day=400)


def test_solar_produces_only_in_daylight_and_peaks_at_noon() -> None:
    source = solar_profile(4000, days=2)
    day = [source.reading(i).produced_wh for i in range(INTERVALS_PER_DAY)]
    assert day[:24] == [0] * 24  # before 06:00
    assert day[80:] == [0] * 16  # after 20:00
    assert max(day) == day[51] or max(day) == day[52]  # around 13:00, the middle of 6-20 h
    assert max(day) <= 1000  # 4 kW for a quarter hour
    assert abs(source.reading(INTERVALS_PER_DAY + 52).produced_wh - day[52]) <= 1  # rounding
    assert all(source.reading(i).consumed_wh == 0 for i in range(INTERVALS_PER_DAY))


def test_csv_readings_and_bad_rows(tmp_path: Path) -> None:
    good = tmp_path / "meter.csv"
    good.write_text("consumed_wh,produced_wh\n120,0\n80,40\n")
    source = CsvSource(good, CsvFormat(produced_column="produced_wh", at_end="wrap"))
    assert [source.reading(i) for i in range(3)] == [
        Reading(0, 120, 0),
        Reading(1, 80, 40),
        Reading(2, 120, 0),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("consumed_wh\n10\nten\n")
    with pytest.raises(MeterError, match=r"bad.csv:3: not a number: 'ten'"):
        CsvSource(bad)
    (tmp_path / "h.csv").write_text("watts\n1\n")
    with pytest.raises(MeterError, match=r"column 'consumed_wh' is not in the header \['watts'\]"):
        CsvSource(tmp_path / "h.csv")
    with pytest.raises(MeterError, match="cannot read"):
        CsvSource(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="never negative"):
        Reading(0, -1)
