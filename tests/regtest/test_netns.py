"""Agents on several hosts: the utility and each site in its own network namespace.

The test makes a bridge and one namespace per party (:class:`p2pgrid.testing.netns.Lan`,
removed again even when the run fails), runs the regtest daemons in the root
namespace with lnd's REST API on the bridge's address, and runs one billing
period of ``two_sites.toml`` with the utility and each site's agents in their
namespace, listening on its address: parties reach each other only over the
bridge (no ``127.0.0.1`` between them), bootstrapping from the addresses the
others advertised. Asserts that every replica of a site converges, that every
invoice is paid exactly once, and that lnd and the logs agree to the msat.

Skipped, with the reason, only where ``ip netns add`` is refused (not root, or a
kernel or container without network namespaces).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from p2pgrid.config.deployment import free_port
from p2pgrid.demo import check_money, snapshots
from p2pgrid.launcher import Placement, RunResult, run_deployment
from p2pgrid.ledger import Invoice, Payment, bill
from p2pgrid.lightning import InvoiceState
from p2pgrid.reconcile import NodeSnapshot
from p2pgrid.regtest import Daemons, Stack, StackConfig
from p2pgrid.regtest.topology import utility_star
from p2pgrid.scenario import Scenario, load_scenario
from p2pgrid.testing.netns import Lan, netns_refused
from tests.faults.checker import utility_log
from tests.regtest.conftest import TEST_ROOT
from tests.regtest.deployed import deploy

SCENARIO = Path(__file__).parents[2] / "p2pgrid" / "scenarios" / "two_sites.toml"

Run = tuple[Scenario, Lan, Stack, RunResult, dict[str, NodeSnapshot]]


def one_period(tmp: Path) -> Path:
    """``two_sites.toml`` cut to one billing period (the run is about the network)."""
    text = SCENARIO.read_text()
    assert "\nperiods = 2" in text
    path = tmp / "two_sites_one_period.toml"
    path.write_text(text.replace("\nperiods = 2", "\nperiods = 1"))
    return path


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    refused = netns_refused()
    if refused is not None:
        pytest.skip(f"this machine makes no network namespaces: {refused}")
    scenario = load_scenario(SCENARIO)
    lan = Lan((scenario.utility.name, *(s.name for s in scenario.sites)))
    lan.up()
    try:
        yield lan
    finally:
        lan.down()


@pytest.fixture(scope="module")
async def run(
    lan: Lan, daemons: Daemons, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    tmp = tmp_path_factory.mktemp("netns")
    path = one_period(tmp)
    scenario = load_scenario(path)
    devices = tuple(d.name for s in scenario.sites for d in s.devices)
    stack = Stack(
        StackConfig(
            name=f"netns-{os.getpid()}",
            root=TEST_ROOT,
            topology=utility_star(devices),
            rest_host=lan.gateway,  # reached from every namespace over the bridge
        ),
        daemons,
    )

    def place(name: str) -> Placement:
        if name == scenario.utility.name:
            return lan.placement(name)
        site, _ = scenario.site_of(name)
        return lan.placement(site.name)

    await stack.up()
    try:
        before = await snapshots(scenario, stack)
        # A port free on this host's loopback: each namespace has its own ports, none used.
        deployment = await deploy(path, stack, tmp / "run", place=place, port=lambda _: free_port())
        result = await run_deployment(deployment, place=place, start_when_ready=True)
        yield scenario, lan, stack, result, before
    finally:
        await stack.down()


def test_parties_dial_each_other_over_the_bridge_only(run: Run) -> None:
    """Every process listened on its namespace's address (which exists nowhere
    else, so it ran there) and bootstrapped from other parties' bridge addresses,
    as its deployment file says."""
    scenario, lan, _, result, _ = run
    assert lan.subnet is not None
    uname = scenario.utility.name
    utility = tomllib.loads((result.work_dir / "utility.toml").read_text())["utility"]
    assert utility["listen_host"] == lan.address(uname)
    assert utility["lnd"]["rest_host"] == lan.gateway
    for site in scenario.sites:
        doc = tomllib.loads((result.work_dir / f"{site.name}.toml").read_text())
        rows = {row["name"]: row for row in doc["devices"]}
        assert set(rows) == {d.name for d in site.devices}
        for name, row in rows.items():
            assert row["listen_host"] == lan.address(site.name), name
            assert row["lnd"]["rest_host"] == lan.gateway, name
            hosts = {addr.split("/")[2] for addr in row["bootstrap"]}
            assert all(ipaddress.IPv4Address(h) in lan.subnet for h in hosts), (name, hosts)
            assert lan.address(uname) in hosts, name  # its site's utility host: elsewhere


async def test_every_replica_of_a_site_converges(run: Run) -> None:
    scenario, _, _, result, _ = run
    for site in scenario.sites:
        digests = result.digests[site.name]
        assert len(digests) == 1 + len(site.devices), digests
        assert len(set(digests.values())) == 1, digests


async def test_every_invoice_is_paid_once(run: Run) -> None:
    scenario, _, stack, result, _ = run
    status = {(s["site"], s["device"], s["period"]): s for s in result.invoice_status}
    owing = set()
    for site in scenario.sites:
        entries = await utility_log(scenario, result.work_dir, site.name, result.sites[site.name])
        for d in site.devices:
            if bill(entries, device=d.index, period=0, tariff=scenario.tariff).amount_msat:
                owing.add((site.name, d.index, 0))
        invoices = {e.body.payment_hash for e in entries if isinstance(e.body, Invoice)}
        paid = [e.body.payment_hash for e in entries if isinstance(e.body, Payment)]
        assert len(set(paid)) == len(paid), site.name  # never twice
        assert invoices <= set(paid), site.name
    assert set(status) == owing
    assert len(owing) >= 3  # the critical fridge always imports; most others too
    async with stack.client(scenario.utility.name) as utility:
        for s in result.invoice_status:
            assert s["collection"] == "paid", s
            invoice = await utility.lookup_invoice(s["payment_hash"])
            assert invoice.state is InvoiceState.SETTLED
            assert invoice.amt_paid_msat == s["amount_msat"]


async def test_lnd_and_the_log_agree_to_the_msat(run: Run) -> None:
    scenario, _, stack, result, before = run
    checked = await check_money(scenario, stack, result, before)
    assert checked.ok, str(checked)
    assert checked.payments >= 3
