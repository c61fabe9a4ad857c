"""Tariffs and budget splits: exact integers, conserved, order-independent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.billing import FlatTariff, TimeOfUseTariff, charge_msat, split_budget
from p2pgrid.errors import ConfigError

# 06:00-22:00 peak at 300 sat/kWh, night at 150 sat/kWh (in msat).
TOU = TimeOfUseTariff(((0, 150_000), (24, 300_000), (88, 150_000)))


def test_flat_charge_rounds_up_once_per_period() -> None:
    tariff = FlatTariff(250_000)  # 250 sat/kWh
    assert charge_msat(tariff, [(0, 1000)]) == 250_000
    assert charge_msat(tariff, [(0, 1), (1, 1), (2, 1)]) == 750  # 3 Wh = 750 msat exactly
    assert charge_msat(FlatTariff(1), [(0, 1), (1, 1)]) == 1  # 2/1000 msat rounds up once


def test_time_of_use_picks_the_band_of_the_interval() -> None:
    assert TOU.rate_msat_per_kwh(0) == 150_000
    assert TOU.rate_msat_per_kwh(24) == 300_000
    assert TOU.rate_msat_per_kwh(87) == 300_000
    assert TOU.rate_msat_per_kwh(96 + 88) == 150_000  # next day, 22:00
    with pytest.raises(ConfigError):
        TimeOfUseTariff(((4, 1),))


@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 5000)), max_size=50))
def test_charge_does_not_depend_on_the_order_of_readings(usage: list[tuple[int, int]]) -> None:
    assert charge_msat(TOU, usage) == charge_msat(TOU, list(reversed(usage)))


@given(
    st.integers(0, 10**12),
    st.dictionaries(st.integers(0, 64), st.integers(0, 10**6), min_size=1, max_size=12).filter(
        lambda w: sum(w.values()) > 0
    ),
)
def test_split_conserves_the_budget_and_follows_weights(
    total: int, weights: dict[int, int]
) -> None:
    parts = split_budget(total, weights)
    assert sum(parts.values()) == total
    assert set(parts) == set(weights)
    weight_sum = sum(weights.values())
    for dev, part in parts.items():
        assert abs(part * weight_sum - total * weights[dev]) < weight_sum  # within 1 msat


def test_split_refuses_nonsense() -> None:
    with pytest.raises(ConfigError):
        split_budget(100, {0: 0})
    with pytest.raises(ConfigError):
        split_budget(-1, {0: 1})
