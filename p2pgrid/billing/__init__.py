"""Billing periods (state machine), the clock that drives them, tariffs and budget splits."""

from p2pgrid.billing.invoices import (
    MIN_BILL_MSAT,
    Bill,
    bill_of_usage,
    invoice_memo,
    invoice_preimage,
)
from p2pgrid.billing.period import (
    ALLOWED,
    METER_INTERVAL_S,
    MODEL_EPOCH_MS,
    REAL_INTERVAL_S,
    BillingPeriod,
    MonthlyClock,
    PeriodClock,
    PeriodState,
    TransitionError,
    model_ms,
)
from p2pgrid.billing.tariff import (
    FlatTariff,
    Tariff,
    TimeOfUseTariff,
    charge_msat,
    grid_fee_msat,
    split_budget,
)

__all__ = [
    "ALLOWED",
    "METER_INTERVAL_S",
    "MIN_BILL_MSAT",
    "MODEL_EPOCH_MS",
    "REAL_INTERVAL_S",
    "Bill",
    "BillingPeriod",
    "FlatTariff",
    "MonthlyClock",
    "PeriodClock",
    "PeriodState",
    "Tariff",
    "TimeOfUseTariff",
    "TransitionError",
    "bill_of_usage",
    "charge_msat",
    "grid_fee_msat",
    "invoice_memo",
    "invoice_preimage",
    "model_ms",
    "split_budget",
]
