"""Bad scenario files: each is one ConfigError naming the file, the key and the problem,
and the CLI prints it (names with rich markup too) and exits 1, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgrid.errors import ConfigError
from p2pgrid.scenario import load_scenario

GOOD = """\
[clock]
intervals_per_period = 4
interval_s = 1.5
periods = 2

[tariff]
msat_per_kwh = 250000

[utility]
seed = "utility"

[[sites]]
name = "store-1"
seed = "store one"
budget_msat = 900000

[[sites.devices]]
name = "fridge"
index = 0
device_class = "fridge"
priority = "critical"
weight = 2
meter = { kind = "bdew", profile = "g0", annual_kwh = 2000 }

[[sites.devices]]
name = "solar"
index = 1
device_class = "solar_inverter"
producer = true
meter = { kind = "solar", peak_w = 3000 }

[[sites]]
name = "store-2"
seed = "store two"
budget_msat = 900000

[[sites.devices]]
name = "hvac"
index = 0
device_class = "hvac"
meter = { kind = "bdew", profile = "g0", annual_kwh = 9000 }
"""

FRIDGE_WEIGHT = "weight = 2\n"
SITE_2 = GOOD[GOOD.index('[[sites]]\nname = "store-2"') :]

#: (id, old text, new text, the key named, the problem named)
BAD: list[tuple[str, str, str, str, str]] = [
    ("zero budget", "budget_msat = 900000\n", "budget_msat = 0\n", "sites[0]", "greater than 0"),
    ("negative budget", "budget_msat = 900000\n", "budget_msat = -5\n", "budget_msat", "than 0"),
    (
        "budget as text",
        "budget_msat = 900000\n",
        'budget_msat = "900000"\n',
        "budget_msat",
        "integer",
    ),
    (
        "fractional budget",
        "budget_msat = 900000\n",
        "budget_msat = 1.5\n",
        "budget_msat",
        "integer",
    ),
    (
        "duplicate index",
        "index = 1\n",
        "index = 0\n",
        'sites[0] ("store-1")',
        "device index used twice: 0",
    ),
    ("duplicate device name", 'name = "solar"', 'name = "fridge"', "sites[0]", "used twice"),
    (
        "same seed twice",
        'seed = "store two"',
        'seed = "store one"',
        "(top level)",
        "site seed used twice",
    ),
    (
        "same site name",
        'name = "store-2"',
        'name = "store-1"',
        "(top level)",
        "site name used twice",
    ),
    ("no sites", GOOD[GOOD.index("[[sites]]") :], "", "sites", "missing"),
    ("zero periods", "periods = 2\n", "periods = 0\n", "clock.periods", "greater than 0"),
    ("negative periods", "periods = 2\n", "periods = -1\n", "clock.periods", "greater than 0"),
    (
        "zero intervals",
        "intervals_per_period = 4\n",
        "intervals_per_period = 0\n",
        "clock.intervals_per_period",
        "greater than 0",
    ),
    ("nan interval", "interval_s = 1.5\n", "interval_s = nan\n", "clock.interval_s", "finite"),
    ("inf interval", "interval_s = 1.5\n", "interval_s = inf\n", "clock.interval_s", "finite"),
    (
        "zero interval",
        "interval_s = 1.5\n",
        "interval_s = 0.0\n",
        "clock.interval_s",
        "greater than 0",
    ),
    (
        "negative interval",
        "interval_s = 1.5\n",
        "interval_s = -1.5\n",
        "clock.interval_s",
        "greater than 0",
    ),
    (
        "fractional weight",
        FRIDGE_WEIGHT,
        "weight = 1.5\n",
        'devices[0] ("fridge").weight',
        "integer, got 1.5",
    ),
    ("zero weight", FRIDGE_WEIGHT, "weight = 0\n", "weight", "greater than 0"),
    (
        "leftover policy",
        FRIDGE_WEIGHT,
        FRIDGE_WEIGHT + 'leftover = "split(1.5)"\n',
        "leftover",
        "carry_over, sell or split",
    ),
    (
        "producer as text",
        "producer = true",
        'producer = "no"',
        'devices[1] ("solar").producer',
        "boolean, got 'no'",
    ),
    ("producer as number", "producer = true", "producer = 1", "producer", "boolean"),
    (
        "misspelt clock key",
        "periods = 2\n",
        "periods = 2\nperiod = 3\n",
        "clock.period",
        "unknown key",
    ),
    (
        "misspelt device key",
        FRIDGE_WEIGHT,
        "wieght = 2\n",
        'devices[0] ("fridge").wieght',
        "unknown key",
    ),
    ("misspelt top table", "[tariff]", "[tarif]", "tariff", "missing"),
    (
        "unknown priority",
        'priority = "critical"',
        'priority = "urgent"',
        "priority",
        "'critical', 'normal' or 'deferrable'",
    ),
    (
        "priority in capitals",
        'priority = "critical"',
        'priority = "CRITICAL"',
        "priority",
        "critical",
    ),
    ("unknown meter kind", 'kind = "solar"', 'kind = "wind"', "meter.kind", "bdew"),
    ("unknown meter key", "peak_w = 3000", "peak_w = 3000, peak = 1", "meter.peak", "unknown key"),
    ("solar without peak", "peak_w = 3000", "peak_w = 0", "meter", "peak_w > 0"),
    ("negative index", "index = 1\n", "index = -1\n", "index", "greater than or equal to 0"),
    ("index beyond the limit", "index = 1\n", "index = 65536\n", "index", "or equal to 65535"),
    ("missing seed", 'seed = "store one"\n', "", "sites[0]", "seed: missing"),
    ("empty device name", 'name = "fridge"', 'name = ""', "devices[0]", "at least 1 character"),
    (
        "no devices",
        GOOD[GOOD.index('[[sites.devices]]\nname = "hvac"') :],
        "",
        "devices",
        "missing",
    ),
    (
        "zero tariff",
        "msat_per_kwh = 250000",
        "msat_per_kwh = 0",
        "tariff.msat_per_kwh",
        "greater than 0",
    ),
    ("devices not a list", SITE_2, SITE_2 + "[utility.extra]\n", "utility.extra", "unknown key"),
    (
        "utility name clash",
        'seed = "utility"',
        'seed = "utility"\nname = "hvac"',
        "(top level)",
        "'hvac'",
    ),
    (
        "overcharge is a test switch, not a key",
        'seed = "utility"',
        'seed = "utility"\novercharge = [{ site = "store-1", device = 0, period = 0, pct = 10 }]',
        "utility.overcharge",
        "unknown key",
    ),
    (
        "model start negative",
        "periods = 2\n",
        "periods = 2\nmodel_start_interval = -1\n",
        "model_start_interval",
        "greater than or equal",
    ),
    ("annual kwh as float", "annual_kwh = 2000", "annual_kwh = 2000.0", "annual_kwh", "integer"),
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_an_empty_list_of_sites_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "sites = []\n" + GOOD[: GOOD.index("[[sites]]")])
    with pytest.raises(ConfigError, match="sites: List should have at least 1 item"):
        load_scenario(path)


def test_the_good_file_loads(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, GOOD))
    assert [len(s.devices) for s in scenario.sites] == [2, 1]
    assert scenario.sites[0].devices[1].producer is True
    assert scenario.sites[0].devices[0].weight == 2


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_a_bad_file_is_one_clear_error(
    tmp_path: Path, old: str, new: str, key: str, problem: str
) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert key in message, message
    assert problem in message, message


@pytest.mark.parametrize(
    "text", ["not toml = = 1", "\xff\xfe", "[clock\n"], ids=["syntax", "bytes", "open table"]
)
def test_an_unreadable_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"cannot read scenario {path}"):
        load_scenario(path)


def _cli(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = _write(tmp_path, text)
    code = "from p2pgrid.cli import main; main()"
    env = {**os.environ, "COLUMNS": "400"}
    return subprocess.run(
        [sys.executable, "-c", code, "demo", "--scenario", str(path), "--work-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_the_cli_prints_the_problem_and_exits_2(tmp_path: Path) -> None:
    """Exit 2 is a bad configuration (the codes of ``p2pgrid.service``)."""
    run = _cli(tmp_path, GOOD.replace("producer = true", 'producer = "no"'))
    assert run.returncode == 2
    assert "Traceback" not in run.stdout + run.stderr
    out = " ".join(run.stderr.split())  # rich wraps long lines
    assert "producer: Input should be a valid boolean, got 'no'" in out


def test_a_name_with_markup_prints_as_written(tmp_path: Path) -> None:
    text = GOOD.replace('name = "fridge"', 'name = "[/oops]"')
    run = _cli(tmp_path, text.replace("weight = 2", 'weight = "2"'))
    assert run.returncode == 2
    assert "Traceback" not in run.stdout + run.stderr
    out = " ".join(run.stderr.split())
    assert 'devices[0] ("[/oops]").weight: Input should be a valid integer' in out


def test_the_schema_admits_the_devices_the_log_and_the_net_admit(tmp_path: Path) -> None:
    """One device index limit (``p2pgrid.identity.MAX_DEVICE_INDEX``, 65535): the
    last index is accepted, the next one refused with the key named."""
    from p2pgrid.identity import MAX_DEVICE_INDEX

    assert MAX_DEVICE_INDEX == 65_535
    last = GOOD.replace("index = 0", f"index = {MAX_DEVICE_INDEX}", 1)
    scenario = load_scenario(_write(tmp_path, last))
    assert MAX_DEVICE_INDEX in {d.index for d in scenario.sites[0].devices}
    beyond = GOOD.replace("index = 0", f"index = {MAX_DEVICE_INDEX + 1}", 1)
    with pytest.raises(ConfigError, match="index: Input should be less than or equal to 65535"):
        load_scenario(_write(tmp_path, beyond))


def test_the_demo_refuses_a_bad_scenario_without_a_traceback(tmp_path: Path) -> None:
    run = _cli(tmp_path, GOOD.replace("periods = 2", "periods = 0"))
    assert run.returncode == 2
    assert "Traceback" not in run.stdout + run.stderr
    out = " ".join(run.stderr.split())  # rich wraps long lines
    assert "clock.periods: Input should be greater than 0" in out


def test_a_device_s_leftover_policy_is_read_exactly(tmp_path: Path) -> None:
    path = tmp_path / "leftover.toml"
    path.write_text(GOOD.replace(FRIDGE_WEIGHT, FRIDGE_WEIGHT + 'leftover = "split(0.3)"\n', 1))
    fridge, solar = load_scenario(path).sites[0].devices
    assert (str(fridge.leftover), str(solar.leftover)) == ("split(0.3)", "carry_over")


#: ``GOOD`` with store-1's fridge and solar light on the site node ``store-1-node``.
LIGHT = (
    GOOD.replace(FRIDGE_WEIGHT, FRIDGE_WEIGHT + 'lightning = "site"\n', 1)
    .replace("producer = true\n", 'producer = true\nlightning = "site"\n', 1)
    .replace(SITE_2, '[sites.site_lightning]\nnode = "store-1-node"\n\n' + SITE_2)
)


def test_light_devices_pay_through_their_site_node(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, LIGHT))
    store_1, store_2 = scenario.sites
    assert store_1.site_node == "store-1-node"
    assert store_2.site_node is None
    assert [d.light for d in store_1.devices] == [True, True]
    assert [d.light for d in store_2.devices] == [False]
    assert {d.name: scenario.node_of(d.name) for s in scenario.sites for d in s.devices} == {
        "fridge": "store-1-node",
        "solar": "store-1-node",
        "hvac": "hvac",
    }
    # One lnd per process: the utility, each device on its own, each site node.
    assert scenario.lnd_nodes == ("utility", "hvac", "store-1-node")
    assert scenario.site_nodes == {"store-1-node": 2}
    assert scenario.own_lnd_devices == ("hvac",)


def test_a_device_is_on_its_own_lnd_unless_it_says_otherwise(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, GOOD))
    assert not any(d.light for s in scenario.sites for d in s.devices)
    assert scenario.lnd_nodes == ("utility", "fridge", "solar", "hvac")
    assert scenario.site_nodes == {}


SITE_NODE = '[sites.site_lightning]\nnode = "store-1-node"\n'

#: (id, the file: LIGHT changed, the key named, the problem named)
BAD_LIGHT: list[tuple[str, str, str, str]] = [
    (
        "a light device in a site with no site node",
        LIGHT.replace(SITE_NODE, ""),
        'sites[0] ("store-1")',
        "site 'store-1': fridge, solar are light (lightning = \"site\") but the site has "
        "no site node",
    ),
    (
        "a site node with no light device",
        LIGHT.replace('lightning = "site"\n', ""),
        'sites[0] ("store-1")',
        "site_lightning names node 'store-1-node' but no device of the site is light",
    ),
    (
        "a site node named as a device",
        LIGHT.replace('node = "store-1-node"', 'node = "hvac"'),
        "(top level)",
        "name (the utility, devices and site nodes name processes and lnd nodes) used "
        "twice: 'hvac'",
    ),
    (
        "a site node named as the utility",
        LIGHT.replace('node = "store-1-node"', 'node = "utility"'),
        "(top level)",
        "used twice: 'utility'",
    ),
    (
        "lightning neither own nor site",
        LIGHT.replace('lightning = "site"', 'lightning = "shared"', 1),
        'devices[0] ("fridge").lightning',
        "'own' or 'site'",
    ),
    (
        "a site node without a name",
        LIGHT.replace('node = "store-1-node"', 'node = ""'),
        "site_lightning.node",
        "at least 1 character",
    ),
    (
        "a misspelt site node key",
        LIGHT.replace('node = "store-1-node"', 'name = "store-1-node"'),
        "site_lightning",
        "unknown key",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "problem"), [c[1:] for c in BAD_LIGHT], ids=[c[0] for c in BAD_LIGHT]
)
def test_a_bad_light_site_is_one_clear_error(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    assert text != LIGHT
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert key in message, message
    assert problem in message, message
