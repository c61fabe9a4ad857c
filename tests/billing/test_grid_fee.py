"""The utility's grid fee on energy bought from another site: its own invoice line."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.billing import MIN_BILL_MSAT, FlatTariff, TimeOfUseTariff, bill_of_usage, grid_fee_msat
from p2pgrid.errors import ConfigError
from p2pgrid.scenario_schema import TariffModel

TARIFF = FlatTariff(250_000, grid_fee_msat_per_kwh=30_000)


def test_the_fee_is_the_transit_energy_times_the_fee_rounded_up_once() -> None:
    assert grid_fee_msat(TARIFF, 0) == 0
    assert grid_fee_msat(TARIFF, 40) == 1_200  # 40 Wh x 30 sat/kWh
    assert grid_fee_msat(FlatTariff(1, grid_fee_msat_per_kwh=7), 1) == 1  # 0.007 msat -> 1
    assert grid_fee_msat(FlatTariff(250_000), 10_000) == 0  # no fee configured


def test_the_bill_adds_the_fee_as_its_own_line() -> None:
    bill = bill_of_usage([(0, 100), (1, 20)], device=2, period=5, tariff=TARIFF, transit_wh=40)
    assert bill.energy_wh == 120
    assert bill.transit_wh == 40
    assert bill.grid_fee_msat == 1_200
    assert bill.energy_msat == 30_000  # 120 Wh x 250 sat/kWh
    assert bill.amount_msat == 31_200


def test_a_bill_of_the_fee_alone_is_raised_to_the_smallest_payment() -> None:
    bill = bill_of_usage([], device=0, period=1, tariff=TARIFF, transit_wh=1)
    assert bill.grid_fee_msat == 30
    assert bill.amount_msat == MIN_BILL_MSAT  # the raise goes to the energy line
    assert bill.energy_msat == MIN_BILL_MSAT - 30


def test_no_transit_bills_as_before() -> None:
    with_fee = bill_of_usage([(3, 77)], device=1, period=2, tariff=TARIFF)
    without = bill_of_usage([(3, 77)], device=1, period=2, tariff=FlatTariff(250_000))
    assert with_fee == without


@given(transit=st.integers(0, 10**9), fee=st.integers(0, 10**9))
def test_the_fee_never_undercharges_and_overcharges_by_less_than_one_msat(
    transit: int, fee: int
) -> None:
    charged = grid_fee_msat(FlatTariff(1, grid_fee_msat_per_kwh=fee), transit)
    assert 0 <= charged * 1000 - transit * fee < 1000


def test_bad_fees_are_refused() -> None:
    with pytest.raises(ConfigError):
        FlatTariff(1, grid_fee_msat_per_kwh=-1)
    with pytest.raises(ConfigError):
        TimeOfUseTariff(((0, 5),), grid_fee_msat_per_kwh=-1)
    with pytest.raises(ValueError, match="negative"):
        grid_fee_msat(TARIFF, -1)


def test_the_tariff_table_takes_the_fee_and_defaults_to_none() -> None:
    assert TariffModel(msat_per_kwh=5).flat == FlatTariff(5, 0)
    model = TariffModel.model_validate({"msat_per_kwh": 5, "grid_fee_msat_per_kwh": 9})
    assert model.flat.grid_fee_msat_per_kwh == 9
    with pytest.raises(ValueError, match="grid_fee"):
        TariffModel.model_validate({"msat_per_kwh": 5, "grid_fee_msat_per_kwh": -1})
