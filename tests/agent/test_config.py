"""AgentConfig: its defaults are the values the agent ran with as module
constants (behaviour unchanged), it is frozen, and bad values are refused at
build time with one ConfigError naming each bad key."""

from __future__ import annotations

import pydantic
import pytest

from p2pgrid.agent import AgentConfig, EnergyConfig, SettleConfig, ShareConfig
from p2pgrid.errors import ConfigError


def test_the_defaults_are_the_former_module_constants() -> None:
    config = AgentConfig()
    assert config.share == ShareConfig(offer_timeout_s=5.0, pay_timeout_s=60.0,
                                       fee_limit_msat=20_000)  # fmt: skip
    assert config.energy == EnergyConfig(round_s=0.3, ask_pct=80, bid_timeout_s=5.0,
                                         fee_limit_msat=20_000, sale_expiry_s=600)  # fmt: skip
    assert config.settle == SettleConfig(fee_limit_msat=10_000, invoice_wait_s=120.0,
                                         pay_attempts=3, pay_retry_s=2.0,
                                         node_away_wait_s=90.0)  # fmt: skip
    assert config.anti_entropy_s == 2.0


def test_it_is_frozen() -> None:
    config = AgentConfig()
    with pytest.raises(pydantic.ValidationError):
        config.anti_entropy_s = 1.0  # type: ignore[misc]


def test_from_data_keeps_defaults_for_missing_keys() -> None:
    config = AgentConfig.from_data({"energy": {"ask_pct": 70}, "anti_entropy_s": 1})
    assert (config.energy.ask_pct, config.anti_entropy_s) == (70, 1.0)
    assert config.settle == SettleConfig()


def test_bad_values_are_refused_with_one_line_each() -> None:
    with pytest.raises(ConfigError) as refused:
        AgentConfig.from_data(
            {"energy": {"ask_pct": 101}, "settle": {"pay_attempts": 0}, "share": {"typo": 1}}
        )
    lines = str(refused.value).splitlines()
    assert len(lines) == 3
    assert any(line.startswith("agent config: energy.ask_pct:") for line in lines)
    assert any(line.startswith("agent config: settle.pay_attempts:") for line in lines)
    assert any(line.startswith("agent config: share.typo:") for line in lines)
