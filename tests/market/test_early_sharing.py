"""Sharing sized from the forecast (market/sharing.py): a device never gives
what its own forecast of the rest of the period needs, a device that does not
know its day yet gives nothing, and a device asks early for exactly its
forecast shortfall; a device never both asks early and gives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pgrid.billing import FlatTariff
from p2pgrid.market import (
    Forecast,
    MarketError,
    early_need_msat,
    forecast_period,
    offer_amount,
    spare_msat,
)
from p2pgrid.meter import Reading

forecasts = st.builds(
    lambda cost, balance, samples: Forecast(0, 4, 8, cost // 250, 0, cost, balance, samples),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 1000),
)


@given(forecasts, st.integers(1, 200), st.integers(0, 100))
def test_a_giver_keeps_what_its_forecast_needs(
    forecast: Forecast, min_samples: int, offer_pct: int
) -> None:
    spare = spare_msat(forecast, min_samples=min_samples)
    given_msat = offer_amount(10**12, spare, offer_pct=offer_pct)
    assert 0 <= given_msat <= spare
    if spare:
        assert forecast.balance_msat - spare >= forecast.cost_msat  # the forecast stays covered
    if forecast.samples < min_samples:
        assert spare == 0


@given(forecasts, st.integers(1, 200))
def test_an_early_ask_is_the_forecast_shortfall_and_excludes_giving(
    forecast: Forecast, min_samples: int
) -> None:
    need = early_need_msat(forecast, min_samples=min_samples)
    if forecast.samples >= min_samples:
        assert need == max(0, forecast.cost_msat - forecast.balance_msat)
    else:
        assert need == 0
    assert need == 0 or spare_msat(forecast, min_samples=min_samples) == 0
    assert need + forecast.balance_msat >= forecast.cost_msat or need == 0


def test_an_ev_that_charges_later_in_the_period_gives_nothing_early() -> None:
    """The finding of the real-data run: an EV idle in the first intervals of the
    day gave its allocation away, then ran short when it charged. With a day of
    its history the forecast sees the charging and the EV keeps the money."""
    tariff = FlatTariff(250_000)
    day = [0] * 40 + [2_000] * 8 + [0] * 48  # charges at 10:00-12:00 every day
    history = [Reading(i, day[i % 96], 0) for i in range(96)]
    forecast = forecast_period(
        history,
        balance_msat=5_000_000,
        tariff=tariff,
        next_interval=96 + 1,
        period_bounds=(1, 2 * 96),
    )
    # 8 intervals x 2 000 Wh x 250 msat/Wh x 1.1 = 4 400 000 msat
    assert forecast.cost_msat == 4_400_000
    assert spare_msat(forecast, min_samples=32) == 600_000
    # Knowing only its first idle interval, it would have claimed the whole balance:
    blind = forecast_period(
        history[:1], balance_msat=5_000_000, tariff=tariff, next_interval=1, intervals_per_period=96
    )
    assert blind.headroom_msat == 5_000_000
    assert spare_msat(blind, min_samples=32) == 0


def test_min_samples_is_at_least_one() -> None:
    f = Forecast(0, 0, 1, 0, 0, 0, 0, 0)
    with pytest.raises(MarketError):
        spare_msat(f, min_samples=0)
    with pytest.raises(MarketError):
        early_need_msat(f, min_samples=0)


@given(forecasts, st.integers(1, 200), st.integers(0, 10**9))
def test_a_device_never_gives_what_it_received_in_the_period(
    forecast: Forecast, min_samples: int, received: int
) -> None:
    spare = spare_msat(forecast, min_samples=min_samples, received_msat=received)
    assert 0 <= spare <= spare_msat(forecast, min_samples=min_samples)
    assert spare <= max(0, forecast.balance_msat - received)
    if received == 0:
        assert spare == spare_msat(forecast, min_samples=min_samples)


def test_a_device_never_gives_on_a_share_it_received_at_the_last_interval() -> None:
    """The finding of the end-to-end run (tests/regtest/test_end_to_end.py): an EV
    got part of its need as a share, was curtailed anyway, and at the period's
    last interval, where its forecast covers nothing, counted its whole balance
    (the share) as spare and gave 282 360 msat on. It keeps it now; what it holds
    beyond what it received is still spare."""
    last = Forecast(0, 96, 96, 0, 0, 0, 282_360, 96)  # nothing left to meter
    assert last.headroom_msat == 282_360  # what it gave before the rule
    assert spare_msat(last, min_samples=4, received_msat=282_360) == 0
    richer = Forecast(0, 96, 96, 0, 0, 0, 500_000, 96)
    assert spare_msat(richer, min_samples=4, received_msat=282_360) == 217_640
    with pytest.raises(MarketError):
        spare_msat(last, received_msat=-1)
