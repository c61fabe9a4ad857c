"""The site's pooled auction end to end: two solar roofs and two consumers of one
site (``pooled_site.toml``), every agent its own OS process with its own lnd on
one regtest chain (the pooled stack it shares with
``test_pay_on_delivery.py``), talking only through libp2p and Lightning.

Asserts that in one round both producers are paid by the buyers at the one
clearing price that any replica recomputes from the log (orders, ``cleared``
entries, sales: :func:`p2pgrid.agent.rounds.check_pooled_sales`), and that lnd
and the log agree to the msat (:func:`p2pgrid.reconcile.reconcile`).

A neighbouring site's consumer (``street``) buys what the roofs have left after
their round (docs/market.md 6.3): both sites log their side (``site_sale``),
every replica's check passes (:func:`p2pgrid.agent.transit.check_site_sales`),
and the utility's invoice of that consumer for the period carries the grid fee
on that energy, paid, with lnd and both logs agreeing to the msat. The consumer
is killed (SIGKILL, :mod:`p2pgrid.testing.crash`) in the middle of its first
payment to a roof, before any receipt, and started again by the launcher on
the same files: restarted, it logs the purchase (``site_sale`` + ``payment``)
once and hands the roof its receipt, so the block's log credits the roof once
(checked with the fault suite's checker too).

Then, on the same stack, the site again (another seed) with a day of meter
history, every device's leftover policy ``sell`` and the EV's allocation short
of its forecast: near the period's end the EV buys leftover allowance from a
roof with real sats (docs/market.md, section 2.9), the roof logs the
``allowance_sale``, the EV the ``payment``, and lnd and the log agree to the msat.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from p2pgrid.agent.rounds import check_pooled_sales, round_book
from p2pgrid.agent.transit import check_site_sales
from p2pgrid.billing import grid_fee_msat, invoice_memo
from p2pgrid.demo import check_money, snapshots
from p2pgrid.launcher import AgentCommand, Running, RunResult, run_deployment
from p2pgrid.ledger import (
    AllowanceSale,
    Author,
    Cleared,
    Entry,
    Invoice,
    Membership,
    Order,
    Payment,
    Sale,
    SaleSide,
    Share,
    SiteSale,
    bill,
    fold,
)
from p2pgrid.lightning import InvoiceState
from p2pgrid.reconcile import NodeSnapshot, Reconciliation
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from tests.faults.checker import Verdict, check_trial, utility_log
from tests.regtest.conftest import POOLED
from tests.regtest.deployed import deploy

SCENARIO = POOLED
Run = tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot]]
#: A run, the exit code of each device killed in it and the fault suite checker's
#: verdict (taken at once: a later run on the stack changes its nodes).
Killed = tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot], dict[str, int], Verdict]
CRASH = "p2pgrid.testing.crash"
#: How long a crashing process may take to reach its crash point.
CRASH_WAIT_S = 120.0
READINGS_WAIT_S = 10.0
#: The street's consumer dies in the middle of its first payment to a roof.
ACROSS_DIES = ("heat-pump", "--mid-payment", "site_sale:0")
#: The allowance run's weights (budget 2 000 000 msat: 100 000 msat each): the
#: roofs use nothing, the HVAC about its allocation, the EV more than its own.
ALLOWANCE_WEIGHTS = {"roof-a": 6, "roof-b": 1, "hvac": 6, "ev": 7}


def allowance_scenario(path: Path) -> Path:
    """``pooled_site.toml`` a day later (the forecast has a day of history), with
    every device selling its leftover and the weights above."""
    text = SCENARIO.read_text()
    # the block alone: no neighbouring site (the first run's) to trade with
    text = text[: text.index('[[sites]]\nname = "street"')]
    text = text.replace('trade_sites = ["block", "street"]\n', "")
    text = text.replace("model_start_interval = 48 ", "model_start_interval = 144")
    text = text.replace('seed = "p2pgrid pooled test block"', 'seed = "p2pgrid allowance block"')
    blocks = text.split("[[sites.devices]]")
    for i, block in enumerate(blocks[1:], start=1):
        name = re.search(r'name = "([^"]+)"', block)
        assert name is not None
        weight = ALLOWANCE_WEIGHTS[name.group(1)]
        block = re.sub(r"weight = \d+", f'weight = {weight}\nleftover = "sell"', block)
        blocks[i] = block
    path.write_text("[[sites.devices]]".join(blocks))
    return path


@pytest.fixture(scope="module")
def stack(pooled_stack: Stack) -> Stack:
    """The pooled stack of ``tests/regtest`` (shared with ``test_pay_on_delivery.py``)."""
    return pooled_stack


def short_wait(source: Path, path: Path) -> Path:
    """``source`` with a short readings wait: a killed device misses intervals, and
    the utility waits that long for their readings before it invoices."""
    text = source.read_text()
    path.write_text(
        text.replace("[utility]\n", f"[utility]\nreadings_wait_s = {READINGS_WAIT_S}\n", 1)
    )
    assert load_scenario(path).utility.readings_wait_s == READINGS_WAIT_S
    return path


async def run_with_kills(
    stack: Stack, path: Path, work: Path, kills: tuple[tuple[str, str, str], ...]
) -> Killed:
    """Deploy ``path`` in ``work`` and run it with each ``(device, option, at)`` of
    ``kills`` dying there (:mod:`p2pgrid.testing.crash`) and started again by the
    launcher on the same files (its exit code kept)."""
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
    verdict = await check_trial(scenario, stack, result.work_dir, before, result.sites)
    return scenario, stack, result, before, exits, verdict


@pytest.fixture(scope="module")
async def killed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Killed:
    """The run, with the street's consumer killed mid-payment across."""
    tmp = tmp_path_factory.mktemp("pooled")
    path = short_wait(SCENARIO, tmp / "pooled.toml")
    return await run_with_kills(stack, path, tmp / "run", (ACROSS_DIES,))


