"""What a device owes for a period, computed from the log alone.

The utility and every agent run the same fold over the same replicated log, so
they agree on every invoice to the msat: the charge is the device's metered
energy of the period times the tariff of each reading's interval
(:func:`p2pgrid.billing.charge_msat`, rounded up once per period). A reading's
interval of the day comes from its ``interval_start_ms`` (modelled time, UTC).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from p2pgrid.billing.tariff import Tariff, charge_msat
from p2pgrid.ledger import Entry, Invoice, MeterReading, Payment, Role


@dataclass(frozen=True, slots=True)
class Bill:
    """One device's bill for one period."""

    device: int
    period: int
    energy_wh: int
    amount_msat: int


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
    return Bill(device, period, sum(wh for _, wh in usage), charge_msat(tariff, usage))


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


def invoice_preimage(secret: bytes, site_id: str, device: int, period: int) -> bytes:
    """The preimage of the invoice for (site, device, period): derived, so that a
    utility that crashed after creating an invoice re-creates the very same one."""
    key = f"p2pgrid/invoice/v1/{site_id}/{device}/{period}".encode()
    return hmac.new(secret, key, hashlib.sha256).digest()


def invoice_memo(site_id: str, device: int, period: int) -> str:
    return f"p2pgrid {site_id} device {device} period {period}"
