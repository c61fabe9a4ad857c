"""Billing periods (state machine), the clock that drives them, tariffs and budget splits."""

from p2pgrid.billing.period import (
    ALLOWED,
    REAL_INTERVAL_S,
    BillingPeriod,
    PeriodClock,
    PeriodState,
    TransitionError,
)
from p2pgrid.billing.tariff import (
    FlatTariff,
    Tariff,
    TimeOfUseTariff,
    charge_msat,
    split_budget,
)

__all__ = [
    "ALLOWED",
    "REAL_INTERVAL_S",
    "BillingPeriod",
    "FlatTariff",
    "PeriodClock",
    "PeriodState",
    "Tariff",
    "TimeOfUseTariff",
    "TransitionError",
    "charge_msat",
    "split_budget",
]
