"""A device's unspent budget at a period's close, against fakes (fake
Lightning, a stepping clock, its log in real SQLite): it is carried over once,
under either surplus policy, also when the device already wrote an entry of
the next period (a producer offers the next period's first round in this
period's last interval), and also when the device was killed during the close
and restarted on its store: exactly one ``carry_over`` per period in the end.
Nothing sleeps: the clock moves when the agent waits for an interval."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.ledger import Author, CarryOver, Entry, Order, fold
from p2pgrid.market import SurplusPolicy
from p2pgrid.meter import SeriesSource
from tests.agent.rig import INTERVALS_PER_PERIOD, Rig

COST = 25_000  # 100 Wh at 250 msat/Wh: one interval of the agent's meter
ALLOCATED = 200_000
#: Imports 100 Wh in three intervals, exports 50 Wh in the period's last one:
#: that export is offered in the next period's first round, so the producer
#: writes an ``order`` of period 1 before it closes period 0.
PRODUCER = SeriesSource(consumed_wh=(100, 100, 100, 0), produced_wh=(0, 0, 0, 50))
LEFT = ALLOCATED - 3 * COST


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.close()


def carries(entries: list[Entry]) -> list[tuple[int, int]]:
    """(period, amount) of device 0's ``carry_over`` entries, in log order."""
    return [
        (e.period, e.body.amount_msat)
        for e in entries
        if isinstance(e.body, CarryOver) and e.author == Author.device(0)
    ]


@pytest.mark.parametrize("policy", [SurplusPolicy.CARRY_OVER, SurplusPolicy.SELL_ENERGY])
async def test_a_producer_that_offered_the_next_round_carries_its_balance_over(
    rig: Rig, policy: SurplusPolicy
) -> None:
    device = await rig.device(0)
    await rig.allocate(device.store, 0, ALLOCATED, period=0)
    agent, replica, _ = await rig.agent(device, meter=PRODUCER, policy=policy)
    replica.before_wait = rig.utility_for(device)
    await rig.start()
    report = await agent.run(periods=1)

    entries = await device.store.entries()
    mine = [e for e in entries if e.author == device.writer.author]
    [order] = [e for e in mine if isinstance(e.body, Order)]
    assert (order.period, order.body.interval) == (1, INTERVALS_PER_PERIOD)
    assert carries(entries) == [(0, LEFT)]
    carry = next(e for e in mine if isinstance(e.body, CarryOver))
    assert carry.seq > order.seq  # written after the chain reached period 1
    assert report.carried_over_msat == LEFT
    view = fold(entries)
    assert view.account(0, 0).balance_msat == 0
    assert view.account(0, 1).carried_in_msat == LEFT
    assert (await rig.reconcile()).ok


@pytest.mark.parametrize("written", [False, True], ids=["before", "after"])
async def test_killed_during_the_close_it_carries_over_exactly_once_after_the_restart(
    rig: Rig, written: bool
) -> None:
    """Killed in the close of period 0 (after its next period's order) before
    the ``carry_over`` was stored, or right after the close: the second life
    writes it if it is missing and never a second one."""
    device = await rig.device(0)
    await rig.allocate(device.store, 0, ALLOCATED, period=0)
    await rig.start()
    first, replica, clock = await rig.agent(
        device, meter=PRODUCER, stop_at=INTERVALS_PER_PERIOD if written else None
    )
    replica.before_wait = rig.utility_for(device)
    stopped = asyncio.Event()

    async def killed_here(period: int) -> None:
        stopped.set()
        await asyncio.Event().wait()  # the kill comes while the close waits here

    if not written:  # the held sales of the period are resolved before the carry-over
        first.energy.resolved = killed_here  # type: ignore[method-assign]
    run = asyncio.ensure_future(first.run(periods=2))
    await (clock.stopped if written else stopped).wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert carries(await device.store.entries()) == ([(0, LEFT)] if written else [])

    second, replica, _ = await rig.agent(device, meter=PRODUCER)  # same store
    replica.before_wait = rig.utility_for(device)
    report = await second.run(periods=1)

    entries = await device.store.entries()
    assert carries(entries) == [(0, LEFT)]
    assert report.carried_over_msat == (0 if written else LEFT)
    assert fold(entries).account(0, 1).carried_in_msat == LEFT
    assert report.period_states == {0: "settled"}
    assert (await rig.reconcile()).ok
