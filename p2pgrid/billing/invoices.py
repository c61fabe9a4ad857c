"""A device's bill for a period from plain usage, and the invoice's derived preimage and memo.

Pure: no log, no I/O. The log fold that gathers a device's usage from the
replicated log is :func:`p2pgrid.ledger.bill` (the utility and every agent run
it over the same log, so they agree on every invoice to the msat).

A period's bill that is above 0 but below :data:`MIN_BILL_MSAT` (1 sat) is
raised to it: Lightning channels carry no HTLC below 1 sat (lnd's default
``min_htlc``), so a smaller invoice could only fail. Every side computes the
bill with this function, so they still agree to the msat.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from p2pgrid.billing.tariff import Tariff, charge_msat

#: The smallest bill of a period with any grid energy: lnd's default ``min_htlc``.
MIN_BILL_MSAT = 1_000


@dataclass(frozen=True, slots=True)
class Bill:
    """One device's bill for one period."""

    device: int
    period: int
    energy_wh: int
    amount_msat: int


def bill_of_usage(
    usage: Iterable[tuple[int, int]], *, device: int, period: int, tariff: Tariff
) -> Bill:
    """The bill of ``device`` for ``period`` from ``(interval, energy_wh)`` pairs: the
    energy times the tariff of each interval (:func:`charge_msat`, rounded up once),
    at least :data:`MIN_BILL_MSAT` if it is above 0."""
    usage = list(usage)
    amount = charge_msat(tariff, usage)
    if 0 < amount < MIN_BILL_MSAT:
        amount = MIN_BILL_MSAT  # the least a channel carries (see the module docstring)
    return Bill(device, period, sum(wh for _, wh in usage), amount)


def invoice_preimage(secret: bytes, site_id: str, device: int, period: int) -> bytes:
    """The preimage of the invoice for (site, device, period): derived, so that a
    utility that crashed after creating an invoice re-creates the very same one."""
    key = f"p2pgrid/invoice/v1/{site_id}/{device}/{period}".encode()
    return hmac.new(secret, key, hashlib.sha256).digest()


def invoice_memo(site_id: str, device: int, period: int) -> str:
    return f"p2pgrid {site_id} device {device} period {period}"
