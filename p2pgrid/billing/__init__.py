"""Billing periods (state machine) and the clock that drives them."""

from p2pgrid.billing.period import (
    ALLOWED,
    REAL_INTERVAL_S,
    BillingPeriod,
    PeriodClock,
    PeriodState,
    TransitionError,
)

__all__ = [
    "ALLOWED",
    "REAL_INTERVAL_S",
    "BillingPeriod",
    "PeriodClock",
    "PeriodState",
    "TransitionError",
]
