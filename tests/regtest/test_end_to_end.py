"""The mission end to end: one utility, two sites of one owner with three devices
each, two billing periods; every agent and the utility a separate OS process,
talking only through libp2p and Lightning, each with its own lnd on one regtest
chain and its own SQLite log (the two-site stack ``two_sites_stack``, with the
other modules that run this scenario). The scenario is deployed as files with
fresh keys and run as the demo runs it (:func:`p2pgrid.launcher.run_deployment`):
``p2pgrid agent run`` per device, the utility from the same ``utility.toml``;
interval 0 is the launcher's, once every process is ready (``--await-start``),
not the files' lead (the demo's test runs on that).

Asserts that shares, carry-overs and curtailments happen and are in every
replica; that every invoice is paid exactly once over Lightning except the one
the utility overcharges (the test runs ``p2pgrid.testing.overcharge`` as the
utility: an invoicer that bills that one invoice 10 % above the log), which is disputed and
not paid; and that lnd and the log agree to the msat (:func:`p2pgrid.reconcile.reconcile`).
"""

from __future__ import annotations

import pytest

from p2pgrid.demo import check_money, site_entries, snapshots
from p2pgrid.launcher import (
    RunResult,
    UtilityCommand,
    run_deployment,
)
from p2pgrid.ledger import (
    CarryOver,
    Curtailment,
    Dispute,
    Entry,
    Invoice,
    Payment,
    Sale,
    Share,
    SiteShare,
    SiteShareIn,
    bill,
)
from p2pgrid.ledger.proof import parse_proof
from p2pgrid.lightning import InvoiceState
from p2pgrid.reconcile import NodeSnapshot
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from tests.regtest.conftest import TWO_SITES
from tests.regtest.deployed import deploy
from tests.regtest.key_material import (
    deployment_secrets,
    files_under,
    macaroon_secrets,
    scan,
    scenario_secrets,
)

SCENARIO = TWO_SITES
OVERCHARGED = ("store-1", 0, 1)  # the fridge's invoice of period 1: it always imports
#: The utility of the run: billing the OVERCHARGED invoice 10 % above the log.
OVERCHARGING_UTILITY = UtilityCommand(
    module="p2pgrid.testing.overcharge",
    args=("--overcharge", "{}:{}:{}:10".format(*OVERCHARGED)),
)


async def utility_log(scenario: Scenario, result: RunResult, site: str) -> list[Entry]:
    """The utility's replica of ``site`` (its key: the deployment's, fresh)."""
    return (await site_entries(scenario, result))[result.sites[site].site_hash]


@pytest.fixture(scope="module")
async def run(
    two_sites_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot]]:
    tmp = tmp_path_factory.mktemp("e2e")
    scenario = load_scenario(SCENARIO)
    stack = two_sites_stack
    before = await snapshots(scenario, stack)
    deployment = await deploy(SCENARIO, stack, tmp / "run")
    result = await run_deployment(deployment, utility=OVERCHARGING_UTILITY, start_when_ready=True)
    return scenario, stack, result, before


async def test_every_replica_of_a_site_converges(run: tuple[Scenario, Stack, RunResult]) -> None:
    scenario, _, result, _ = run
    for site in scenario.sites:
        digests = result.digests[site.name]
        assert len(digests) == 1 + len(site.devices), digests
        assert len(set(digests.values())) == 1, digests


async def test_shares_carry_overs_and_curtailments_are_logged(
    run: tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot]],
) -> None:
    scenario, _, result, _ = run
    for site in scenario.sites:
        entries = await utility_log(scenario, result, site.name)
        kinds = {type(e.body) for e in entries}
        assert {Share, CarryOver, Curtailment} <= kinds, (site.name, kinds)
        producers = [d for d in site.devices if d.meter.kind == "solar"]
        if producers:  # the solar inverter sold energy to its neighbours
            sales = [e for e in entries if isinstance(e.body, Sale)]
            assert sales, site.name
            assert {e.body.seller for e in sales} == {d.index for d in producers}
        for e in entries:
            if isinstance(e.body, Share):
                assert parse_proof(e.body.memo) is not None  # the payment proof is logged
    # Network to network: a device of one store got budget from the other store.
    site_shares = {}
    for site in scenario.sites:
        entries = await utility_log(scenario, result, site.name)
        site_shares[site.name] = (
            [e for e in entries if isinstance(e.body, SiteShare)],
            [e for e in entries if isinstance(e.body, SiteShareIn)],
        )
    given = sum(len(out) for out, _ in site_shares.values())
    received = sum(len(into) for _, into in site_shares.values())
    assert given == received > 0
    reports = result.reports
    assert sum(r["site_shares_received_msat"] for r in reports.values()) > 0
    assert sum(r["shares_received_msat"] for r in reports.values()) > 0
    assert sum(r["curtailed_intervals"] for r in reports.values()) > 0


