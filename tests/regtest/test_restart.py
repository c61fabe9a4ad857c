"""Agents killed with SIGKILL and started again on the same files, mid-run.

The two-site scenario, deployed as files and run by ``p2pgrid utility run`` and
``p2pgrid agent run`` (:func:`p2pgrid.launcher.run_deployment`, as the demo does,
interval 0 the launcher's once all are ready: ``--await-start``, also for the
restarted agents), runs on the two-site stack (``two_sites_stack``, with the other
modules that run this scenario); while it runs, the fridge
of store 1 is killed mid-period 0 and started again (it misses the intervals
that pass while it is down), and the hvac of store 2 is killed right after the
utility issued its invoice of period 0 and started again (it pays that invoice
once restarted). Asserted against lnd itself (the reconciliation checker: every
payment and settled invoice in the log, nothing paid twice, nothing in flight)
and every replica: one digest per site, no interval read twice, every invoice
paid, every period settled.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from p2pgrid.demo import check_money, snapshots
from p2pgrid.launcher import Running, RunResult, run_deployment
from p2pgrid.ledger import Entry, Invoice, LogStore, MeterReading, Payment
from p2pgrid.lightning import InvoiceState
from p2pgrid.poll import wait_until
from p2pgrid.reconcile import NodeSnapshot
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from tests.regtest.conftest import TWO_SITES
from tests.regtest.deployed import deploy

SCENARIO = TWO_SITES
MID_PERIOD = "s1-fridge"
AFTER_INVOICE = ("store-2", "s2-hvac", 1)  # site, device, index


async def _disrupt(running: Running) -> None:
    await running.until(2, offset_s=0.3)  # mid-period 0, during its third interval
    await running.restart(MID_PERIOD)
    site, name, index = AFTER_INVOICE

    async def invoiced() -> bool:
        await running.utility.send("status")
        rows: list[dict[str, Any]] = (await running.utility.expect("status"))["invoices"]
        return any((r["site"], r["device"], r["period"]) == (site, index, 0) for r in rows)

    await wait_until(invoiced, timeout_s=90, what=f"the invoice of {name} for period 0")
    await running.restart(name)


@pytest.fixture(scope="module")
async def run(
    two_sites_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot]]:
    tmp = tmp_path_factory.mktemp("restart")
    scenario = load_scenario(SCENARIO)
    stack = two_sites_stack
    before = await snapshots(scenario, stack)
    deployment = await deploy(SCENARIO, stack, tmp / "run")
    result = await run_deployment(deployment, during=_disrupt, start_when_ready=True)
    return scenario, stack, result, before


Run = tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot]]


async def replica_entries(result: RunResult, site: str, path: Path) -> list[Entry]:
    """The entries of one replica of ``site`` (its key: the deployment's, fresh)."""
    async with await LogStore.open(path, result.sites[site], name=f"check-{path.stem}") as store:
        return await store.entries()


async def test_restarted_agents_rejoin_and_replicas_agree(run: Run) -> None:
    scenario, _, result, _ = run
    for site in scenario.sites:
        digests = result.digests[site.name]
        assert len(digests) == 1 + len(site.devices), digests
        assert len(set(digests.values())) == 1, digests
    fridge = result.reports[MID_PERIOD]
    assert fridge["resumed_intervals"] >= 2  # read before the kill, not read again
    assert fridge["intervals"] + fridge["resumed_intervals"] + fridge["missed_intervals"] == (
        scenario.periods * scenario.intervals_per_period
    )
    hvac = result.reports[AFTER_INVOICE[1]]
    assert hvac["resumed_intervals"] >= scenario.intervals_per_period


async def test_no_interval_is_read_twice_in_any_replica(run: Run) -> None:
    scenario, _, result, _ = run
    for site in scenario.sites:
        paths = [result.work_dir / d.name / f"{d.name}.db" for d in site.devices]
        paths.append(
            result.work_dir / scenario.utility.name / f"{scenario.utility.name}-{site.name}.db"
        )
        for path in paths:
            entries = await replica_entries(result, site.name, path)
            reads = Counter(
                (e.author, e.body.interval_start_ms)
                for e in entries
                if isinstance(e.body, MeterReading)
            )
            assert reads, path
            assert max(reads.values()) == 1, path


async def test_every_invoice_is_paid_once_and_every_period_settled(run: Run) -> None:
    scenario, stack, result, _ = run
    assert result.invoice_status
    for s in result.invoice_status:
        assert s["collection"] == "paid", s
    site, name, index = AFTER_INVOICE
    assert any(
        (s["site"], s["device"], s["period"]) == (site, index, 0) for s in result.invoice_status
    )
    # The restarted hvac settled period 0 after its restart: its own report says so.
    assert result.reports[name]["period_states"]["0"] == "settled"
    for d in (s for site_ in scenario.sites for s in site_.devices):
        assert set(result.reports[d.name]["period_states"].values()) == {"settled"}, d.name
    async with stack.client(scenario.utility.name) as utility:
        for s in result.invoice_status:
            invoice = await utility.lookup_invoice(s["payment_hash"])
            assert invoice.state is InvoiceState.SETTLED
            assert invoice.amt_paid_msat == s["amount_msat"]
    for site_ in scenario.sites:
        path = result.work_dir / scenario.utility.name / f"{scenario.utility.name}-{site_.name}.db"
        entries = await replica_entries(result, site_.name, path)
        invoices = {e.body.payment_hash for e in entries if isinstance(e.body, Invoice)}
        paid = [e.body.payment_hash for e in entries if isinstance(e.body, Payment)]
        assert len(paid) == len(set(paid))  # never twice
        assert invoices <= set(paid)  # none unpaid


async def test_lnd_and_every_log_agree_after_the_restarts(run: Run) -> None:
    scenario, stack, result, before = run
    checked = await check_money(scenario, stack, result, before)
    assert checked.ok, str(checked)
