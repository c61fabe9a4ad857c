"""The utility and agents killed with SIGKILL midway through invoicing and paying.

One run of the two-site scenario on the two-site stack (``two_sites_stack``, with
the other modules that run that scenario), deployed as files
and run by ``p2pgrid utility run`` / ``agent run`` (interval 0 the launcher's once
all are ready: ``--await-start``; the crashing processes:
:mod:`p2pgrid.testing.crash` on the same files), four kills, each followed by a
start of the product's command on the same files (:class:`p2pgrid.launcher.Running`):

- the utility dies mid-invoicing of period 0: store 1's second invoice is on
  its lnd, not in its log (the first one is); :mod:`p2pgrid.testing.crash` kills
  it at exactly that point. Restarted, it must issue the missing invoices once
  (the same lnd invoice, by its derived preimage), never a second invoice or budget;
- the utility is killed at the end of period 1 (the last), while it waits for
  the period's last readings or invoices; restarted, it invoices that period once;
- the fridge of store 1 dies during its first share payment of period 0 (intent
  recorded, payment with lnd, nothing logged), and the hvac of store 2 during the
  payment of its period-0 invoice. Restarted, each resolves the payment by its
  hash against lnd and logs it once if lnd sent it (the share's requester may
  have cancelled its invoice first, when its giver went silent: then it failed
  and nothing is logged); neither pays it twice.

The scenario is the shipped two-site one with a short readings wait (10 s): a
device that is down at a period's end costs the run that long, not a minute.

Asserted against every lnd and every replica with the fault suite's checker
(:func:`tests.faults.checker.check_trial`: one digest per site, no reading twice,
every invoice paid once, every period settled, nothing in flight, lnd and the log
agree to the msat) and, beyond it: every invoice the utility's lnd issued in the
run is in the log, one per (site, device, period); one budget per site and period;
the payments in flight at the kills are logged exactly once.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter

import pytest

from p2pgrid.billing import invoice_memo
from p2pgrid.demo import snapshots
from p2pgrid.launcher import (
    AgentCommand,
    Running,
    RunResult,
    UtilityCommand,
    run_deployment,
)
from p2pgrid.ledger import Budget, Invoice, Payment, Role, Share, SiteShare
from p2pgrid.ledger.proof import parse_proof
from p2pgrid.lightning import InvoiceState, PaymentStatus
from p2pgrid.reconcile import NodeSnapshot
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from tests.faults.checker import check_trial, replica_entries, replica_paths
from tests.regtest.conftest import TWO_SITES
from tests.regtest.deployed import deploy

SHIPPED = TWO_SITES
READINGS_WAIT_S = 10.0
CRASH = "p2pgrid.testing.crash"
MID_INVOICING = ("store-1", 0, 2)  # site, period, the invoice it dies before logging
MID_SHARE = ("s1-fridge", "share", 0)  # device, payment kind, period
MID_INVOICE_PAYMENT = ("s2-hvac", "invoice", 0)
#: How long a crashing process may take to reach its crash point.
CRASH_WAIT_S = 120.0
_DIED = re.compile(r"TEST: killing this process \(SIGKILL\): payment ([0-9a-f]{16})")


async def _disrupt(running: Running, exits: dict[str, int]) -> None:
    async def restart_when_dead(name: str) -> None:
        exits[name] = await running.exited(name, CRASH_WAIT_S)
        await running.restart(name)

    utility = running.scenario.utility.name
    async with asyncio.TaskGroup() as kills:
        for name, _, _ in (MID_SHARE, MID_INVOICE_PAYMENT):
            kills.create_task(restart_when_dead(name))
        exits[utility] = await running.exited(utility, CRASH_WAIT_S)
        await running.restart_utility()
        # Period 1 (the last) has ended: the utility waits for its last readings
        # or invoices them.
        await running.until(running.scenario.intervals_per_period * 2, offset_s=0.3)
        await running.restart_utility()


Run = tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot], dict[str, int]]


@pytest.fixture(scope="module")
async def run(two_sites_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("midway")
    path = tmp / "scenario.toml"
    path.write_text(
        SHIPPED.read_text().replace(
            "[utility]\n", f"[utility]\nreadings_wait_s = {READINGS_WAIT_S}\n", 1
        )
    )
    scenario = load_scenario(path)
    assert scenario.utility.readings_wait_s == READINGS_WAIT_S
    assert scenario.lnd_nodes == load_scenario(SHIPPED).lnd_nodes  # the stack's nodes
    stack = two_sites_stack
    exits: dict[str, int] = {}

    async def disrupt(running: Running) -> None:
        await _disrupt(running, exits)

    site, period, n = MID_INVOICING
    before = await snapshots(scenario, stack)
    deployment = await deploy(path, stack, tmp / "run")
    result = await run_deployment(
        deployment,
        utility=UtilityCommand(CRASH, ("--after-invoices", f"{site}:{period}:{n}")),
        agents={
            name: AgentCommand(CRASH, ("--mid-payment", f"{kind}:{p}"))
            for name, kind, p in (MID_SHARE, MID_INVOICE_PAYMENT)
        },
        during=disrupt,
        start_when_ready=True,
    )
    return scenario, stack, result, before, exits


def _died_paying(result: RunResult, name: str) -> str:
    """The hash prefix of the payment ``name`` was killed in (from its first log)."""
    found = _DIED.search((result.work_dir / f"{name}.log").read_text())
    assert found, f"{name} did not die mid-payment"
    return found.group(1)


async def test_each_process_died_where_it_was_meant_to(run: Run) -> None:
    scenario, _, result, _, exits = run
    assert exits == {
        scenario.utility.name: -signal.SIGKILL,
        MID_SHARE[0]: -signal.SIGKILL,
        MID_INVOICE_PAYMENT[0]: -signal.SIGKILL,
    }
    utility_log = (result.work_dir / f"{scenario.utility.name}.log").read_text()
    assert "is on lnd, not in the log" in utility_log
    for name, kind, period in (MID_SHARE, MID_INVOICE_PAYMENT):
        log = (result.work_dir / f"{name}.log").read_text()
        assert re.search(rf"intent {_died_paying(result, name)}\.\.\.: {kind}\S* \d+ msat "
                         rf"\(period {period}\) -> open", log), name  # fmt: skip


async def test_the_checker_finds_nothing_wrong(run: Run) -> None:
    scenario, stack, result, before, _ = run
    verdict = await check_trial(scenario, stack, result.work_dir, before, result.sites)
    assert verdict.ok, "\n".join(verdict.problems)
    for site in scenario.sites:
        digests = result.digests[site.name]
        assert len(digests) == 1 + len(site.devices), digests
        assert len(set(digests.values())) == 1, digests
    for d in (d for s in scenario.sites for d in s.devices):
        assert set(result.reports[d.name]["period_states"].values()) == {"settled"}, d.name


async def test_no_invoice_or_budget_is_issued_twice(run: Run) -> None:
    scenario, stack, result, before, _ = run
    logged: dict[str, bytes] = {}  # memo -> payment hash
    for site in scenario.sites:
        for name, path in replica_paths(scenario, result.work_dir, site.name).items():
            entries = await replica_entries(path, result.identity(site))
            budgets = Counter(
                e.period
                for e in entries
                if isinstance(e.body, Budget) and e.author.role is Role.UTILITY
            )
            assert budgets == dict.fromkeys(range(scenario.periods), 1), (name, budgets)
            invoices = Counter(
                (e.body.device, e.period) for e in entries if isinstance(e.body, Invoice)
            )
            assert invoices, name
            assert max(invoices.values()) == 1, (name, invoices)
            for e in entries:
                if isinstance(e.body, Invoice):
                    site_id = result.identity(site).site_id
                    logged[invoice_memo(site_id, e.body.device, e.period)] = e.body.payment_hash
    assert len(result.utility_invoices) == len(logged)  # its done line lists them all
    old = {i.payment_hash for i in before[scenario.utility.name].invoices}
    async with stack.client(scenario.utility.name) as utility:
        issued = [i for i in await utility.list_invoices() if i.payment_hash not in old]
    # Every invoice lnd issued in the run is one the log records, settled once.
    assert sorted(i.memo for i in issued) == sorted(logged)
    for i in issued:
        assert bytes.fromhex(i.payment_hash) == logged[i.memo]
        assert i.state is InvoiceState.SETTLED, i
        assert i.amt_paid_msat == i.value_msat, i


async def test_payments_in_flight_at_the_kills_are_logged_once(run: Run) -> None:
    scenario, stack, result, _, _ = run
    for name, kind, period in (MID_SHARE, MID_INVOICE_PAYMENT):
        prefix = _died_paying(result, name)
        site, device = scenario.site_of(name)
        db = result.work_dir / name / f"{name}.db"
        entries = await replica_entries(db, result.identity(site))
        hashes = []
        for e in entries:
            if e.author.role is not Role.DEVICE or e.author.index != device.index:
                continue
            if isinstance(e.body, Payment):
                hashes.append((e.body.payment_hash.hex(), e.period, "invoice"))
            elif isinstance(e.body, Share | SiteShare):
                proof = parse_proof(e.body.memo)
                assert proof is not None
                hashes.append((proof.payment_hash.hex(), e.period, "share"))
        mine = [h for h in hashes if h[0].startswith(prefix)]
        async with stack.client(name) as node:
            sent = [p for p in await node.list_payments() if p.payment_hash.startswith(prefix)]
        assert len(sent) == 1, (name, sent)
        if kind == "share" and sent[0].status is PaymentStatus.FAILED:
            # The requester, whose giver went silent, cancelled its invoice before
            # the payment arrived: nothing was paid, so nothing is logged.
            assert mine == [], (name, mine)
            continue
        assert sent[0].status is PaymentStatus.SUCCEEDED, (name, sent)
        assert len(mine) == 1, (name, mine)  # logged, once
        assert mine[0] == (sent[0].payment_hash, period, kind), name