@pytest.fixture(scope="module")
def run(killed: Killed) -> Run:
    scenario, stack, result, before, _, _ = killed
    return scenario, stack, result, before


@pytest.fixture(scope="module")
async def allowance_run(
    stack: Stack, run: Run, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Run, Reconciliation]:
    """After ``run`` (one run at a time on the stack)."""
    tmp = tmp_path_factory.mktemp("allowance")
    path = allowance_scenario(tmp / "allowance.toml")
    scenario = load_scenario(path)
    before = await snapshots(scenario, stack)
    result = await run_deployment(await deploy(path, stack, tmp / "run"), start_when_ready=True)
    money = await check_money(scenario, stack, result, before)
    return (scenario, stack, result, before), money


def _paid_rounds(entries: list[Entry], site_id: str) -> dict[tuple[int, int], set[int]]:
    """Per round: the sellers whose trades with a buyer of the round were paid
    (a ``sale`` of that buyer that is the trade)."""
    sales = Counter(
        (e.author.index, e.period, e.body.seller, e.body.energy_wh, e.body.amount_msat)
        for e in entries
        if isinstance(e.body, Sale)
    )
    paid: dict[tuple[int, int], set[int]] = {}
    for e in entries:
        if not isinstance(e.body, Cleared):
            continue
        book = round_book(
            entries, site_id, period=e.period, interval=e.body.interval, devices=e.body.devices
        )
        for t in book.clearing.trades:
            key = (e.author.index, e.period, t.seller.device, t.energy_wh, t.amount_msat)
            if t.buyer.device == e.author.index and sales[key] > 0:
                sales[key] -= 1
                paid.setdefault((e.period, e.body.interval), set()).add(t.seller.device)
    return paid


