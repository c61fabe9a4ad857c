"""Plausibility of the market's decisions on real data (docs/market.md, section 5).

The meters read two winter days of SimBench profiles (tests/data/README.md)
through :class:`~p2pgrid.meter.CsvSource`: the first day is the meters' past
(what the forecast learns from), the second is run, one period of 96 quarter
hours, by whole device agents on fakes (fake Lightning and peers, real SQLite
logs). Three properties are checked against the data and the resulting logs:

- **self-consumption first**: the home's meter (household load and 10 kWp PV)
  imports only what its PV does not cover and offers for sale only what its
  load does not use; no interval both imports and exports;
- **no device gives what its own forecast needs**: the home's 11 kW wallbox is
  asked for a share between every two intervals; after every share it still
  holds its forecast cost of the rest of the period, and it is never curtailed;
- **an overdraft is reported**: the shop's 22 kW public charger (critical)
  charges beyond its allocation and the shares it got; the period report shows
  exactly that overdraft and its alert, and the agent warns once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from p2pgrid.agent.rounds import order_of
from p2pgrid.billing import model_ms
from p2pgrid.ledger import Curtailment, Entry, MeterReading, Order, Share, fold
from p2pgrid.market import Ask, Priority
from p2pgrid.meter import CsvFormat, CsvSource, Reading
from p2pgrid.report import period_report
from p2pgrid.testing.clock import SteppingClock
from tests.agent.rig import TARIFF, Rig

DATA = Path(__file__).parent.parent / "data" / "simbench_winter.csv"
DAY = 96  # one period is one day; the run's day is the meters' interval 96 on
WH_MSAT = 250  # the rig's flat tariff: 250 msat per Wh


def csv_meter(column: str, rated_kw: float) -> CsvSource:
    """A SimBench profile column (power as a fraction of the rated power, per
    quarter hour) as a meter of a device of ``rated_kw``."""
    return CsvSource(DATA, CsvFormat(column=column, unit="kW", scale=rated_kw))


@dataclasses.dataclass(frozen=True)
class HouseMeter:
    """One meter behind which a load and a PV system sit (each its own column,
    its own rating): what it reads is both, as a real two-way meter does."""

    load: CsvSource
    pv: CsvSource

    def reading(self, interval: int) -> Reading:
        made = self.pv.reading(interval).consumed_wh  # the PV column, as energy
        return Reading(interval, self.load.reading(interval).consumed_wh, made)


@dataclasses.dataclass(frozen=True)
class BetweenClock(SteppingClock):
    """A stepping clock that runs ``between`` before each interval begins: the
    agent has metered the one before and waits."""

    between: list[Callable[[int], Awaitable[None]]] = dataclasses.field(default_factory=list)

    async def until_interval(self, interval: int) -> None:
        for hook in self.between:
            await hook(interval)
        await super().until_interval(interval)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    rig.clock.tick = 0.001  # what is done in turn gets increasing timestamps
    yield rig
    await rig.close()


def run_interval(entry: Entry) -> int:
    """The run interval of a meter reading (the run starts at the meter's DAY)."""
    assert isinstance(entry.body, MeterReading)
    return (entry.body.interval_start_ms - model_ms(DAY)) // 900_000


async def test_the_homes_own_pv_covers_its_own_load_before_any_is_offered(rig: Rig) -> None:
    house = await rig.device(0)
    await rig.allocate(house.store, 0, 10**9, period=0)  # ample: the budget is not checked here
    meter = HouseMeter(load=csv_meter("household", 3.0), pv=csv_meter("pv", 10.0))
    agent, replica, _ = await rig.agent(
        house, meter=meter, intervals_per_period=DAY, model_start=DAY
    )
    replica.before_wait = rig.utility_for(house, intervals_per_period=DAY, model_start=DAY)
    await rig.start()
    report = await agent.run(periods=1)

    entries = await house.store.entries()
    mine = [e for e in entries if e.author == house.writer.author]
    imported = {run_interval(e): e.body.energy_wh for e in mine if isinstance(e.body, MeterReading)}
    offered: dict[int, int] = {}  # run interval of the export -> Wh asked for in the next round
    for e in mine:
        order = order_of(e, rig.site_id) if isinstance(e.body, Order) else None
        if isinstance(order, Ask):
            offered[order.interval - 1] = order.energy_wh
    assert sorted(imported) == list(range(DAY))
    for i in range(DAY):
        r = meter.reading(DAY + i)
        assert imported[i] == max(0, r.consumed_wh - r.produced_wh), i
        assert offered.get(i, 0) == max(0, r.produced_wh - r.consumed_wh), i
        assert not (imported[i] and offered.get(i, 0)), f"interval {i} imports and exports"
    # The day has all three cases: PV surplus, PV covering part of the load, night.
    made = [meter.reading(DAY + i) for i in range(DAY)]
    assert sum(offered.values()) > 0
    assert any(0 < r.produced_wh < r.consumed_wh for r in made)
    assert any(r.produced_wh == 0 < r.consumed_wh for r in made)
    assert report.consumed_wh == sum(imported.values())


async def test_the_wallbox_never_gives_what_its_forecast_needs(rig: Rig) -> None:
    """Asked for a share before every interval, the EV's wallbox gives only
    beyond its forecast of the rest of the day (learnt from the day before),
    so it is never curtailed for what it gave away."""
    ev, requester = await rig.device(0), await rig.device(1)
    allocation = 3_000_000  # above its forecast day (about 2.5M msat), below a full charge's
    await rig.allocate(ev.store, 0, allocation, period=0)
    asking = rig.share_desk(requester, no_headroom)
    clock = BetweenClock(
        intervals_per_period=DAY, interval_s=900.0, start=rig.clock.t, now=rig.clock,
        wall=rig.clock,
    )  # fmt: skip
    agent, replica, _ = await rig.agent(
        ev, meter=csv_meter("wallbox", 10.9), model_start=DAY, clock=clock
    )
    replica.before_wait = rig.utility_for(ev, intervals_per_period=DAY, model_start=DAY)
    gives: list[tuple[int, int, int, int]] = []  # interval, given, balance after, forecast

    async def ask_a_share(interval: int) -> None:
        if not 0 < interval < DAY:
            return
        rest = await agent.forecast(0, interval)  # what the rest of the day will cost
        before = await agent.balance(0)
        got = await asking.ask(100_000, 0, [ev.peers.ref])
        after = await agent.balance(0)
        assert after == before - got
        gives.append((interval, got, after, rest.cost_msat))

    clock.between.append(ask_a_share)
    await rig.start()
    report = await agent.run(periods=1)

    assert len(gives) == DAY - 1
    given = [(i, got, after, need) for i, got, after, need in gives if got > 0]
    assert given, "the wallbox never had headroom: the test checks nothing"
    for interval, _, after, need in given:
        assert after >= need, f"interval {interval}: gave below its forecast need"
    entries = await ev.store.entries()
    shares = [e.body.amount_msat for e in entries
              if e.author == ev.writer.author and isinstance(e.body, Share)]  # fmt: skip
    assert sorted(shares) == sorted(got for _, got, _, _ in given)
    assert report.curtailed_intervals == 0
    assert [e for e in entries if isinstance(e.body, Curtailment)] == []
    charged = sum(csv_meter("wallbox", 10.9).reading(DAY + i).consumed_wh for i in range(DAY))
    assert charged > 0
    assert report.consumed_wh == charged


async def test_the_public_chargers_overdraft_is_reported(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The shop's public charger is critical (a customer's car is not cut off):
    it charges beyond its allocation and what the shop's heat pump can share;
    the report shows the rest as its overdraft, with the alert."""
    charger, heat_pump = await rig.device(0), await rig.device(1)
    meter = csv_meter("public_charger", 21.8)
    cost = sum(meter.reading(DAY + i).consumed_wh for i in range(DAY)) * WH_MSAT
    allocation = cost // 4
    await rig.allocate(charger.store, 0, allocation, period=0)
    await rig.allocate(charger.store, 1, cost, period=0)
    await heat_pump.store.ingest_many(await charger.store.export())  # one site log
    spare = cost // 4  # what the heat pump can give in all (its forecast keeps the rest)

    async def headroom(period: int) -> int:
        given = fold(await heat_pump.store.entries()).account(1, 0).given_msat
        return max(0, spare - given) if period == 0 else 0

    rig.share_desk(heat_pump, headroom)
    agent, replica, _ = await rig.agent(
        charger, meter=meter, priority=Priority.CRITICAL, intervals_per_period=DAY,
        model_start=DAY,
    )  # fmt: skip
    replica.before_wait = rig.utility_for(charger, intervals_per_period=DAY, model_start=DAY)
    await rig.start()
    with caplog.at_level(logging.WARNING, logger="p2pgrid.agent.device"):
        result = await agent.run(periods=1)

    report = period_report(fold(await charger.store.entries()), 0, site="shop", tariff=TARIFF)
    [line] = [line for line in report.lines if line.device == 0]
    assert cost > 0
    assert line.energy_wh * WH_MSAT == cost
    assert 0 < line.borrowed_msat <= spare
    assert line.overdraft_msat == cost - allocation - line.borrowed_msat > 0
    assert report.overdrawn == (0,)
    assert report.overdraft_msat == line.overdraft_msat
    assert "OVERDRAFT" in report.alert
    assert result.overdraft_intervals > 0
    assert result.curtailed_intervals == 0
    assert len([r for r in caplog.records if "OVERDRAFT" in r.getMessage()]) == 1


async def no_headroom(period: int) -> int:
    return 0
