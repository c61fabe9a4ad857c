"""Pay on delivery end to end (docs/market.md, section 6.2): the pooled site of
``pooled_site.toml`` run twice on the pooled stack (with
``test_pooled_sales.py``, :func:`tests.regtest.conftest.pooled_stack`), every agent its own OS
process with its own lnd. First with ``pay_on_delivery``: every buyer's
``delivered`` entry shows its whole trade, each seller settles its hold
invoice, and the buyer logs the sale. Then (other site seeds, so other
invoices) with buyers whose meters report half of each trade: every hold
invoice is cancelled, no sale is logged and the buyers' held sats come back.
Both times lnd and the log reconcile to the msat."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgrid.agent.rounds import check_pooled_sales, round_book
from p2pgrid.demo import check_money, snapshots
from p2pgrid.launcher import RunResult, run_deployment
from p2pgrid.ledger import Cleared, Delivered, Entry, Payment, Sale
from p2pgrid.lightning import InvoiceState, PaymentStatus
from p2pgrid.reconcile import Reconciliation
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, load_scenario
from tests.faults.checker import utility_log
from tests.regtest.conftest import POOLED
from tests.regtest.deployed import deploy

#: The sites' seeds in the file: each run gives both its own (the same seeds on one
#: stack would derive the same utility invoices as another run's).
SEEDS = {
    "block": 'seed = "p2pgrid pooled test block"',
    "street": 'seed = "p2pgrid pooled test street"',
}


class Run:
    def __init__(self, scenario: Scenario, result: RunResult, money: Reconciliation) -> None:
        self.scenario, self.result, self.money = scenario, result, money

    @property
    def site_id(self) -> str:
        return self.result.identity(self.scenario.sites[0]).site_id

    async def log(self) -> list[Entry]:
        site = self.scenario.sites[0]
        return await utility_log(
            self.scenario, self.result.work_dir, site.name, self.result.identity(site)
        )


async def _run(stack: Stack, tmp: Path, name: str, *, seed: str, energy: str) -> Run:
    path = tmp / f"{name}.toml"
    text = POOLED.read_text()
    for site, line in SEEDS.items():
        assert text.count(line) == 1, line
        text = text.replace(line, f'seed = "{seed} {site}"')
    assert text.count("[agent.energy]\n") == 1  # the file's table, given the run's keys too
    path.write_text(text.replace("[agent.energy]\n", f"[agent.energy]\n{energy}\n", 1))
    scenario = load_scenario(path)
    before = await snapshots(scenario, stack)
    result = await run_deployment(await deploy(path, stack, tmp / name), start_when_ready=True)
    return Run(scenario, result, await check_money(scenario, stack, result, before))


@pytest.fixture(scope="module")
async def runs(
    pooled_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Stack, Run, Run]:
    tmp = tmp_path_factory.mktemp("delivery")
    stack = pooled_stack
    delivered = await _run(
        stack, tmp, "delivered", seed="p2pgrid delivery", energy="pay_on_delivery = true"
    )
    short = await _run(
        stack,
        tmp,
        "short",
        seed="p2pgrid short delivery",
        energy="pay_on_delivery = true\ndelivered_pct = 50",
    )
    return stack, delivered, short


def _trades(entries: list[Entry], site_id: str) -> dict[bytes, tuple[int, int, int, int]]:
    """Each ``delivered`` entry's hash -> (buyer, seller, traded Wh, msat) of the
    trade its round's clearing (as the buyer's ``cleared`` entry names it) gives."""
    out = {}
    for e in entries:
        if not isinstance(e.body, Delivered):
            continue
        cleared = next(
            c.body
            for c in entries
            if isinstance(c.body, Cleared)
            and c.author == e.author
            and c.period == e.period
            and c.body.interval == e.body.interval
        )
        book = round_book(
            entries, site_id, period=e.period, interval=e.body.interval, devices=cleared.devices
        )
        trade = next(
            t
            for t in book.clearing.trades
            if t.buyer.device == e.author.index and t.seller.device == e.body.seller
        )
        out[e.body.payment_hash] = (e.author.index, e.body.seller, trade.energy_wh,
                                    trade.amount_msat)  # fmt: skip
    return out


async def _invoice_states(stack: Stack, run: Run, hashes: set[bytes]) -> set[InvoiceState]:
    states = set()
    for device in run.scenario.sites[0].devices:
        async with stack.client(device.name) as node:
            for invoice in await node.list_invoices():
                if bytes.fromhex(invoice.payment_hash) in hashes:
                    states.add(invoice.state)
    return states


async def test_delivered_trades_are_settled_and_logged(runs: tuple[Stack, Run, Run]) -> None:
    stack, run, _ = runs
    entries = await run.log()
    site_id = run.site_id
    trades = _trades(entries, site_id)
    assert trades, "no pooled trade was made"
    delivered = [e.body for e in entries if isinstance(e.body, Delivered)]
    assert all(d.energy_wh == trades[d.payment_hash][2] for d in delivered)  # whole trades
    sales = sorted(
        (e.author.index, e.body.seller, e.body.energy_wh, e.body.amount_msat)
        for e in entries
        if isinstance(e.body, Sale)
    )
    assert sales == sorted(trades.values())
    paid = {e.body.payment_hash for e in entries if isinstance(e.body, Payment)}
    assert set(trades) <= paid
    assert await _invoice_states(stack, run, set(trades)) == {InvoiceState.SETTLED}
    assert check_pooled_sales(entries, site_id) == []
    assert run.money.ok, str(run.money)


async def test_short_deliveries_are_cancelled_and_the_buyers_sats_return(
    runs: tuple[Stack, Run, Run],
) -> None:
    stack, _, run = runs
    entries = await run.log()
    site_id = run.site_id
    trades = _trades(entries, site_id)
    assert trades, "no pooled trade was made"
    delivered = [e.body for e in entries if isinstance(e.body, Delivered)]
    assert all(d.energy_wh == trades[d.payment_hash][2] // 2 for d in delivered)
    assert not [e for e in entries if isinstance(e.body, Sale)]
    paid = {e.body.payment_hash for e in entries if isinstance(e.body, Payment)}
    assert not set(trades) & paid
    assert await _invoice_states(stack, run, set(trades)) == {InvoiceState.CANCELED}
    names = {d.index: d.name for d in run.scenario.sites[0].devices}
    buyers = {names[buyer] for buyer, *_ in trades.values()}
    for name in buyers:  # lnd saw each held payment fail back
        async with stack.client(name) as node:
            held = [
                p for p in await node.list_payments() if bytes.fromhex(p.payment_hash) in trades
            ]
        assert held
        assert {p.status for p in held} == {PaymentStatus.FAILED}
    # Each node's channel balance moved by exactly what the log says it paid
    # (the utility's invoices, no sale): the held sats came back to the msat.
    assert run.money.ok, str(run.money)
    assert sum(run.result.reports[n]["bought_wh"] for n in buyers) == 0
