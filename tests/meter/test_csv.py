"""CSV meter sources of real data: columns, units and scale, resampling to
15-minute intervals, the start and its time zone, what happens past the end,
and bad files, each refused with the file, line and problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgrid.meter import CsvFormat, CsvSource, MeterError, Reading


def write(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def series(source: CsvSource) -> list[int]:
    return [source.reading(i).consumed_wh for i in range(len(source))]


def test_end_of_data_is_an_error_by_default_or_stop_or_wrap(tmp_path: Path) -> None:
    path = write(tmp_path, "consumed_wh\n10\n20\n")
    with pytest.raises(MeterError, match=r"m.csv: no data for interval 2 \(the file covers 0..1\)"):
        CsvSource(path).reading(2)
    assert CsvSource(path, CsvFormat(at_end="stop")).reading(5) == Reading(5, 0, 0)
    assert CsvSource(path, CsvFormat(at_end="wrap")).reading(5) == Reading(5, 20, 0)


def test_columns_by_name_or_index_and_without_a_header(tmp_path: Path) -> None:
    path = write(tmp_path, "time,load_kwh,pv_kwh\nx,0.1,0.3\ny,0.2,0\n")
    by_name = CsvSource(path, CsvFormat(column="load_kwh", produced_column="pv_kwh", unit="kWh"))
    assert [by_name.reading(i) for i in range(2)] == [Reading(0, 100, 300), Reading(1, 200, 0)]
    by_index = CsvSource(path, CsvFormat(column=1, produced_column=2, unit="kWh"))
    assert by_index.consumed_wh == by_name.consumed_wh
    assert by_index.produced_wh == by_name.produced_wh
    bare = write(tmp_path, "5;1,5\n6;2,5\n", "bare.csv")
    fmt = CsvFormat(column=1, header=False, delimiter=";", decimal=",", unit="kWh")
    assert series(CsvSource(bare, fmt)) == [1500, 2500]
    with pytest.raises(MeterError, match="'load' is a name, but the file has no header"):
        CsvFormat(column="load", header=False)
    with pytest.raises(MeterError, match=r"bare.csv:1: no column 3 \(the row has 2\)"):
        CsvSource(bare, CsvFormat(column=3, header=False, delimiter=";"))


def test_power_is_averaged_and_energy_summed_into_15_minutes(tmp_path: Path) -> None:
    # one-minute rows of 1 kW (15 x 16.67 Wh) then 2 kW: 250 and 500 Wh
    minutes = write(tmp_path, "p\n" + "1000\n" * 15 + "2000\n" * 15)
    assert series(CsvSource(minutes, CsvFormat(column="p", unit="W", resolution_s=60))) == [
        250,
        500,
    ]
    # five-minute energy rows in kWh, scaled by 0.5 (e.g. a sub-meter of half the load)
    fives = write(tmp_path, "e\n0.1\n0.1\n0.1\n0.2\n0.2\n0.2\n", "fives.csv")
    fmt = CsvFormat(column="e", unit="kWh", scale=0.5, resolution_s=300)
    assert series(CsvSource(fives, fmt)) == [150, 300]
    # an hourly row is spread evenly over its four quarters: 2 kW for an hour
    hourly = write(tmp_path, "p\n2\n", "hourly.csv")
    fmt = CsvFormat(column="p", unit="kW", resolution_s=3600)
    assert series(CsvSource(hourly, fmt)) == [500, 500, 500, 500]


def test_empty_lines_at_the_end_are_no_data(tmp_path: Path) -> None:
    path = write(tmp_path, "e\n5\n6\n\n\n")
    assert series(CsvSource(path, CsvFormat(column="e"))) == [5, 6]


def test_rounding_to_integer_wh_keeps_the_total(tmp_path: Path) -> None:
    path = write(tmp_path, "e\n" + "0.4\n" * 10)
    got = series(CsvSource(path, CsvFormat(column="e")))
    assert sum(got) == 4  # 10 x 0.4 Wh, rounded once on the running total
    assert all(v in (0, 1) for v in got)


def test_a_partial_last_interval_is_past_the_end(tmp_path: Path) -> None:
    path = write(tmp_path, "e\n" + "1\n" * 20)  # 20 one-minute rows: one full quarter hour
    source = CsvSource(path, CsvFormat(column="e", resolution_s=60))
    assert series(source) == [15]
    short = write(tmp_path, "e\n" + "1\n" * 10, "short.csv")
    with pytest.raises(MeterError, match="no complete 900 s interval of data"):
        CsvSource(short, CsvFormat(column="e", resolution_s=60))


def test_the_replay_starts_at_the_first_local_midnight_of_its_time_zone(tmp_path: Path) -> None:
    hours = write(tmp_path, "e\n" + "".join(f"{h}\n" for h in range(48)))

    def first(start: str, zone: str) -> int:
        fmt = CsvFormat(column="e", unit="kWh", resolution_s=3600, start=start, timezone=zone)
        return CsvSource(hours, fmt).reading(0).consumed_wh

    assert first("2024-01-01T00:00", "UTC") == 0  # a midnight itself: nothing skipped
    assert first("2024-01-01T22:00", "UTC") == 500  # row 2 (2 kWh) spread over 4 quarters
    # 27 October 2024: Berlin's clocks go back; midnight comes 24 h after 01:00, not 23
    assert first("2024-10-27T01:00", "UTC") == 23 * 250
    assert first("2024-10-27T01:00", "Europe/Berlin") == 24 * 250
    # an explicit offset wins over the zone for the start; midnight is the zone's
    assert first("2024-01-01T21:00+00:00", "Europe/Berlin") == 2 * 250
    assert first("2024-01-01T22:30", "UTC") == 1 * 250  # hours are cut into quarters
    with pytest.raises(MeterError, match="midnight is 6600 s after the first row, not a multiple"):
        first("2024-01-01T22:10", "UTC")
    with pytest.raises(MeterError, match="unknown timezone 'Mars/Olympus'"):
        first("2024-01-01T00:00", "Mars/Olympus")
    with pytest.raises(MeterError, match="not an ISO 8601"):
        first("yesterday", "UTC")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("e\n5\n-1\n", r"m.csv:3: energy must be finite and >= 0, got '-1'"),
        ("e\n5\nnan\n", r"m.csv:3: energy must be finite and >= 0, got 'nan'"),
        ("e\n5\n,\n", r"m.csv:3: not a number: ''"),
        ("e\n5\n\n6\n", r"m.csv:3: empty line in the data"),
        ("", "m.csv: empty file"),
        ("e\n", "no complete 900 s interval"),
    ],
)
def test_bad_files_name_the_line_and_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(MeterError, match=problem):
        CsvSource(write(tmp_path, text), CsvFormat(column="e"))


def test_a_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(b"e\n\xff\xfe\x00\n")
    with pytest.raises(MeterError, match="not a CSV text file"):
        CsvSource(path, CsvFormat(column="e"))


@pytest.mark.parametrize(
    ("fmt", "problem"),
    [
        ({"unit": "MWh"}, "unit must be one of"),
        ({"scale": 0.0}, "scale must be a finite number > 0"),
        ({"scale": float("inf")}, "scale must be a finite number > 0"),
        ({"resolution_s": 700}, "resolution_s must divide 900"),
        ({"at_end": "loop"}, "at_end must be error, stop or wrap"),
        ({"delimiter": ";;"}, "delimiter is one character"),
        ({"delimiter": ",", "decimal": ","}, "delimiter and decimal are both ','"),
        ({"column": -1}, "column index must be >= 0"),
    ],
)
def test_bad_formats_are_refused(fmt: dict[str, object], problem: str) -> None:
    with pytest.raises(MeterError, match=problem):
        CsvFormat(**fmt)  # type: ignore[arg-type]
