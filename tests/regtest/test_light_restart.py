"""A light device's gateway killed (SIGKILL) and started again by the launcher
mid-period, while its fridge sells leftover allowance from the site node: one
run of ``light_site.toml`` (store-1 of the demo alone: the fridge and the hvac
light on ``store-1-node``, one gateway process for both, the EV on its own lnd)
on the two-site stack (``two_sites_stack``, whose nodes it uses), every process
the product's command, real libp2p, real SQLite, real lnd.

The fridge's allocation is far above its forecast and its leftover policy
``sell``; the EV's is short of its forecast: from the period's first interval
the EV buys the fridge's leftover allowance (docs/market.md 2.9), paying the
fridge's invoice on the site node over Lightning (EV -> utility -> site node).
In the fourth interval the launcher kills the gateway
(:meth:`p2pgrid.launcher.Running.restart`: both light devices go) and starts it
again on the same files; its devices resume from their replicas, the period
completes, the utility invoices all three devices and each pays once (the light
ones through the site node).

Checked with the fault suite's checker (:func:`tests.faults.checker.check_trial`:
one digest per site, no reading twice, every invoice settled once in the
utility's lnd, nothing paid twice or in flight on any node, lnd and the logs
agree to the msat) and, beyond it: every allowance invoice the site node
settled in the run names the fridge as its payee and has exactly one
``allowance_sale`` (by the fridge) and one ``payment`` (by the EV), and no
allowance sale is unpaid. Whether a sale's payment lands before or after the
kill, the checks are the same: a sale paid before it is in the log already, one
paid while the gateway was down or not logged at the kill is logged by the
restarted fridge at the period's close (its open offer restored from its
intents file).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from p2pgrid.agent.payguard import payee_of
from p2pgrid.demo import snapshots
from p2pgrid.launcher import Running, RunResult, run_deployment
from p2pgrid.ledger import AllowanceSale, Author, Invoice, Payment, fold
from p2pgrid.lightning import InvoiceState
from p2pgrid.market import Party
from p2pgrid.reconcile import NodeSnapshot
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from tests.faults.checker import Verdict, check_trial, utility_log
from tests.regtest.deployed import deploy

SCENARIO = Path(__file__).with_name("light_site.toml")
SELLER = "s1-fridge"  # light, sells its leftover
BUYER = "s1-ev"  # its own lnd, short
KILLED_AT = 3  # the interval whose start (+0.3 s) the gateway is killed in
ALLOWANCE_MEMO = "p2pgrid allowance "

Run = tuple[Scenario, Stack, RunResult, dict[str, NodeSnapshot], Verdict]


@pytest.fixture(scope="module")
async def run(two_sites_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("light-restart")
    scenario = load_scenario(SCENARIO)
    stack = two_sites_stack

    async def disrupt(running: Running) -> None:
        await running.until(KILLED_AT, offset_s=0.3)  # a clock tick, mid-period
        await running.restart(SELLER)  # its gateway: the hvac goes with it

    before = await snapshots(scenario, stack)
    deployment = await deploy(SCENARIO, stack, tmp / "run")
    assert deployment.processes[scenario.sites[0].site_node or ""] == (SELLER, "s1-hvac")
    result = await run_deployment(deployment, during=disrupt, start_when_ready=True)
    verdict = await check_trial(scenario, stack, result.work_dir, before, result.sites)
    return scenario, stack, result, before, verdict


async def test_the_gateway_was_killed_mid_period_and_its_devices_resumed(run: Run) -> None:
    scenario, _, result, _, _ = run
    [site] = scenario.sites
    gateway = site.site_node
    assert gateway is not None
    assert (result.work_dir / f"{gateway}.1.log").exists()  # started again once
    assert not (result.work_dir / f"{gateway}.2.log").exists()
    for device in site.light_devices:
        report = result.reports[device.name]
        assert report["resumed_intervals"] >= KILLED_AT, device.name  # read before the kill
        assert report["intervals"] + report["resumed_intervals"] + report["missed_intervals"] == (
            scenario.periods * scenario.intervals_per_period
        ), device.name
        assert set(report["period_states"].values()) == {"settled"}, device.name
    digests = result.digests[site.name]
    assert len(digests) == 1 + len(site.devices), digests
    assert len(set(digests.values())) == 1, digests


async def test_the_checker_finds_nothing_wrong(run: Run) -> None:
    *_, verdict = run
    assert verdict.ok, "\n".join(verdict.problems)


async def test_every_invoice_is_settled_once_in_the_utility_lnd(run: Run) -> None:
    scenario, stack, result, _, _ = run
    [site] = scenario.sites
    entries = await utility_log(scenario, result.work_dir, site.name, result.identity(site))
    invoices = {e.body.device: e.body for e in entries if isinstance(e.body, Invoice)}
    assert set(invoices) == {d.index for d in site.devices}  # each device, its one period
    paid = Counter(e.body.payment_hash for e in entries if isinstance(e.body, Payment))
    async with stack.client(scenario.utility.name) as utility:
        for device, invoice in invoices.items():
            found = await utility.lookup_invoice(invoice.payment_hash.hex())
            assert found.state is InvoiceState.SETTLED, device
            assert found.amt_paid_msat == invoice.amount_msat, device
            assert paid[invoice.payment_hash] == 1, device
    assert {s["collection"] for s in result.invoice_status} == {"paid"}


async def test_the_light_fridge_sold_allowance_each_paid_and_logged_once(run: Run) -> None:
    scenario, stack, result, before, _ = run
    [site] = scenario.sites
    node = site.site_node
    assert node is not None
    identity = result.identity(site)
    entries = await utility_log(scenario, result.work_dir, site.name, identity)
    seller = next(d for d in site.devices if d.name == SELLER)
    buyer = next(d for d in site.devices if d.name == BUYER)
    old = {i.payment_hash for i in before[node].invoices}
    async with stack.client(node) as site_node:
        made = [
            i
            for i in await site_node.list_invoices()
            if i.payment_hash not in old and i.memo.startswith(ALLOWANCE_MEMO)
        ]
    # Every allowance invoice on the site node is the fridge's (the payee field).
    assert {payee_of(i.memo) for i in made} == {Party(identity.site_id, seller.index)}
    settled = {bytes.fromhex(i.payment_hash) for i in made if i.state is InvoiceState.SETTLED}
    assert settled, "the fridge sold no allowance"
    sales = Counter(
        e.body.payment_hash
        for e in entries
        if isinstance(e.body, AllowanceSale) and e.author == Author.device(seller.index)
    )
    payments = Counter(
        e.body.payment_hash
        for e in entries
        if isinstance(e.body, Payment) and e.author == Author.device(buyer.index)
    )
    assert set(sales) == settled  # every paid invoice is a sale, and no sale is unpaid
    others = [e for e in entries if isinstance(e.body, AllowanceSale)]
    assert {e.author for e in others} == {Author.device(seller.index)}  # the fridge's only
    for payment_hash in settled:
        assert (sales[payment_hash], payments[payment_hash]) == (1, 1), payment_hash.hex()
    sold = {e.body.payment_hash: e.body for e in entries if isinstance(e.body, AllowanceSale)}
    price = {i.payment_hash: i.amt_paid_msat for i in made}
    for payment_hash, body in sold.items():
        assert body.buyer == buyer.index
        assert price[payment_hash.hex()] == body.price_msat  # to the msat, on the site node
    account = fold(entries).account(seller.index, 0)
    assert account.allowance_sold_msat == sum(b.allowance_msat for b in sold.values())
    assert account.allowance_earned_msat == sum(b.price_msat for b in sold.values())
