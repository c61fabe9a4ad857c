"""Devices killed with SIGKILL in the money paths of allowance and cross-site sales,
on the pooled stack (``pooled_stack``, shared with ``test_pooled_sales.py`` and
``test_pay_on_delivery.py``): every agent its own OS process with its own lnd,
real libp2p, real SQLite; each killed one started again on the same files by
the launcher (:meth:`p2pgrid.launcher.Running.restart`), the dying processes
being :mod:`p2pgrid.testing.crash` on the same files.

- **Allowance** (docs/market.md 2.9; ``test_pooled_sales.allowance_scenario``):
  the EV dies in the middle of its first allowance payment (intent recorded,
  payment with lnd, nothing logged, no "paid" sent to the seller), and roof-a,
  the seller, dies instead of logging the ``allowance_sale`` of the invoice it
  finds paid (at its period's close: the buyer never said so). Restarted, the
  EV resolves its payment by hash and logs it once; roof-a loads its open offer
  from its intents file and logs the sale once.
- **Across sites** (docs/market.md 6.3; ``pooled_site.toml``): the street's heat
  pump dies in the middle of its first payment to a roof of the block, before
  any receipt. Restarted, it logs the purchase (``site_sale`` + ``payment``)
  and hands the roof its receipt, so the block's log credits the roof once.

Checked with the fault suite's checker (:func:`tests.faults.checker.check_trial`:
lnd and every replica, no payment twice, nothing in flight, lnd and the logs agree
to the msat) and, beyond it: every invoice of these sales that a seller's lnd
settled in the run has exactly one sale entry and one payment entry.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest

from p2pgrid.agent.transit import check_site_sales
from p2pgrid.demo import snapshots
from p2pgrid.launcher import AgentCommand, Running, RunResult, run_deployment
from p2pgrid.ledger import AllowanceSale, Entry, Membership, Payment, SaleSide, SiteSale
from p2pgrid.lightning import InvoiceState
from p2pgrid.reconcile import NodeSnapshot
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from tests.faults.checker import check_trial, utility_log
from tests.regtest.conftest import POOLED
from tests.regtest.deployed import deploy
from tests.regtest.test_pooled_sales import allowance_scenario

CRASH = "p2pgrid.testing.crash"
#: How long a crashing process may take to reach its crash point.
CRASH_WAIT_S = 120.0
READINGS_WAIT_S = 10.0
BUYER_DIES = ("ev", "--mid-payment", "allowance:0")
SELLER_DIES = ("roof-a", "--before-entry", "allowance_sale:0")
ACROSS_DIES = ("heat-pump", "--mid-payment", "site_sale:0")

Run = tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot], dict[str, int]]


def _short_wait(source: Path, path: Path) -> Path:
    """``source`` with a short readings wait: a killed device misses intervals, and
    the utility waits that long for their readings before it invoices."""
    text = source.read_text()
    path.write_text(
        text.replace("[utility]\n", f"[utility]\nreadings_wait_s = {READINGS_WAIT_S}\n", 1)
    )
    assert load_scenario(path).utility.readings_wait_s == READINGS_WAIT_S
    return path


async def _run_with_kills(
    stack: Stack, path: Path, work: Path, kills: tuple[tuple[str, str, str], ...]
) -> Run:
    """Deploy ``path`` in ``work`` and run it with each ``(device, option, at)`` of
    ``kills`` dying there and started again (its exit code kept)."""
    scenario = load_scenario(path)
    exits: dict[str, int] = {}

    async def restart_when_dead(running: Running, name: str) -> None:
        exits[name] = await running.exited(name, CRASH_WAIT_S)
        await running.restart(name)

    async def disrupt(running: Running) -> None:
        async with asyncio.TaskGroup() as restarts:
            for name, _, _ in kills:
                restarts.create_task(restart_when_dead(running, name))

    before = await snapshots(scenario, stack)
    result = await run_deployment(
        await deploy(path, stack, work),
        agents={name: AgentCommand(CRASH, (option, at)) for name, option, at in kills},
        during=disrupt,
        start_when_ready=True,
    )
    return scenario, stack, result, before, exits


@pytest.fixture(scope="module")
async def allowance_run(pooled_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("allowance-kills")
    path = _short_wait(allowance_scenario(tmp / "allowance.toml"), tmp / "short.toml")
    return await _run_with_kills(pooled_stack, path, tmp / "run", (BUYER_DIES, SELLER_DIES))


@pytest.fixture(scope="module")
async def across_run(pooled_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("across-kills")
    path = _short_wait(POOLED, tmp / "pooled.toml")
    return await _run_with_kills(pooled_stack, path, tmp / "run", (ACROSS_DIES,))


def _first_log(result: RunResult, name: str) -> str:
    return (result.work_dir / f"{name}.log").read_text()


async def _settled(stack: Stack, node: str, memo_prefix: str, before: NodeSnapshot) -> set[bytes]:
    """The invoices of ``node`` settled in the run whose description starts so."""
    old = {i.payment_hash for i in before.invoices}
    async with stack.client(node) as client:
        return {
            bytes.fromhex(i.payment_hash)
            for i in await client.list_invoices()
            if i.payment_hash not in old
            and i.state is InvoiceState.SETTLED
            and i.memo.startswith(memo_prefix)
        }


async def test_allowance_buyer_and_seller_died_where_they_were_meant_to(allowance_run: Run) -> None:
    _, _, result, _, exits = allowance_run
    assert exits == {BUYER_DIES[0]: -signal.SIGKILL, SELLER_DIES[0]: -signal.SIGKILL}
    assert "is with lnd, not in the log" in _first_log(result, BUYER_DIES[0])
    assert "allowance_sale of period 0 is not in the log" in _first_log(result, SELLER_DIES[0])
    restarted = (result.work_dir / f"{SELLER_DIES[0]}.1.log").read_text()
    assert "is open (restored)" in restarted


async def test_each_allowance_paid_is_sold_and_paid_once_to_the_msat(allowance_run: Run) -> None:
    scenario, stack, result, before, _ = allowance_run
    verdict = await check_trial(scenario, stack, result.work_dir, before, result.sites)
    assert verdict.ok, "\n".join(verdict.problems)
    [site] = scenario.sites
    entries = await utility_log(scenario, result.work_dir, site.name, result.identity(site))
    sales = Counter(e.body.payment_hash for e in entries if isinstance(e.body, AllowanceSale))
    payments = Counter(e.body.payment_hash for e in entries if isinstance(e.body, Payment))
    settled = await _settled(stack, SELLER_DIES[0], "p2pgrid allowance ", before[SELLER_DIES[0]])
    assert settled, "no allowance invoice of the seller was paid"
    assert set(sales) == settled  # every paid invoice is a sale, and no sale is unpaid
    for payment_hash in settled:
        assert (sales[payment_hash], payments[payment_hash]) == (1, 1), payment_hash.hex()


def _membership(result: RunResult, scenario: Scenario, name: str, log: list[Entry]) -> Membership:
    site = next(s for s in scenario.sites if s.name == name)
    membership = Membership(result.identity(site))
    membership.learn_from(log)
    return membership


async def test_a_buyer_across_killed_mid_payment_gets_its_sale_logged_once(
    across_run: Run,
) -> None:
    scenario, stack, result, before, exits = across_run
    assert exits == {ACROSS_DIES[0]: -signal.SIGKILL}
    assert "is with lnd, not in the log" in _first_log(result, ACROSS_DIES[0])
    verdict = await check_trial(scenario, stack, result.work_dir, before, result.sites)
    assert verdict.ok, "\n".join(verdict.problems)
    block_log = await utility_log(scenario, result.work_dir, "block", result.sites["block"])
    street_log = await utility_log(scenario, result.work_dir, "street", result.sites["street"])
    block = _membership(result, scenario, "block", block_log)
    street = _membership(result, scenario, "street", street_log)
    assert check_site_sales(street_log, street.site_hash, {block.site_hash: block}) == []
    assert check_site_sales(block_log, block.site_hash, {street.site_hash: street}) == []

    def sides(log: list[Entry], side: SaleSide) -> Counter[bytes]:
        return Counter(
            e.body.payment_hash for e in log if isinstance(e.body, SiteSale) and e.body.side == side
        )

    bought, sold = sides(street_log, SaleSide.BOUGHT), sides(block_log, SaleSide.SOLD)
    paid = Counter(e.body.payment_hash for e in street_log if isinstance(e.body, Payment))
    settled: set[bytes] = set()
    for roof in ("roof-a", "roof-b"):
        settled |= await _settled(stack, roof, "p2pgrid site sale ", before[roof])
    assert settled, "the heat pump bought nothing across"
    assert set(bought) == set(sold) == settled
    for payment_hash in settled:
        counts = (bought[payment_hash], sold[payment_hash], paid[payment_hash])
        assert counts == (1, 1, 1), payment_hash.hex()
