"""check_gateway and the hub device: a site's devices in a gateway speak through
one host, as the one of them with the lowest device index (whatever the order of
``--device``): its key makes the peer id, its row's port is where the host
listens, so only that port counts; what cannot run (two sites' hosts on one
port, a hub device's row without the port another row names, two mDNS
responders, a device twice) is refused before anything opens, with a
ConfigError that names it."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from pathlib import Path

import pytest

from p2pgrid.agent.gateway import by_site, check_gateway, hub_device, open_hub, site_log_file
from p2pgrid.agent.setup import AgentSetup
from p2pgrid.config import SiteFile, agent_setup
from p2pgrid.errors import ConfigError
from p2pgrid.net import TrioBridge, peer_id_of
from p2pgrid.scenario import load_scenario
from tests.config.test_deployment import LIGHT, deploy, fake_lnd


@pytest.fixture
def setups(tmp_path: Path) -> dict[str, AgentSetup]:
    """Every device of the demo's deployment (store-1's fridge and hvac light,
    in one gateway), as its site file builds it."""
    scenario = load_scenario(LIGHT)
    d = deploy(scenario, tmp_path, fake_lnd(scenario), LIGHT)
    return {
        dev.name: agent_setup(SiteFile(d.site_files[site.name]), dev.name)
        for site in scenario.sites
        for dev in site.devices
    }


def at(setup: AgentSetup, port: int | None = None, *, mdns: bool = False) -> AgentSetup:
    """``setup`` listening on ``port`` (None: as its file says), mDNS on or off."""
    runtime = setup.runtime
    listen = runtime.listen_port if port is None else port
    return dataclasses.replace(
        setup, runtime=dataclasses.replace(runtime, listen_port=listen, mdns=mdns)
    )


def test_the_deployed_gateway_passes(
    setups: dict[str, AgentSetup], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        check_gateway([setups["s1-fridge"], setups["s1-hvac"]])
    assert not caplog.records
    # Every device in one gateway: those deployed alone named ports of their own,
    # where nothing will listen now (each site's host is on its first device's).
    with caplog.at_level(logging.WARNING):
        check_gateway(list(setups.values()))
    unused = [r.getMessage().split("]")[0][1:] for r in caplog.records]
    assert unused == ["s1-ev", "s2-hvac", "s2-heater"]


def test_a_site_s_devices_may_name_one_port(
    setups: dict[str, AgentSetup], caplog: pytest.LogCaptureFixture
) -> None:
    fridge, hvac = setups["s1-fridge"], setups["s1-hvac"]
    with caplog.at_level(logging.WARNING):
        check_gateway([at(fridge, 4001), at(hvac, 4001), at(setups["s1-ev"], 0)])
    assert not caplog.records


def test_a_port_of_a_later_device_is_logged_as_not_used(
    setups: dict[str, AgentSetup], caplog: pytest.LogCaptureFixture
) -> None:
    fridge, hvac = setups["s1-fridge"], setups["s1-hvac"]
    with caplog.at_level(logging.WARNING):
        check_gateway([at(fridge, 4001), at(hvac, 4002)])
    [record] = caplog.records
    assert "[s1-hvac] listen_port 4002 on 127.0.0.1 is not used" in record.getMessage()
    assert "s1-fridge's port (4001 on 127.0.0.1)" in record.getMessage()


def test_two_sites_hosts_on_one_port_are_refused(setups: dict[str, AgentSetup]) -> None:
    one, two = at(setups["s1-fridge"], 4001), at(setups["s2-solar"], 4001)
    with pytest.raises(ConfigError) as refused:
        check_gateway([one, at(setups["s1-hvac"], 0), two])
    assert str(refused.value) == (
        "listen_port 4001 on 127.0.0.1 is given to the hosts of store-1 (s1-fridge), "
        "store-2 (s2-solar): each site's host in a gateway listens on its own port "
        "(its hub device's, the lowest index)"
    )
    # A later device's port is not where anything listens: no clash.
    check_gateway([one, at(setups["s2-solar"], 4002), at(setups["s2-hvac"], 4001)])


def test_one_site_s_host_may_run_mdns_two_may_not(setups: dict[str, AgentSetup]) -> None:
    fridge, hvac, solar = setups["s1-fridge"], setups["s1-hvac"], setups["s2-solar"]
    check_gateway([at(fridge, mdns=True), at(hvac, mdns=True), solar])  # one host: one responder
    with pytest.raises(ConfigError) as refused:
        check_gateway([at(fridge), at(hvac, mdns=True), at(solar, mdns=True)])
    assert str(refused.value) == (
        "mdns is on for the hosts of store-1 (s1-hvac), store-2 (s2-solar): one site's "
        "host of a gateway at most (the others find their peers through it)"
    )


def test_no_device_or_one_twice_is_refused(setups: dict[str, AgentSetup]) -> None:
    with pytest.raises(ConfigError, match="at least one device"):
        check_gateway([])
    fridge = setups["s1-fridge"]
    with pytest.raises(ConfigError, match="each device once: s1-fridge given twice"):
        check_gateway([fridge, setups["s1-hvac"], fridge])


def test_the_host_speaks_as_the_lowest_index_whatever_the_order_of_devices(
    setups: dict[str, AgentSetup], caplog: pytest.LogCaptureFixture
) -> None:
    fridge, hvac, ev = (at(setups[n], p) for n, p in (("s1-fridge", 4001), ("s1-hvac", 0),
                                                        ("s1-ev", 4003)))  # fmt: skip
    site = fridge.identity.site_id
    stack = contextlib.AsyncExitStack()  # never entered: the hubs are not started

    def host_of(members: list[AgentSetup]) -> tuple[str, str, int]:
        hub = open_hub(stack, members, TrioBridge())
        return hub.first.signer.pubkey.hex(), hub.peer_id, hub.config.listen_port

    expected = (fridge.signer.pubkey.hex(), peer_id_of(fridge.signer, fridge.identity), 4001)
    for order in itertools.permutations([fridge, hvac, ev]):
        members = list(order)
        assert hub_device(members) is fridge
        assert [s.name for s in by_site(members)[site]] == ["s1-fridge", "s1-hvac", "s1-ev"]
        assert host_of(members) == expected
        assert site_log_file(members) == fridge.runtime.data_dir / "store-1.gateway.db"
        with caplog.at_level(logging.WARNING):
            check_gateway(members)
        [record] = caplog.records  # the ev's own port, whichever --device came first
        assert record.getMessage().startswith("[s1-ev] listen_port 4003 on 127.0.0.1 is not used")
        caplog.clear()
    # Another device set, another host: the lowest index of the set.
    for pair in ([ev, at(hvac, 4002)], [at(hvac, 4002), ev]):
        assert host_of(pair)[1:] == (peer_id_of(hvac.signer, hvac.identity), 4002)
    # A device alone is its own host, as `agent run --device X` always was.
    assert host_of([ev])[1:] == (peer_id_of(ev.signer, ev.identity), 4003)


def test_a_hub_device_without_the_port_another_row_names_is_refused(
    setups: dict[str, AgentSetup],
) -> None:
    """A gateway written when its first --device made the host (the port on the
    hvac's row, run as ``--device s1-hvac --device s1-fridge``) would now listen as
    the fridge on a free port: refused, with the fix, in either order."""
    fridge, hvac = at(setups["s1-fridge"], 0), at(setups["s1-hvac"], 4002)
    for order in ([hvac, fridge], [fridge, hvac]):
        with pytest.raises(ConfigError) as refused:
            check_gateway(order)
        assert str(refused.value) == (
            "store-1: the gateway's host of s1-fridge, s1-hvac speaks as s1-fridge (the "
            "lowest device index, 0) and listens on its row's listen_port, which names "
            "none, while s1-hvac's row names 4002: give that listen_port on s1-fridge's "
            "row (and s1-fridge's peer id in the peers' bootstrap addresses)"
        )
    check_gateway([at(setups["s1-fridge"], 0), at(setups["s1-hvac"], 0)])  # free ports: fine
