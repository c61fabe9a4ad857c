"""The regtest stacks' topologies as data (:mod:`p2pgrid.regtest.topology`): a
scenario's stack is a star around the utility, a channel per device on its own
lnd and one per site node, sized for the light devices that pay through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgrid.errors import ConfigError
from p2pgrid.regtest.topology import (
    DEVICE_CHANNEL_SAT,
    DEVICE_PUSH_SAT,
    MAX_CHANNEL_SAT,
    UTILITY,
    utility_star,
)
from p2pgrid.scenario import load_scenario

LIGHT = Path(__file__).parents[1] / "p2pgrid" / "scenarios" / "two_sites_light.toml"


def test_a_device_opens_one_channel_to_the_utility() -> None:
    star = utility_star(("a", "b"))
    assert [n.name for n in star.nodes] == [UTILITY, "a", "b"]
    assert {(c.opener, c.peer, c.capacity_sat, c.push_sat) for c in star.channels} == {
        (d, UTILITY, DEVICE_CHANNEL_SAT, DEVICE_PUSH_SAT) for d in ("a", "b")
    }


def test_a_site_node_s_channel_carries_all_its_light_devices() -> None:
    scenario = load_scenario(LIGHT)
    star = utility_star(scenario.own_lnd_devices, scenario.site_nodes)
    assert [n.name for n in star.nodes] == list(scenario.lnd_nodes)  # one per process
    [channel] = [c for c in star.channels if c.opener == "store-1-node"]
    assert (channel.capacity_sat, channel.push_sat) == (
        2 * DEVICE_CHANNEL_SAT,
        2 * DEVICE_PUSH_SAT,
    )


def test_a_site_node_of_many_devices_opens_lnd_s_largest_channel_and_is_funded_for_it() -> None:
    star = utility_star((), {"site": 25})
    [channel] = star.channels
    assert channel.capacity_sat == MAX_CHANNEL_SAT
    assert channel.push_sat < channel.capacity_sat
    assert star.node("site").fund_sat > MAX_CHANNEL_SAT


@pytest.mark.parametrize(
    ("devices", "site_nodes", "problem"),
    [
        (("a", "b"), {"a": 2}, r"site node named as a device: \['a'\]$"),
        (("a", "a"), {}, r"a device named twice: \['a'\]$"),
        ((), {"s": 0}, "at least one"),
    ],
)
def test_a_bad_star_is_refused(
    devices: tuple[str, ...], site_nodes: dict[str, int], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        utility_star(devices, site_nodes)
