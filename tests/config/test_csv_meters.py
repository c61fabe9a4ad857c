"""CSV meters in a scenario file: the path is relative to the file, the CSV keys
are validated where they are written (the error names the key), and only a
csv meter takes them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from p2pgrid.errors import ConfigError
from p2pgrid.meter import CsvFormat, Reading
from p2pgrid.scenario import load_scenario, parse_scenario
from tests.config.test_scenario_files import GOOD

FRIDGE_METER = 'meter = { kind = "bdew", profile = "g0", annual_kwh = 2000 }'
CSV_METER = (
    'meter = { kind = "csv", path = "data/fridge.csv", column = "load", unit = "kW", scale = 1, '
    'resolution_s = 3600, start = "2024-01-01T23:00", timezone = "Europe/Berlin", at_end = "stop" }'
)


def scenario_file(tmp_path: Path, meter: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "fridge.csv").write_text("load\n0.4\n0.8\n")
    path = tmp_path / "site.toml"
    path.write_text(GOOD.replace(FRIDGE_METER, meter))
    return path


def test_a_csv_path_is_relative_to_the_scenario_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path.parent)  # not the scenario's directory
    scenario = load_scenario(scenario_file(tmp_path, CSV_METER))
    meter = scenario.sites[0].device("fridge").meter
    assert Path(meter.path) == tmp_path / "data" / "fridge.csv"
    assert meter.csv == CsvFormat(
        column="load",
        unit="kW",
        resolution_s=3600,
        start="2024-01-01T23:00",
        timezone="Europe/Berlin",
        at_end="stop",
    )
    source = meter.source()
    # 23:00 Berlin: the first row is skipped to midnight, the second is 0.8 kW for an hour
    assert [source.reading(i) for i in (0, 3, 4)] == [
        Reading(0, 200),
        Reading(3, 200),
        Reading(4, 0),  # at_end = "stop"
    ]


def test_a_scenario_without_a_file_keeps_a_relative_path_as_written() -> None:
    data = tomllib.loads(GOOD.replace(FRIDGE_METER, CSV_METER))
    assert parse_scenario(data).sites[0].devices[0].meter.path == "data/fridge.csv"


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            'timezone = "Europe/Berlin"',
            'timezone = "Europe/Bern1n"',
            "meter.timezone: unknown time zone",
        ),
        ("resolution_s = 3600", "resolution_s = 700", "meter.resolution_s: must divide 900"),
        ('start = "2024-01-01T23:00"', 'start = "soon"', "meter.start: 'soon' is not an ISO 8601"),
        ('unit = "kW"', 'unit = "MW"', "meter.unit: Input should be 'W', 'kW', 'Wh' or 'kWh'"),
        ('at_end = "stop"', 'at_end = "loop"', "meter.at_end: Input should be 'error', 'stop'"),
        ("scale = 1,", "scale = 0,", "meter.scale: Input should be greater than 0"),
        ("scale = 1,", 'scale = "2",', "meter.scale: Input should be a valid number"),
        ('column = "load"', "column = -2", "meter.column"),
        (
            'column = "load"',
            'column = "load", header = false',
            "is a name, but the file has no header",
        ),
        ('path = "data/fridge.csv", ', "", "a csv meter needs a path"),
        (
            'start = "2024-01-01T23:00"',
            'start = "2024-01-01T23:10"',
            "midnight is 3000 s after the first row",
        ),
    ],
)
def test_bad_csv_keys_name_the_key(tmp_path: Path, old: str, new: str, problem: str) -> None:
    path = scenario_file(tmp_path, CSV_METER.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert str(path) in str(info.value)
    assert 'devices[0] ("fridge").meter' in str(info.value)
    assert problem in str(info.value)


def test_csv_keys_on_another_meter_are_refused(tmp_path: Path) -> None:
    meter = FRIDGE_METER.replace("annual_kwh = 2000", 'annual_kwh = 2000, column = "load"')
    with pytest.raises(ConfigError, match="meter: column: only a csv meter takes it"):
        load_scenario(scenario_file(tmp_path, meter))
    meter = FRIDGE_METER.replace("annual_kwh = 2000", 'annual_kwh = 2000, path = "x.csv"')
    with pytest.raises(ConfigError, match="meter: path: only a csv meter takes it"):
        load_scenario(scenario_file(tmp_path, meter))
