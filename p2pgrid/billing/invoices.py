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

from p2pgrid.billing.tariff import Tariff, charge_msat, grid_fee_msat

#: The smallest bill of a period with any grid energy: lnd's default ``min_htlc``.
MIN_BILL_MSAT = 1_000


@dataclass(frozen=True, slots=True)
class Bill:
    """One device's bill for one period: ``amount_msat`` is the grid energy's
    charge plus ``grid_fee_msat``, the fee of the ``transit_wh`` it bought from
    other sites (a line of its own on the invoice)."""

    device: int
    period: int
    energy_wh: int
    amount_msat: int
    transit_wh: int = 0
    grid_fee_msat: int = 0

    @property
    def energy_msat(self) -> int:
        """The invoice's energy line: the amount less the grid fee."""
        return self.amount_msat - self.grid_fee_msat


def bill_of_usage(
    usage: Iterable[tuple[int, int]],
    *,
    device: int,
    period: int,
    tariff: Tariff,
    transit_wh: int = 0,
) -> Bill:
    """The bill of ``device`` for ``period`` from ``(interval, energy_wh)`` pairs: the
    energy times the tariff of each interval (:func:`charge_msat`, rounded up once),
    plus the grid fee of ``transit_wh`` Wh bought from other sites
    (:func:`grid_fee_msat`, rounded up once), at least :data:`MIN_BILL_MSAT` if
    it is above 0 (the raise goes to the energy line)."""
    usage = list(usage)
    fee = grid_fee_msat(tariff, transit_wh)
    amount = charge_msat(tariff, usage) + fee
    if 0 < amount < MIN_BILL_MSAT:
        amount = MIN_BILL_MSAT  # the least a channel carries (see the module docstring)
    return Bill(device, period, sum(wh for _, wh in usage), amount, transit_wh, fee)


def invoice_preimage(
    secret: bytes, site_id: str, device: int, period: int, *, revision: int = 0
) -> bytes:
    """The preimage of revision ``revision`` of the invoice for (site, device,
    period): derived, so that a utility that crashed after creating an invoice
    re-creates the very same one. Revision 0 is the invoice's first (its key has
    no revision part); revision ``r`` > 0 replaces an unlogged revision that lnd
    holds with another bill, cancelled (its hash is burned), or an expired one:
    ``HMAC-SHA256(secret, "p2pgrid/invoice/v1/<site_id>/<device>/<period>/<r>")``
    (:meth:`p2pgrid.utility.Invoicer.invoice_period`)."""
    key = f"p2pgrid/invoice/v1/{site_id}/{device}/{period}"
    if revision:
        key += f"/{revision}"
    return hmac.new(secret, key.encode(), hashlib.sha256).digest()


def invoice_memo(
    site_id: str, device: int, period: int, *, transit_wh: int = 0, grid_fee_msat: int = 0
) -> str:
    """The description of the invoice of (site, device, period); a bill with a
    grid fee names its line: ``; grid fee <msat> msat on <Wh> Wh from other sites``
    (the payer recomputes the bill, so the description binds the fee too)."""
    memo = f"p2pgrid {site_id} device {device} period {period}"
    if grid_fee_msat:
        memo += f"; grid fee {grid_fee_msat} msat on {transit_wh} Wh from other sites"
    return memo
