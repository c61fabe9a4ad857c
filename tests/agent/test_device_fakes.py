"""A whole DeviceAgent against fakes (fake Lightning, fake peers, a local
replica, a stepping clock; its log in real SQLite): every interval is metered
once; a shortfall asks the site for a share; without budget a device curtails;
a period's surplus is carried over and its invoice paid once, with its payment
entry and routing fee; restarted on its store, the agent reads no interval
twice and does not close a period again that it closed before the restart; an
invoice that comes after the invoice wait is paid by a deployed agent.
Nothing sleeps: the clock moves when the agent waits for an interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from p2pgrid.agent.config import AgentConfig, SettleConfig
from p2pgrid.billing import model_ms
from p2pgrid.ledger import (
    Author,
    CarryOver,
    Curtailment,
    Entry,
    Invoice,
    LogWriter,
    MeterReading,
    Payment,
    Share,
    fold,
)
from p2pgrid.market import Priority
from tests.agent.rig import INTERVALS_PER_PERIOD, Device, Rig

COST = 25_000  # 100 Wh at 250 msat/Wh: one interval of the agent's meter


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, hub="router")  # the utility's invoices pay a routing fee
    yield rig
    await rig.close()


def of(entries: list[Entry], kind: type, author: Author | None = None) -> list[Entry]:
    return [
        e for e in entries if isinstance(e.body, kind) and (author is None or e.author == author)
    ]


def starts(entries: list[Entry], author: Author) -> list[int]:
    """Start times of the author's meter readings, in log order."""
    return [e.body.interval_start_ms for e in entries if e.author == author
            and isinstance(e.body, MeterReading)]  # fmt: skip


async def test_meters_every_interval_once_carries_the_surplus_and_pays_the_invoice_once(
    rig: Rig,
) -> None:
    device = await rig.device(0)
    await rig.allocate(device.store, 0, 200_000, period=0)
    agent, replica, clock = await rig.agent(device)
    replica.before_wait = rig.utility_for(device)
    await rig.start()
    report = await agent.run(periods=1)

    entries = await device.store.entries()
    me = device.writer.author
    assert clock.reached == list(range(INTERVALS_PER_PERIOD))
    assert starts(entries, me) == [model_ms(i) for i in range(INTERVALS_PER_PERIOD)]
    assert (report.intervals, report.consumed_wh, report.curtailed_intervals) == (4, 400, 0)
    [carry] = of(entries, CarryOver, me)
    assert (carry.period, carry.body) == (0, CarryOver(200_000 - 4 * COST))
    assert report.carried_over_msat == 100_000
    [invoice] = of(entries, Invoice)
    [payment] = of(entries, Payment, me)
    assert isinstance(invoice.body, Invoice)
    assert isinstance(payment.body, Payment)
    assert payment.period == 0
    assert (payment.body.payment_hash, payment.body.amount_msat) == (
        invoice.body.payment_hash,
        4 * COST,
    )
    assert payment.body.fee_msat == rig.ln.route_fee_msat  # routed by the hub
    assert len(device.node.attempts) == 1
    assert report.settlements == [(0, "paid", rig.ln.route_fee_msat)]
    assert report.period_states == {0: "settled"}
    assert fold(entries).account(0, 1).carried_in_msat == 100_000
    assert {e.id for e in replica.published} == {e.id for e in entries if e.author == me}
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
    assert (checked.payments, checked.moved_msat) == (1, 4 * COST)


