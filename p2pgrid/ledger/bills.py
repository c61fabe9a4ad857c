"""What a device owes for a period, computed from the log alone.

The utility and every agent run the same fold over the same replicated log, so
they agree on every invoice to the msat: the charge is the device's metered
energy of the period times the tariff of each reading's interval
(:func:`p2pgrid.billing.bill_of_usage`, rounded up once per period). A reading's
interval of the day comes from its ``interval_start_ms`` (modelled time, UTC).
Its **transit energy** is the Wh of the device's ``site_sale`` entries of side
BOUGHT of the period (energy it bought from a producer of another site, as it
signed them): the grid fee's line of the bill (docs/market.md, section 7).
"""

from __future__ import annotations

from collections.abc import Iterable

from p2pgrid.billing import Bill, Tariff, bill_of_usage
from p2pgrid.ledger.bodies import Invoice, MeterReading, Payment, Role, SaleSide, SiteSale
from p2pgrid.ledger.entry import Author, Entry


def bill(entries: Iterable[Entry], *, device: int, period: int, tariff: Tariff) -> Bill:
    """The bill of ``device`` for ``period`` from its meter readings in ``entries``,
    with the grid fee of its transit energy (:func:`transit_wh`)."""
    usage: list[tuple[int, int]] = []
    transit = 0
    for entry in entries:
        body = entry.body
        if (
            entry.period != period
            or entry.author.role is not Role.DEVICE
            or entry.author.index != device
        ):
            continue
        if isinstance(body, MeterReading):
            usage.append((body.interval_start_ms // (body.interval_s * 1000), body.energy_wh))
        elif isinstance(body, SiteSale) and body.side == SaleSide.BOUGHT:
            transit += body.energy_wh
    return bill_of_usage(usage, device=device, period=period, tariff=tariff, transit_wh=transit)


def transit_wh(entries: Iterable[Entry], *, device: int, period: int) -> int:
    """The Wh ``device`` bought from producers of other sites in ``period``: its
    ``site_sale`` entries of side BOUGHT (one per seller and round, a record)."""
    return sum(
        e.body.energy_wh
        for e in entries
        if isinstance(e.body, SiteSale)
        and e.body.side == SaleSide.BOUGHT
        and e.period == period
        and e.author == Author.device(device)
    )


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
