"""A scenario as deployment files (:mod:`p2pgrid.config.deployment`): the files
validate and build the setups the scenario describes, with fresh keys, fixed ports
and bootstrap addresses; the TOML reads back as it was written."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import tempfile
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.agent.gateway import check_gateway
from p2pgrid.billing import split_budget
from p2pgrid.config import (
    SiteFile,
    UtilityFile,
    agent_setup,
    agent_start,
    node_commands,
    read_key,
    start_then_stdin,
    utility_setup,
)
from p2pgrid.config.deployment import Deployment, LndNode, write_deployment, write_toml
from p2pgrid.dashboard import DashboardConfig
from p2pgrid.errors import ConfigError
from p2pgrid.identity import Signer
from p2pgrid.ledger import Allocation, decode_entry
from p2pgrid.lightning.lnd import LndEndpoint
from p2pgrid.net import peer_id_of
from p2pgrid.scenario import Scenario, load_scenario
from p2pgrid.secretfile import InsecureSecretFile, write_secret
from p2pgrid.service import Command

SCENARIO = Path(__file__).parents[2] / "p2pgrid" / "scenarios" / "two_sites.toml"
#: The demo's: store-1's fridge and hvac light on the site node store-1-node.
LIGHT = SCENARIO.with_name("two_sites_light.toml")
START = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)


def fake_lnd(scenario: Scenario) -> dict[str, LndNode]:
    """An lnd per process (nothing dials them here): a port and a fresh node key."""
    return {
        name: LndNode(
            LndEndpoint(
                name,
                "127.0.0.1",
                10_000 + i,
                Path(f"/lnd/{name}/tls.cert"),
                Path(f"/lnd/{name}/admin.macaroon"),
            ),
            Signer.generate().pubkey.hex(),
        )
        for i, name in enumerate(scenario.lnd_nodes)
    }


def deploy(
    scenario: Scenario, dir: Path, lnd: dict[str, LndNode], path: Path = SCENARIO
) -> Deployment:
    ports = iter(range(20_000, 21_000))
    return write_deployment(path, dir, lnd, start=START, port=lambda _: next(ports))


def test_the_utility_file_builds_the_scenario_s_utility(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIO)
    lnd = fake_lnd(scenario)
    d = deploy(scenario, tmp_path, lnd)
    utility = utility_setup(UtilityFile(d.utility_file))
    assert utility.name == scenario.utility.name
    assert (utility.timing, utility.tariff) == (scenario.timing, scenario.tariff)
    assert utility.readings_wait_s == scenario.utility.readings_wait_s
    assert utility.runtime.lnd == lnd[scenario.utility.name].endpoint
    assert utility.runtime.data_dir == (tmp_path / scenario.utility.name).resolve()
    for site, served in zip(scenario.sites, utility.sites, strict=True):
        assert d.identities[site.name] != site.identity  # a fresh key, not the seed's
        assert served.identity == d.identities[site.name]
        assert served.budget_msat == site.budget_msat
        assert served.devices == tuple(dev.index for dev in site.devices)
        assert served.listen_port > 0
        # `site allocate` for every period: the budget split by weight, to the msat.
        entries = [decode_entry(raw, served.identity.site_hash) for raw in served.provision]
        split = split_budget(site.budget_msat, {dev.index: dev.weight for dev in site.devices})
        assert {
            (e.period, e.body.device): e.body.amount_msat
            for e in entries
            if isinstance(e.body, Allocation)
        } == {
            (p, i): amount for p in range(scenario.periods) for i, amount in split.items() if amount
        }


def test_each_site_file_builds_its_devices_of_the_scenario(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIO)
    lnd = fake_lnd(scenario)
    d = deploy(scenario, tmp_path, lnd)
    utility = utility_setup(UtilityFile(d.utility_file))
    utility_key = read_key(tmp_path / "keys" / "utility" / "utility.key")
    every_device = {dev.name: lnd[dev.name].pubkey for s in scenario.sites for dev in s.devices}
    addresses: list[str] = []  # every device's own, in the scenario's order
    for site, served in zip(scenario.sites, utility.sites, strict=True):
        site_file = SiteFile(d.site_files[site.name])
        start = agent_start(site_file)
        assert start["at"] == START.timestamp()
        assert start["nodes"] == every_device  # the owner's other sites' devices too
        for device in site.devices:
            setup = agent_setup(site_file, device.name)
            row = site_file.device(device.name)
            assert setup.device == device
            assert setup.identity == d.identities[site.name]
            assert setup.timing == scenario.timing
            assert setup.runtime.lnd == lnd[device.name].endpoint
            assert setup.runtime.utility_pubkey == lnd[scenario.utility.name].pubkey
            assert [p.name for p in setup.peer_sites] == [
                s.name for s in scenario.sites if s != site
            ]
            assert setup.parties.keys() == every_device.keys()
            utility_peer = peer_id_of(utility_key, served.identity)
            at_utility = f"/ip4/127.0.0.1/tcp/{served.listen_port}/p2p/{utility_peer}"
            assert list(setup.runtime.bootstrap) == [at_utility, *addresses[-4:]]
            assert setup.runtime.listen_port == row.listen_port > 0
            own = peer_id_of(setup.signer, setup.identity)
            addresses.append(f"/ip4/127.0.0.1/tcp/{row.listen_port}/p2p/{own}")
    # The utility speaks for every site with one key, yet each site's host has its
    # own peer id: two hosts with one id would take each other's connections.
    assert len({peer_id_of(utility_key, s.identity) for s in utility.sites}) == 2
    assert d.argv("s2-solar") == [
        "agent", "run", "--config", str(d.site_files["store-2"]), "--device", "s2-solar",
    ]  # fmt: skip


def test_light_devices_run_in_one_gateway_on_their_site_node(tmp_path: Path) -> None:
    scenario = load_scenario(LIGHT)
    lnd = fake_lnd(scenario)
    assert set(lnd) == {"utility", "s1-ev", "s2-solar", "s2-hvac", "s2-heater", "store-1-node"}
    d = deploy(scenario, tmp_path, lnd, LIGHT)
    site_node = lnd["store-1-node"]
    # One process per lnd node: the light two in one gateway, named as their node.
    assert d.processes == {
        "store-1-node": ("s1-fridge", "s1-hvac"),
        "s1-ev": ("s1-ev",),
        "s2-solar": ("s2-solar",),
        "s2-hvac": ("s2-hvac",),
        "s2-heater": ("s2-heater",),
    }
    assert d.names == ("utility", *d.processes)
    assert d.process_of("s1-hvac") == "store-1-node"
    assert d.process_of("s1-ev") == "s1-ev"
    assert d.argv("store-1-node") == [
        "agent", "run", "--config", str(d.site_files["store-1"]),
        "--device", "s1-fridge", "--device", "s1-hvac",
    ]  # fmt: skip
    store_1 = SiteFile(d.site_files["store-1"])
    assert store_1.model.site_lightning is not None
    assert store_1.model.site_lightning.pubkey == site_node.pubkey
    assert store_1.device_lnd(store_1.device("s1-ev")) == lnd["s1-ev"].endpoint
    every_node = {dev.name: lnd[scenario.node_of(dev.name)].pubkey for s in scenario.sites
                  for dev in s.devices}  # fmt: skip
    for name in ("s1-fridge", "s1-hvac"):
        row = store_1.device(name)
        assert (row.lightning, row.lnd, row.lnd_pubkey) == ("site", None, None)
        setup = agent_setup(store_1, name)
        assert setup.device == scenario.sites[0].device(name)  # light, as the scenario says
        # The site node's endpoint (named after the site in the file).
        assert dataclasses.replace(setup.runtime.lnd, name="") == dataclasses.replace(
            site_node.endpoint, name=""
        )
        assert setup.site_node is not None
        assert setup.site_node.pubkey == site_node.pubkey
        assert setup.site_node.light == frozenset({0, 1})
    assert agent_setup(store_1, "s1-ev").site_node is None
    # Every site pays a light device at the site node: its start's nodes and the
    # other site's lnd_pubkeys.
    store_2 = SiteFile(d.site_files["store-2"])
    assert store_2.model.site_lightning is None
    for site_file in (store_1, store_2):
        assert agent_start(site_file)["nodes"] == every_node
    [other] = store_2.model.other_sites
    assert other.lnd_pubkeys["s1-fridge"] == other.lnd_pubkeys["s1-hvac"] == site_node.pubkey
    # The gateway listens on one address, its first device's: the other row names
    # no port, carries the process's bootstrap, and no list names it twice.
    fridge, hvac = (agent_setup(store_1, n).runtime for n in ("s1-fridge", "s1-hvac"))
    assert fridge.listen_port > 0
    assert store_1.device("s1-hvac").listen_port == hvac.listen_port == 0
    assert "listen_port" not in tomllib.loads(d.site_files["store-1"].read_text())["devices"][1]
    assert hvac.listen_host == fridge.listen_host
    assert hvac.bootstrap == fridge.bootstrap
    fridge_id, hvac_id = (
        peer_id_of(agent_setup(store_1, n).signer, d.identities["store-1"])
        for n in ("s1-fridge", "s1-hvac")
    )
    at_gateway = f"/ip4/127.0.0.1/tcp/{fridge.listen_port}/p2p/{fridge_id}"
    assert agent_setup(store_1, "s1-ev").runtime.bootstrap == (*fridge.bootstrap, at_gateway)
    for site_file, site in ((store_1, scenario.sites[0]), (store_2, scenario.sites[1])):
        for dev in site.devices:
            listed = agent_setup(site_file, dev.name).runtime.bootstrap
            assert not any(hvac_id in a for a in listed), dev.name  # no address has it
            assert sum(fridge_id in a for a in listed) == (
                dev.name not in d.processes["store-1-node"]
            )
    with pytest.raises(ConfigError, match="no lnd node for store-1-node"):
        write_deployment(
            LIGHT,
            tmp_path / "again",
            {k: v for k, v in lnd.items() if k != "store-1-node"},
            start=START,
        )


def test_a_gateway_is_written_as_its_lowest_index_whatever_the_file_s_order(
    tmp_path: Path,
) -> None:
    """The demo's scenario with store-1's light devices' indices swapped: the hvac
    (index 0) is listed after the fridge (index 1). The gateway's host speaks as
    the hvac (p2pgrid.agent.gateway.hub_device), so its row names the port, every
    list names the gateway by the hvac's peer id, and the run's check passes."""
    text = LIGHT.read_text()
    for name, index in (("s1-fridge", 1), ("s1-hvac", 0)):
        text = re.sub(
            rf'(name = "{name}"\n(?:.*\n)*?)index = \d', rf"\g<1>index = {index}", text, count=1
        )
    path = tmp_path / "swapped.toml"
    path.write_text(text)
    scenario = load_scenario(path)
    d = deploy(scenario, tmp_path / "run", fake_lnd(scenario), path)
    assert d.processes["store-1-node"] == ("s1-hvac", "s1-fridge")
    store_1 = SiteFile(d.site_files["store-1"])
    hvac, fridge = (agent_setup(store_1, n) for n in ("s1-hvac", "s1-fridge"))
    assert (hvac.device.index, fridge.device.index) == (0, 1)
    assert hvac.runtime.listen_port > 0
    assert fridge.runtime.listen_port == 0
    assert fridge.runtime.bootstrap == hvac.runtime.bootstrap
    check_gateway([fridge, hvac])  # as `agent run --device s1-fridge --device s1-hvac` runs it
    at_gateway = f"/ip4/127.0.0.1/tcp/{hvac.runtime.listen_port}/p2p/" + peer_id_of(
        hvac.signer, hvac.identity
    )
    assert at_gateway in agent_setup(store_1, "s1-ev").runtime.bootstrap
    fridge_id = peer_id_of(fridge.signer, fridge.identity)
    for site in scenario.sites:
        for dev in site.devices:
            listed = agent_setup(SiteFile(d.site_files[site.name]), dev.name).runtime.bootstrap
            assert not any(fridge_id in a for a in listed), dev.name


def test_every_deployment_has_its_own_keys_and_is_written_once(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIO)
    lnd = fake_lnd(scenario)
    one = deploy(scenario, tmp_path / "one", lnd)
    two = deploy(scenario, tmp_path / "two", lnd)
    assert not set(one.identities.values()) & set(two.identities.values())
    before = {p: p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="holds a deployment already"):
        deploy(scenario, tmp_path / "one", lnd)
    assert {p: p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()} == before
    with pytest.raises(ConfigError, match="no lnd node for utility"):
        write_deployment(
            SCENARIO,
            tmp_path / "three",
            {k: v for k, v in lnd.items() if k != "utility"},
            start=START,
        )


@pytest.mark.parametrize("path", [SCENARIO, LIGHT], ids=["own lnd", "light devices"])
def test_the_written_files_read_back_as_written(tmp_path: Path, path: Path) -> None:
    scenario = load_scenario(path)
    d = deploy(scenario, tmp_path, fake_lnd(scenario), path)
    for written in (d.utility_file, *d.site_files.values()):
        copy = tmp_path / f"copy-{written.name}"
        write_toml(copy, tomllib.loads(written.read_text()))
        assert copy.read_text() == written.read_text()


text = st.text(st.characters(codec="utf-8"), max_size=40)


@given(
    st.dictionaries(
        text,
        st.one_of(
            text, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.lists(text, max_size=3)
        ),
        max_size=5,
    ),
    st.dictionaries(text, text, max_size=3),
)
def test_any_table_of_strings_and_numbers_reads_back(
    table: dict[str, object], inline: dict[str, str]
) -> None:
    doc = {"t": {**table, "inline": inline}, "rows": [table, table]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.toml"
        write_toml(path, doc)
        assert tomllib.loads(path.read_text()) == doc


def test_another_site_s_device_unknown_to_its_entries_is_refused(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIO)
    d = deploy(scenario, tmp_path, fake_lnd(scenario))
    path = d.site_files["store-1"]
    path.write_text(path.read_text().replace("lnd_pubkeys = { s2-solar", "lnd_pubkeys = { s9-x"))
    with pytest.raises(ConfigError, match=r"other_sites\[0\]\.lnd_pubkeys: no device named s9-x"):
        agent_setup(SiteFile(path), "s1-fridge")
    path.write_text(path.read_text().replace('name = "store-2"', 'name = "store-1"'))
    with pytest.raises(ConfigError, match="a site named twice: store-1"):
        SiteFile(path)


async def test_control_reads_stdin_after_the_file_s_start_and_refuses_another_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def stdin() -> AsyncIterator[Command]:
        for cmd in ("digest", "start", "status", "stop"):
            yield {"cmd": cmd, "at": 1.0}

    start = {"cmd": "start", "at": START.timestamp()}
    got = [c async for c in start_then_stdin(start, stdin)]
    assert got == [start, {"cmd": "digest", "at": 1.0}, {"cmd": "status", "at": 1.0},
                   {"cmd": "stop", "at": 1.0}]  # fmt: skip
    assert '"event": "error"' in capsys.readouterr().out


async def test_await_start_takes_interval_0_from_the_first_good_start_on_stdin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sent: list[Command] = [
        {"cmd": "digest"},
        {"cmd": "start"},  # no time: refused
        {"cmd": "start", "at": "soon"},
        {"cmd": "start", "at": True},
        {"cmd": "start", "at": float("nan")},
        {"cmd": "start", "at": 1234.5, "nodes": {"x": "y"}},
        {"cmd": "start", "at": 99.0},  # a second start: refused
        {"cmd": "stop"},
    ]

    async def stdin() -> AsyncIterator[Command]:
        for command in sent:
            yield command

    start = {"cmd": "start", "at": START.timestamp(), "nodes": {"s1-fridge": "02ab"}}
    got = [c async for c in start_then_stdin(start, stdin, await_start=True)]
    # The file's start with the launcher's time: the file's nodes, not stdin's.
    assert got == [
        {"cmd": "digest"},
        {"cmd": "start", "at": 1234.5, "nodes": {"s1-fridge": "02ab"}},
        {"cmd": "stop"},
    ]
    out = capsys.readouterr().out
    assert out.count('"event": "error"') == 5, out
    assert "start wants `at`" in out
    assert "not from stdin" in out


def test_await_start_without_control_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs --control"):
        node_commands({"cmd": "start", "at": START.timestamp()}, False, True)


def test_an_unknown_site_to_trade_with_is_refused(tmp_path: Path) -> None:
    """When the file is read: the one check, as a device's setup (alone or in a
    gateway: :func:`agent_setup`) is made only from a read site file."""
    scenario = load_scenario(SCENARIO)
    d = deploy(scenario, tmp_path, fake_lnd(scenario))
    path = d.site_files["store-1"]
    text = path.read_text()
    for names in ('["store-2"]', '["store-1", "store-2"]'):  # its own name is ignored
        path.write_text(text + f"\n[agent.energy]\ntrade_sites = {names}\n")
        assert SiteFile(path).model.agent.energy.trade_sites[-1] == "store-2"
    path.write_text(text + '\n[agent.energy]\ntrade_sites = ["store-2", "store-9"]\n')
    with pytest.raises(ConfigError) as refused:
        SiteFile(path)
    assert str(refused.value).startswith("store-1.toml")
    assert "agent.energy.trade_sites: no [[other_sites]] row named store-9" in str(refused.value)
    assert "(other sites: store-2)" in str(refused.value)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(SCENARIO.read_text() + '\n[agent.energy]\ntrade_sites = ["store-9"]\n')
    with pytest.raises(ConfigError, match=r"agent\.energy\.trade_sites: no site named 'store-9'"):
        load_scenario(wrong)


def test_a_device_and_the_utility_say_where_their_dashboard_listens(tmp_path: Path) -> None:
    scenario = load_scenario(SCENARIO)
    d = deploy(scenario, tmp_path, fake_lnd(scenario))
    site, utility = d.site_files["store-1"], d.utility_file
    site_text, utility_text = site.read_text(), utility.read_text()
    assert agent_setup(SiteFile(site), "s1-fridge").runtime.dashboard == DashboardConfig()
    assert utility_setup(UtilityFile(utility)).runtime.dashboard == DashboardConfig()
    token = tmp_path / "keys" / "dash.token"
    write_secret(token, b"a-token-of-24-characters\n")

    def fridge(table: str) -> Path:
        row = 'data_dir = "s1-fridge"\n'
        site.write_text(site_text.replace(row, f"{row}dashboard = {{ {table} }}\n", 1))
        return site

    fridge('host = "0.0.0.0", port = 8088, token_file = "keys/dash.token"')
    assert agent_setup(SiteFile(site), "s1-fridge").runtime.dashboard == DashboardConfig(
        "0.0.0.0", 8088, "a-token-of-24-characters"
    )
    assert agent_setup(SiteFile(site), "s1-hvac").runtime.dashboard == DashboardConfig()
    line = "readings_wait_s = 60.0\n"
    utility.write_text(utility_text.replace(line, f"{line}dashboard = {{ port = 8089 }}\n"))
    assert utility_setup(UtilityFile(utility)).runtime.dashboard == DashboardConfig(port=8089)

    row = 'devices[0] ("s1-fridge").dashboard'
    refused = {
        'host = "0.0.0.0"': ": host 0.0.0.0 is beyond loopback: it needs a token_file",
        'host = "dash.example"': ".host: not an IP address (or localhost)",
        "port = 70000": ".port: Input should be less than or equal to 65535",
        'token_file = "keys/none"': ".token_file: cannot read secret file",
        'pin = "1234"': ".pin: unknown key (misspelt?)",
    }
    for table, says in refused.items():
        with pytest.raises(ConfigError) as error:
            agent_setup(SiteFile(fridge(table)), "s1-fridge")
        assert str(error.value).startswith(f"store-1.toml: {row}{says}"), str(error.value)
    write_secret(token, b"short\n")
    fridge('host = "10.0.0.5", token_file = "keys/dash.token"')
    with pytest.raises(ConfigError, match=r"dashboard: .* at least 16 characters"):
        agent_setup(SiteFile(site), "s1-fridge")
    token.chmod(0o644)
    with pytest.raises(InsecureSecretFile, match=r"dashboard\.token_file: .*other users may read"):
        agent_setup(SiteFile(site), "s1-fridge")


def test_the_scenario_s_agent_tuning_and_grid_fee_reach_the_files(tmp_path: Path) -> None:
    text = SCENARIO.read_text().replace(
        "[tariff]\n",
        "[agent.energy]\npay_on_delivery = true\n\n[tariff]\ngrid_fee_msat_per_kwh = 30000\n",
    )
    tuned = tmp_path / "tuned.toml"
    tuned.write_text(text)
    scenario = load_scenario(tuned)
    assert scenario.agent.energy.pay_on_delivery
    ports = iter(range(20_000, 21_000))
    d = write_deployment(
        tuned, tmp_path / "out", fake_lnd(scenario), start=START, port=lambda _: next(ports)
    )
    for site in scenario.sites:
        site_file = SiteFile(d.site_files[site.name])
        assert site_file.model.tariff.grid_fee_msat_per_kwh == 30_000
        for device in site.devices:
            assert agent_setup(site_file, device.name).config == scenario.agent
    assert UtilityFile(d.utility_file).model.tariff.grid_fee_msat_per_kwh == 30_000


def test_the_utility_s_lnd_wait_is_the_utility_file_s(tmp_path: Path) -> None:
    """``[utility] lnd_away_wait_s``: 300 s by default, the scenario's if it says,
    carried into the utility file; a wait of 0 or past a day is refused."""
    scenario = load_scenario(SCENARIO)
    default = deploy(scenario, tmp_path / "default", fake_lnd(scenario))
    assert utility_setup(UtilityFile(default.utility_file)).lnd_away_wait_s == 300.0
    path = tmp_path / "scenario.toml"
    seed = 'seed = "p2pgrid demo utility"\n'
    path.write_text(SCENARIO.read_text().replace(seed, f"{seed}lnd_away_wait_s = 20.0\n"))
    d = deploy(load_scenario(path), tmp_path / "set", fake_lnd(scenario), path)
    assert utility_setup(UtilityFile(d.utility_file)).lnd_away_wait_s == 20.0
    text = d.utility_file.read_text()
    for wrong, says in (("0.0", "greater than 0"), ("100000.0", "less than or equal to 86400")):
        d.utility_file.write_text(
            text.replace("lnd_away_wait_s = 20.0", f"lnd_away_wait_s = {wrong}")
        )
        with pytest.raises(ConfigError, match=rf"utility\.lnd_away_wait_s: .*{says}"):
            UtilityFile(d.utility_file)