async def test_each_invoice_is_paid_once_and_the_wrong_one_disputed(
    run: tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot]],
) -> None:
    scenario, stack, result, _ = run
    status = {(s["site"], s["device"], s["period"]): s for s in result.invoice_status}
    owing = set()  # (site, device, period) with grid energy to pay for, by the log
    for site in scenario.sites:
        entries = await utility_log(scenario, result, site.name)
        for d in site.devices:
            for p in range(scenario.periods):
                if bill(entries, device=d.index, period=p, tariff=scenario.tariff).amount_msat:
                    owing.add((site.name, d.index, p))
    assert set(status) == owing
    assert OVERCHARGED in owing
    assert len(owing) >= 6  # the critical fridge always imports; most others too
    for key, s in status.items():
        assert s["collection"] == ("open" if key == OVERCHARGED else "paid"), key
    # Each agent's periods went open -> closing -> closed -> settled (an invoice
    # paid, disputed, or none owed).
    for site in scenario.sites:
        for d in site.devices:
            states = result.reports[d.name]["period_states"]
            assert states == {str(p): "settled" for p in range(scenario.periods)}, d.name
    for site in scenario.sites:
        entries = await utility_log(scenario, result, site.name)
        invoices = {e.body.payment_hash: e for e in entries if isinstance(e.body, Invoice)}
        payments = [e.body for e in entries if isinstance(e.body, Payment)]
        assert len({p.payment_hash for p in payments}) == len(payments)  # never twice
        disputes = [e for e in entries if isinstance(e.body, Dispute)]
        if site.name == OVERCHARGED[0]:
            [dispute] = disputes
            target = next(e for e in invoices.values() if e.seq == dispute.body.target_seq)
            assert (target.body.device, target.period) == OVERCHARGED[1:]
            assert target.body.payment_hash not in {p.payment_hash for p in payments}
        else:
            assert disputes == []
        # Payments that are not an invoice's pay a neighbour's energy: one per sale.
        sales = [e.body for e in entries if isinstance(e.body, Sale)]
        assert sorted(p.amount_msat for p in payments if p.payment_hash not in invoices) == sorted(
            s.amount_msat for s in sales
        )
    async with stack.client(scenario.utility.name) as utility:
        for s in result.invoice_status:
            invoice = await utility.lookup_invoice(s["payment_hash"])
            paid = s["collection"] == "paid"
            assert invoice.state is (InvoiceState.SETTLED if paid else InvoiceState.OPEN)
            assert invoice.amt_paid_msat == (s["amount_msat"] if paid else 0)


async def test_lnd_and_the_log_agree_to_the_msat(
    run: tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot]],
) -> None:
    scenario, stack, result, before = run
    checked = await check_money(scenario, stack, result, before)
    assert checked.ok, str(checked)
    assert checked.payments >= 6


async def test_no_key_material_in_any_file_of_the_run(
    run: tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot]],
) -> None:
    """Keys and macaroons never reach a log, a report, a database or a deployment
    file but their own key files."""
    scenario, stack, result, _ = run
    macaroons = [stack.endpoint(name).macaroon for name in scenario.lnd_nodes]
    keys = result.work_dir / "keys"
    needles = deployment_secrets(keys) + scenario_secrets(scenario) + macaroon_secrets(macaroons)
    assert len(deployment_secrets(keys)) == 2 * (
        2 + len(scenario.sites) + len(scenario.lnd_nodes) - 1
    )
    files = [f for f in files_under(result.work_dir) if keys not in f.parents]
    files += files_under(stack.config.dir, logs_only=True)
    assert any(f.suffix == ".log" for f in files)
    assert scan(files, needles) == []