async def test_a_shortfall_asks_a_site_peer_for_a_share(rig: Rig) -> None:
    rig.clock.tick = 0.001  # the share is paid and logged before the reading
    device, giver = await rig.device(0), await rig.device(1)
    await rig.allocate(device.store, 0, COST // 2, period=0)

    async def headroom(period: int) -> int:
        return 1_000_000 if period == 0 else 0

    rig.share_desk(giver, headroom)
    await rig.allocate(device.store, 1, 1_000_000, period=0)
    await giver.store.ingest_many(await device.store.export())  # one site log
    agent, _, _ = await rig.agent(device)
    await rig.start()
    await agent.meter_interval(0)

    entries = await device.store.entries()
    [share] = of(entries, Share, giver.writer.author)  # ingested from the giver's receipt
    assert isinstance(share.body, Share)
    assert (share.period, share.body.to_device) == (0, 0)
    assert share.body.amount_msat == COST - COST // 2
    assert agent.report.shares_received_msat == share.body.amount_msat
    assert of(entries, Curtailment) == []
    [reading] = of(entries, MeterReading, device.writer.author)
    assert isinstance(reading.body, MeterReading)
    assert (reading.body.energy_wh, reading.body.cost_msat) == (100, COST)
    assert await agent.balance(0) == 0
    checked = await rig.reconcile()
    assert checked.ok, str(checked)
    assert checked.moved_msat == share.body.amount_msat


@pytest.mark.parametrize(
    ("priority", "curtailed"), [(Priority.NORMAL, True), (Priority.CRITICAL, False)]
)
async def test_without_budget_a_device_curtails_unless_critical(
    rig: Rig, priority: Priority, curtailed: bool
) -> None:
    device = await rig.device(0)
    agent, replica, _ = await rig.agent(device, priority=priority)
    replica.before_wait = rig.utility_for(device)
    await rig.start()
    report = await agent.run(periods=1)

    entries = await device.store.entries()
    me = device.writer.author
    readings = [e.body for e in of(entries, MeterReading, me)]
    assert len(readings) == INTERVALS_PER_PERIOD
    if curtailed:
        cuts = of(entries, Curtailment, me)
        assert [c.body.start_ms for c in cuts] == [  # type: ignore[attr-defined]
            model_ms(i) for i in range(INTERVALS_PER_PERIOD)
        ]
        assert report.curtailed_intervals == INTERVALS_PER_PERIOD
        assert all(r.energy_wh == 0 for r in readings)  # type: ignore[attr-defined]
        assert report.settlements == []  # owes nothing: no invoice expected
        assert replica.waits == 0
    else:  # a critical device consumes into overdraft and pays its invoice
        assert of(entries, Curtailment) == []
        assert fold(entries).account(0, 0).overdraft_msat == 4 * COST
        assert report.settlements == [(0, "paid", rig.ln.route_fee_msat)]
    assert report.period_states == {0: "settled"}
    assert (await rig.reconcile()).ok


async def test_restarted_it_reads_no_interval_twice_and_does_not_close_a_closed_period_again(
    rig: Rig,
) -> None:
    device = await rig.device(0)
    me = device.writer.author
    await rig.allocate(device.store, 0, 200_000, period=0)
    await rig.allocate(device.store, 1, 50_000, period=0)  # a neighbour with budget
    await rig.allocate(device.store, 0, 50_000, period=1)
    await rig.start()
    # First life: period 0 metered, closed (carried over) and paid; interval 4
    # (period 1) metered; killed while waiting for interval 5.
    first, replica, clock = await rig.agent(device, stop_at=5)
    replica.before_wait = rig.utility_for(device)
    run = asyncio.ensure_future(first.run(periods=2))
    await clock.stopped.wait()
    await paid_once(device)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    # A share to period 0 logged by its payer after the close, delivered late.
    neighbour = LogWriter(device.store, rig.site.device(1), Author.device(1))
    await neighbour.append(Share(0, 30_000, "late"), period=0, timestamp_ms=int(rig.clock() * 1000))

    second, replica, _ = await rig.agent(device)  # same store, same wall clock
    replica.before_wait = rig.utility_for(device)
    report = await second.run(periods=2)

    entries = await device.store.entries()
    assert starts(entries, me) == [model_ms(i) for i in range(2 * INTERVALS_PER_PERIOD)]
    assert (report.resumed_intervals, report.intervals, report.missed_intervals) == (5, 3, 0)
    carries = of(entries, CarryOver, me)
    assert [(c.period, c.body) for c in carries] == [
        (0, CarryOver(100_000)),  # written by the first life only
        (1, CarryOver(50_000)),  # 100,000 carried in + 50,000, minus intervals 4..7
    ]
    assert report.carried_over_msat == 50_000
    assert await second.balance(0) == 30_000  # the late credit stays in period 0
    assert [s[:2] for s in report.settlements] == [(0, "already_paid"), (1, "paid")]
    assert len(of(entries, Payment, me)) == 2
    assert len(device.node.attempts) == 2
    assert report.period_states == {0: "settled", 1: "settled"}
    checked = await rig.reconcile()
    assert checked.ok, str(checked)


async def paid_once(device: Device) -> None:
    """Wait (on the store's change events) until the device logged a payment."""
    digest = device.store.digest()
    while not of(await device.store.entries(), Payment, device.writer.author):
        digest = await device.store.wait_changed(digest)


async def test_its_config_reaches_the_settler(rig: Rig) -> None:
    """No routing fee allowed and one attempt: the hub's route is refused, the
    invoice stays unpaid and is reported so; the period is not settled."""
    device = await rig.device(0)
    await rig.allocate(device.store, 0, 200_000, period=0)
    config = AgentConfig(settle=SettleConfig(fee_limit_msat=0, pay_attempts=1))
    agent, replica, _ = await rig.agent(device, config=config)
    assert (agent.desk.config, agent.energy.config) == (config.share, config.energy)
    replica.before_wait = rig.utility_for(device)
    await rig.start()
    report = await agent.run(periods=1)
    assert report.settlements == [(0, "failed", 0)]
    assert of(await device.store.entries(), Payment) == []
    assert device.node.attempts == []
    assert report.period_states == {0: "closed"}
    assert (await rig.reconcile()).ok


async def test_its_balance_is_the_fold_of_its_replica_also_asked_at_once(rig: Rig) -> None:
    device = await rig.device(0)
    await rig.allocate(device.store, 0, 70_000, period=0)
    agent, _, _ = await rig.agent(device)
    # The desks' handlers may ask before the run does: one book, fed once.
    first, second = await asyncio.gather(agent.balance(0), agent.balance(0))
    assert first == second == 70_000
    await rig.start()
    await agent.meter_interval(0)
    entries = await device.store.entries()
    assert await agent.balance(0) == fold(entries).account(0, 0).balance_msat == 70_000 - COST


async def test_without_a_period_count_it_runs_period_after_period_until_stopped(
    rig: Rig,
) -> None:
    """A deployed agent has no end: it meters, closes and settles each period as
    its clock brings it, and stops only when cancelled (SIGTERM in a process)."""
    device = await rig.device(0)
    me = device.writer.author
    for period in range(3):
        await rig.allocate(device.store, 0, 200_000, period=period)
    await rig.start()
    stop_at = 3 * INTERVALS_PER_PERIOD + 1  # stands still in the fourth period
    agent, replica, clock = await rig.agent(device, stop_at=stop_at)
    replica.before_wait = rig.utility_for(device)
    run = asyncio.ensure_future(agent.run(periods=None))
    try:
        await clock.stopped.wait()
        digest = device.store.digest()
        async with asyncio.timeout(60):  # a guard: on a fake clock this takes well under 1 s
            while len(of(await device.store.entries(), Payment, me)) < 3:
                digest = await device.store.wait_changed(digest)
    finally:
        run.cancel()  # also when the guard fires: no agent left running into the next test
    with pytest.raises(asyncio.CancelledError):
        await run
    entries = await device.store.entries()
    assert clock.reached == list(range(stop_at + 1))
    assert starts(entries, me) == [model_ms(i) for i in range(stop_at)]
    assert [c.period for c in of(entries, CarryOver, me)] == [0, 1, 2]
    assert sorted(p.period for p in of(entries, Payment, me)) == [0, 1, 2]
    assert len(device.node.attempts) == 3


async def test_started_late_for_the_first_time_it_counts_the_passed_intervals_as_missed(
    rig: Rig,
) -> None:
    """An agent first started after its clock's start reads no interval that has
    passed: they are missed (never invented), and it meters from the current one."""
    device = await rig.device(0)
    me = device.writer.author
    await rig.allocate(device.store, 0, 200_000, period=0)
    await rig.start()
    agent, replica, _ = await rig.agent(device)
    replica.before_wait = rig.utility_for(device)
    rig.clock.t += 2 * 900 + 100  # two intervals have passed, the third has begun
    report = await agent.run(periods=1)
    entries = await device.store.entries()
    assert (report.missed_intervals, report.intervals) == (2, INTERVALS_PER_PERIOD - 2)
    assert starts(entries, me) == [model_ms(i) for i in range(2, INTERVALS_PER_PERIOD)]


def late_utility(rig: Rig, device: Device) -> Callable[[], Awaitable[None]]:
    """A ``before_wait`` hook: the utility is cut off from the device across the
    period's end (its first wait sees nothing), then invoices as usual."""
    invoice = rig.utility_for(device)
    waits = 0

    async def hook() -> None:
        nonlocal waits
        waits += 1
        if waits > 1:
            await invoice()

    return hook


LATE = AgentConfig(settle=SettleConfig(invoice_wait_s=0.05))  # a wait that runs out
PAID_WITHIN_S = 10.0  # a deployed agent that gave up would never pay: fail, do not hang


async def test_a_deployed_agent_pays_an_invoice_that_comes_after_its_invoice_wait(
    rig: Rig,
) -> None:
    """Cut off from the utility past ``invoice_wait_s`` after a period's end, a
    deployed agent (no period count) says so and waits on: the invoice that comes
    after the cut is paid, once (a cut changes when a period is paid, never whether)."""
    device = await rig.device(0)
    me = device.writer.author
    await rig.allocate(device.store, 0, 200_000, period=0)
    await rig.start()
    agent, replica, clock = await rig.agent(device, stop_at=INTERVALS_PER_PERIOD, config=LATE)
    replica.before_wait = late_utility(rig, device)
    run = asyncio.ensure_future(agent.run(periods=None))
    await clock.stopped.wait()
    digest = device.store.digest()
    async with asyncio.timeout(PAID_WITHIN_S):  # a bound on failure, not a sync
        while not of(await device.store.entries(), Payment, me):
            digest = await device.store.wait_changed(digest)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    entries = await device.store.entries()
    [invoice] = of(entries, Invoice)
    [payment] = of(entries, Payment, me)
    assert isinstance(invoice.body, Invoice)
    assert isinstance(payment.body, Payment)
    assert payment.body.payment_hash == invoice.body.payment_hash
    assert payment.body.amount_msat == INTERVALS_PER_PERIOD * COST
    assert replica.waits >= 2  # it waited past the first, fruitless wait
    assert (await rig.reconcile()).ok


async def test_a_run_of_given_periods_reports_an_invoice_that_did_not_come_in_time(
    rig: Rig,
) -> None:
    """A run of a given number of periods must end: past ``invoice_wait_s`` it reports
    ``no_invoice`` for the period and pays nothing."""
    device = await rig.device(0)
    await rig.allocate(device.store, 0, 200_000, period=0)
    await rig.start()
    agent, replica, _ = await rig.agent(device, config=LATE)
    replica.before_wait = late_utility(rig, device)
    report = await agent.run(periods=1)
    assert report.settlements == [(0, "no_invoice", 0)]
    assert of(await device.store.entries(), Payment) == []
    assert report.period_states == {0: "closed"}


async def test_a_giver_keeps_what_its_forecast_needs_for_the_rest_of_the_period(rig: Rig) -> None:
    """An EV idle now but charging 400 Wh in each of the period's last two
    intervals (its meter's past day says so) gives only beyond that forecast."""
    ev, requester = await rig.device(0), await rig.device(1)
    await rig.allocate(ev.store, 0, 300_000, period=0)
    agent, _, _ = await rig.agent(ev, consumed_wh=(0, 0, 400, 400), model_start=96)
    agent.seed_history()
    asking = rig.share_desk(requester, zero_headroom)
    await rig.start()
    # intervals 1..3: 0 + 400 + 400 Wh x 250 msat/Wh x 1.1 = 220 000 msat
    assert (await agent.forecast(0, 1)).cost_msat == 220_000
    assert await agent.headroom(0) == 80_000
    received = await asking.ask(250_000, 0, [ev.peers.ref])
    assert received == 40_000  # half of its headroom, never the 300 000 it holds
    assert await agent.balance(0) - 220_000 >= 0
    assert (await rig.reconcile()).ok


async def test_a_device_that_does_not_know_its_day_yet_gives_nothing(rig: Rig) -> None:
    ev, requester = await rig.device(0), await rig.device(1)
    await rig.allocate(ev.store, 0, 300_000, period=0)
    agent, _, _ = await rig.agent(ev, consumed_wh=(0, 0, 400, 400))  # no past before the run
    agent.seed_history()
    asking = rig.share_desk(requester, zero_headroom)
    await rig.start()
    await agent.meter_interval(0)  # one idle reading: a blind forecast sees no need
    assert await agent.headroom(0) == 0
    assert await asking.ask(250_000, 0, [ev.peers.ref]) == 0
    assert await agent.balance(0) == 300_000


async def test_a_forecast_shortfall_is_asked_for_early(rig: Rig) -> None:
    rig.clock.tick = 0.001  # the share is paid and logged before the next step
    device, giver = await rig.device(0), await rig.device(1)
    await rig.allocate(device.store, 0, 2 * COST, period=0)

    async def headroom(period: int) -> int:
        return 1_000_000 if period == 0 else 0

    rig.share_desk(giver, headroom)
    await giver.store.ingest_many(await device.store.export())
    agent, _, _ = await rig.agent(device, model_start=96)
    agent.seed_history()
    await rig.start()
    await agent.meter_interval(0)  # 25 000 msat: covered, no share needed for it
    # ... but intervals 1..3 will cost 3 x 25 000 x 1.1 = 82 500, 57 500 more than is left
    [share] = of(await device.store.entries(), Share, giver.writer.author)
    assert isinstance(share.body, Share)
    assert share.body.amount_msat == 82_500 - COST
    assert agent.report.early_asks == 1
    assert agent.report.shares_received_msat == 82_500 - COST
    await agent.meter_interval(1)  # asked within early_ask_intervals: not again
    assert agent.report.early_asks == 1
    assert of(await device.store.entries(), Curtailment) == []
    assert (await rig.reconcile()).ok


async def test_a_critical_device_in_overdraft_warns_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    device = await rig.device(0)
    agent, replica, _ = await rig.agent(device, priority=Priority.CRITICAL)
    replica.before_wait = rig.utility_for(device)
    await rig.start()
    with caplog.at_level(logging.WARNING, logger="p2pgrid.agent.device"):
        report = await agent.run(periods=1)
    warnings = [r for r in caplog.records if "OVERDRAFT" in r.getMessage()]
    assert len(warnings) == 1
    assert report.overdraft_intervals == INTERVALS_PER_PERIOD
    assert fold(await device.store.entries()).account(0, 0).overdraft_msat == 4 * COST


async def zero_headroom(period: int) -> int:
    return 0


async def test_a_curtailed_device_still_forecasts_its_need(rig: Rig) -> None:
    """Curtailed for lack of budget, a device draws nothing; its forecast still
    learns what its meter needed, so it does not look as if it had headroom."""
    device = await rig.device(0)
    await rig.allocate(device.store, 0, 1_000, period=0)  # less than one interval costs
    agent, _, _ = await rig.agent(device)
    await rig.start()
    for interval in (0, 1):
        await agent.meter_interval(interval)
    assert agent.report.curtailed_intervals == 2
    rest = await agent.forecast(0, 2)
    assert rest.import_wh == 200  # intervals 2 and 3 at the running mean of 100 Wh
    assert await agent.headroom(0) == 0


async def test_concurrent_announcements_publish_each_entry_once(rig: Rig) -> None:
    """The run and a desk may announce at once: each new entry is published
    once, and a push waiting behind a plain announcement still hands them on."""
    device = await rig.device(0)
    agent, replica, _ = await rig.agent(device)
    await rig.start()
    for seq in range(3):
        await device.writer.append(MeterReading(seq, 900, 10, 100), period=0, timestamp_ms=seq)
    own = [e.id for e in await device.store.entries() if e.author == device.writer.author]
    await asyncio.gather(agent.announce_new(), agent.announce_new(push=True), agent.announce_new())
    assert [e.id for e in replica.published] == own
    assert [e.id for e in replica.pushed] == own
    await agent.announce_new(push=True)  # nothing new
    assert (len(replica.published), len(replica.pushed)) == (len(own), len(own))