async def test_both_producers_are_paid_in_one_round_as_the_log_clears_it(run: Run) -> None:
    scenario, _, result, _ = run
    site = scenario.sites[0]
    entries = await utility_log(scenario, result.work_dir, site.name, result.identity(site))
    site_id = result.identity(site).site_id
    assert check_pooled_sales(entries, site_id) == []
    orders = {e.author.index for e in entries if isinstance(e.body, Order)}
    assert orders == {0, 1, 2, 3}  # both roofs asked, both consumers bid
    paid = _paid_rounds(entries, site_id)
    assert any(sellers == {0, 1} for sellers in paid.values()), paid
    # Every sale of the run is a trade of a logged clearing, and both roofs sold.
    assert {e.body.seller for e in entries if isinstance(e.body, Sale)} == {0, 1}
    reports = result.reports
    assert reports["hvac"]["bought_wh"] + reports["ev"]["bought_wh"] > 0
    assert reports["roof-a"]["offered_wh"] > 0
    assert reports["roof-b"]["offered_wh"] > 0


async def test_lnd_and_the_log_agree_to_the_msat(run: Run) -> None:
    scenario, stack, result, before = run
    checked = await check_money(scenario, stack, result, before)
    assert checked.ok, str(checked)
    sales = [
        e
        for e in await utility_log(
            scenario, result.work_dir, scenario.sites[0].name, result.identity(scenario.sites[0])
        )
        if isinstance(e.body, Sale)
    ]
    assert checked.payments >= len(sales) >= 2


def _membership(run: Run, name: str, entries: list[Entry]) -> Membership:
    scenario, _, result, _ = run
    site = next(s for s in scenario.sites if s.name == name)
    membership = Membership(result.identity(site))
    membership.learn_from(entries)
    return membership


async def test_a_device_of_another_site_buys_and_pays_the_grid_fee_on_its_invoice(
    run: Run,
) -> None:
    scenario, stack, result, _ = run
    block_log = await utility_log(scenario, result.work_dir, "block", result.sites["block"])
    street_log = await utility_log(scenario, result.work_dir, "street", result.sites["street"])
    block = _membership(run, "block", block_log)
    street = _membership(run, "street", street_log)
    # The heat pump bought from the block's roofs; both logs show their side.
    bought = [
        e.body
        for e in street_log
        if isinstance(e.body, SiteSale) and e.body.side == SaleSide.BOUGHT
    ]
    sold = [
        e.body for e in block_log if isinstance(e.body, SiteSale) and e.body.side == SaleSide.SOLD
    ]
    assert bought, "the heat pump bought nothing across"
    assert {b.other_site for b in bought} == {block.site_hash}
    assert {b.other_device for b in bought} <= {0, 1}  # the roofs
    assert sorted(b.payment_hash for b in bought) == sorted(s.payment_hash for s in sold)
    assert check_site_sales(street_log, street.site_hash, {block.site_hash: block}) == []
    assert check_site_sales(block_log, block.site_hash, {street.site_hash: street}) == []
    # The utility's invoice of the period carries the grid fee on that energy, paid.
    transit = sum(b.energy_wh for b in bought)
    [invoice] = [e for e in street_log if isinstance(e.body, Invoice)]
    assert isinstance(invoice.body, Invoice)
    due = bill(street_log, device=0, period=invoice.period, tariff=scenario.tariff)
    assert (due.transit_wh, due.grid_fee_msat) == (
        transit,
        grid_fee_msat(scenario.tariff, transit),
    )
    assert due.grid_fee_msat > 0
    assert invoice.body.amount_msat == due.amount_msat
    async with stack.client(scenario.utility.name) as utility:
        found = await utility.lookup_invoice(invoice.body.payment_hash.hex())
    assert found.memo == invoice_memo(
        street.site.site_id,
        0,
        invoice.period,
        transit_wh=transit,
        grid_fee_msat=due.grid_fee_msat,
    )
    assert found.amt_paid_msat == due.amount_msat
    paid = {e.body.payment_hash for e in street_log if isinstance(e.body, Payment)}
    assert invoice.body.payment_hash in paid
    assert all(e.author == Author.device(0) for e in street_log if isinstance(e.body, SiteSale))


