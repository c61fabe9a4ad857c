"""Deprecated values still read, with a WARNING naming the file, the key and
what to write instead: a device's ``policy = "sell_energy"`` (it does what
``carry_over`` does at the period's close, docs/market.md 2.6), in a scenario
and in a site file; a deployment does not copy it into the files it writes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from p2pgrid.config import SiteFile, agent_setup
from p2pgrid.market import SurplusPolicy
from p2pgrid.scenario import load_scenario
from tests.config.test_deployment import SCENARIO, deploy, fake_lnd

HVAC = 'name = "s1-hvac"\n'


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_sell_energy_reads_as_carry_over_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(SCENARIO.read_text().replace(HVAC, HVAC + 'policy = "sell_energy"\n'))
    with caplog.at_level(logging.WARNING):
        scenario = load_scenario(path)
    [warning] = warnings_of(caplog)
    assert warning.startswith(f'{path}: sites[0].devices[1] (s1-hvac): policy = "sell_energy"')
    assert 'write policy = "carry_over"' in warning
    assert 'leftover = "sell"' in warning
    assert scenario.sites[0].devices[1].policy is SurplusPolicy.SELL_ENERGY  # read, as before

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        d = deploy(scenario, tmp_path / "deployed", fake_lnd(scenario), path)
        site_file = d.site_files["store-1"]
        assert agent_setup(SiteFile(site_file), "s1-hvac").device.policy is (
            SurplusPolicy.CARRY_OVER
        )  # the deployment wrote the value it means
    assert not [w for w in warnings_of(caplog) if "sell_energy" in w]

    text = site_file.read_text()
    site_file.write_text(text.replace(HVAC, HVAC + 'policy = "sell_energy"\n', 1))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SiteFile(site_file)
    [warning] = warnings_of(caplog)
    assert warning.startswith(f'{site_file}: devices[1] (s1-hvac): policy = "sell_energy"')


def test_carry_over_reads_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_scenario(SCENARIO)
    assert warnings_of(caplog) == []
