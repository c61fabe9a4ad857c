"""What a device owes for a period, computed from the log alone.

The utility and every agent run the same fold over the same replicated log, so
they agree on every invoice to the msat: the charge is the device's metered
energy of the period times the tariff of each reading's interval
(:func:`p2pgrid.billing.bill_of_usage`, rounded up once per period). A reading's
interval of the day comes from its ``interval_start_ms`` (modelled time, UTC).
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pgrid.billing import Bill, Tariff, bill_of_usage
from p2pgrid.ledger.bodies import Invoice, MeterReading, Payment, Role
from p2pgrid.ledger.entry import Entry


def bill(entries: Iterable[Entry], *, device: int, period: int, tariff: Tariff) -> Bill:
    """The bill of ``device`` for ``period`` from its meter readings in ``entries``."""
    usage: list[tuple[int, int]] = []
    for entry in entries:
        body = entry.body
        if (
            isinstance(body, MeterReading)
            and entry.period == period
            and entry.author.role is Role.DEVICE
            and entry.author.index == device
        ):
            usage.append((body.interval_start_ms // (body.interval_s * 1000), body.energy_wh))
    return bill_of_usage(usage, device=device, period=period, tariff=tariff)


def metered_devices(entries: Iterable[Entry], period: int) -> list[int]:
    """Devices with at least one meter reading in ``period``, ascending."""
    return sorted(
        {e.author.index for e in entries if e.period == period and isinstance(e.body, MeterReading)}
    )


def invoices_of(entries: Iterable[Entry], *, device: int, period: int) -> list[Entry]:
    """The utility's invoice entries for (``device``, ``period``)."""
    return [
        e
        for e in entries
        if e.period == period
        and e.author.role is Role.UTILITY
        and isinstance(e.body, Invoice)
        and e.body.device == device
    ]


def paid_hashes(entries: Iterable[Entry]) -> set[bytes]:
    """Payment hashes with a payment proof in the log."""
    return {e.body.payment_hash for e in entries if isinstance(e.body, Payment)}
