"""Curtailment: deferrable first, then normal, critical never."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.billing import FlatTariff
from p2pgrid.market import Load, MarketError, Priority, forecast_period, plan_curtailment
from p2pgrid.meter import Reading

D, N, C = Priority.DEFERRABLE, Priority.NORMAL, Priority.CRITICAL


def test_a_short_device_is_cut_by_the_energy_its_shortfall_buys() -> None:
    plan = plan_curtailment([Load(1, N, 1000, 200_000, 50_000), Load(2, D, 500, 100_000, 0)])
    assert [(c.device, c.energy_wh) for c in plan.cuts] == [(1, 250)]
    assert plan.cut_of(2) == 0
    # 1 sat of shortfall at 300 sat per kWh buys 3.33 Wh: the cut rounds up.
    assert plan_curtailment([Load(1, N, 1000, 300_000, 1000)]).cut_of(1) == 4
    assert plan.unmet_wh == 0


def test_a_critical_device_is_never_cut_and_runs_into_overdraft() -> None:
    plan = plan_curtailment([Load(1, C, 1000, 200_000, 50_000)], target_wh=500)
    assert plan.cuts == ()
    assert plan.overdraft == ((1, 50_000),)
    assert plan.unmet_wh == 500


def test_a_site_target_sheds_deferrable_loads_before_normal_ones() -> None:
    loads = [
        Load(1, N, 800, 1, 0),
        Load(2, D, 300, 1, 0),
        Load(3, D, 500, 1, 0),
        Load(4, C, 9000, 1, 0),
    ]
    plan = plan_curtailment(loads, target_wh=1000)
    assert [(c.device, c.priority, c.energy_wh) for c in plan.cuts] == [
        (2, D, 300),
        (3, D, 500),
        (1, N, 200),
    ]
    assert plan.total_wh == 1000
    assert plan_curtailment(loads, target_wh=2000).unmet_wh == 400


def test_shortfall_cuts_count_towards_the_target() -> None:
    loads = [Load(1, N, 1000, 1000, 500), Load(2, D, 1000, 1000, 0)]
    plan = plan_curtailment(loads, target_wh=600)
    assert (plan.cut_of(1), plan.cut_of(2)) == (500, 100)


def test_a_load_from_a_forecast_after_shares() -> None:
    f = forecast_period(
        [Reading(i, 500) for i in range(4)],
        balance_msat=100_000,
        tariff=FlatTariff(200_000),
        next_interval=4,
        intervals_per_period=8,
        margin_pct=0,
        intervals_per_day=4,
    )
    load = Load.from_forecast(7, N, f, shared_msat=60_000)
    assert (load.expected_wh, load.expected_msat, load.shortfall_msat) == (2000, 400_000, 240_000)
    assert load.shortfall_wh == 1200


def test_bad_loads_are_refused() -> None:
    with pytest.raises(MarketError):
        Load(1, N, -1, 0)
    with pytest.raises(MarketError, match="two loads"):
        plan_curtailment([Load(1, N, 1, 1), Load(1, D, 1, 1)])
    with pytest.raises(MarketError):
        plan_curtailment([], target_wh=-1)


loads = st.lists(
    st.builds(
        Load,
        st.integers(0, 20),
        st.sampled_from(Priority),
        st.integers(0, 10_000),
        st.integers(0, 10**7),
        st.integers(0, 10**7),
    ),
    max_size=12,
    unique_by=lambda load: load.device,
)


@given(loads, st.integers(0, 50_000))
def test_curtailment_invariants(site: list[Load], target: int) -> None:
    plan = plan_curtailment(site, target_wh=target)
    by_device = {load.device: load for load in site}
    assert len({c.device for c in plan.cuts}) == len(plan.cuts)
    for cut in plan.cuts:
        load = by_device[cut.device]
        assert load.priority is not C
        assert 0 < cut.energy_wh <= load.expected_wh
        assert cut.energy_wh >= load.shortfall_wh
    for load in site:
        if load.priority is not C:
            assert plan.cut_of(load.device) >= load.shortfall_wh
    cuttable = sum(load.expected_wh for load in site if load.priority is not C)
    forced = sum(load.shortfall_wh for load in site if load.priority is not C)
    assert plan.total_wh == max(forced, min(target, cuttable))
    assert plan.unmet_wh == max(0, target - plan.total_wh)
    # A normal load sheds for the target only once every deferrable load is cut to zero.
    if any(plan.cut_of(ld.device) > ld.shortfall_wh for ld in site if ld.priority is N):
        assert all(plan.cut_of(ld.device) == ld.expected_wh for ld in site if ld.priority is D)
    assert [c.priority for c in plan.cuts] == sorted(c.priority for c in plan.cuts)
    assert plan_curtailment(list(reversed(site)), target_wh=target) == plan