async def test_a_short_device_buys_leftover_allowance_from_a_roof_with_real_sats(
    allowance_run: tuple[Run, Reconciliation],
) -> None:
    (scenario, _, result, _), money = allowance_run
    [site] = scenario.sites
    entries = await utility_log(scenario, result.work_dir, site.name, result.identity(site))
    sales = [e for e in entries if isinstance(e.body, AllowanceSale)]
    assert sales, "no allowance was sold"
    # every device sells its leftover, and the whole period is in the window: what
    # would be spare is set aside for sale, so nobody gives it away as a share
    assert not [e for e in entries if isinstance(e.body, Share)]
    payments = {e.body.payment_hash: e for e in entries if isinstance(e.body, Payment)}
    view = fold(entries)
    period = sales[0].period
    for sale in sales:
        body = sale.body
        assert isinstance(body, AllowanceSale)
        assert sale.period == period
        assert (sale.author.index, body.buyer) == (0, 3)  # roof-a (lowest index) to the EV
        assert body.price_msat == -(-body.allowance_msat * 80 // 100)  # the default 80 %
        paid = payments[body.payment_hash]  # the EV's payment of the same hash
        assert isinstance(paid.body, Payment)
        assert (paid.author.index, paid.body.amount_msat) == (3, body.price_msat)
    sold = sum(s.body.allowance_msat for s in sales if isinstance(s.body, AllowanceSale))
    price = sum(s.body.price_msat for s in sales if isinstance(s.body, AllowanceSale))
    roof, ev = view.account(0, period), view.account(3, period)
    assert (roof.allowance_sold_msat, ev.allowance_bought_msat) == (sold, sold)
    assert (roof.allowance_earned_msat, ev.allowance_paid_msat) == (price, price)
    reports = result.reports
    assert reports["ev"]["allowance_bought_msat"] == sold
    assert reports["roof-a"]["allowance_sold_msat"] == sold
    assert money.ok, str(money)  # each price: the EV's lnd payment, the roof's settled invoice


async def test_a_buyer_across_killed_mid_payment_gets_its_sale_logged_once(killed: Killed) -> None:
    scenario, stack, result, before, exits, verdict = killed
    name = ACROSS_DIES[0]
    assert exits == {name: -signal.SIGKILL}
    assert "is with lnd, not in the log" in (result.work_dir / f"{name}.log").read_text()
    assert verdict.ok, "\n".join(verdict.problems)  # also: each purchase sold once
    block_log = await utility_log(scenario, result.work_dir, "block", result.sites["block"])
    street_log = await utility_log(scenario, result.work_dir, "street", result.sites["street"])

    def sides(log: list[Entry], side: SaleSide) -> Counter[bytes]:
        return Counter(
            e.body.payment_hash for e in log if isinstance(e.body, SiteSale) and e.body.side == side
        )

    bought, sold = sides(street_log, SaleSide.BOUGHT), sides(block_log, SaleSide.SOLD)
    paid = Counter(e.body.payment_hash for e in street_log if isinstance(e.body, Payment))
    settled: set[bytes] = set()
    for roof in ("roof-a", "roof-b"):
        old = {i.payment_hash for i in before[roof].invoices}
        async with stack.client(roof) as client:
            settled |= {
                bytes.fromhex(i.payment_hash)
                for i in await client.list_invoices()
                if i.payment_hash not in old
                and i.state is InvoiceState.SETTLED
                and i.memo.startswith("p2pgrid site sale ")
            }
    assert settled, "the heat pump bought nothing across"
    assert set(bought) == set(sold) == settled
    for payment_hash in settled:
        counts = (bought[payment_hash], sold[payment_hash], paid[payment_hash])
        assert counts == (1, 1, 1), payment_hash.hex()
