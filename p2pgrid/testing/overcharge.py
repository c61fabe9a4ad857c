"""A utility process that bills chosen invoices above the log, for end-to-end tests.

``python -m p2pgrid.testing.overcharge --scenario S --runtime R --overcharge
SITE:DEVICE:PERIOD:PCT`` is the utility process (:mod:`p2pgrid.utility.process`)
with :class:`OverchargingInvoicer`: the invoice of ``DEVICE`` of site ``SITE``
for ``PERIOD`` asks ``PCT`` percent more than the log's bill, so a test sees
the agent recompute the bill, dispute the invoice and pay nothing. The launcher
starts it through :class:`p2pgrid.launcher.UtilityCommand`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
from collections.abc import Mapping
from typing import Any

from p2pgrid.billing import Bill
from p2pgrid.ledger import Entry
from p2pgrid.scenario import load_scenario
from p2pgrid.service import run_process
from p2pgrid.utility import Invoicer
from p2pgrid.utility.process import argument_parser, run_from_files, setup_logging

log = logging.getLogger(__name__)

#: ``(site id, device, period) -> percent`` billed above the log.
Overcharges = Mapping[tuple[str, int, int], int]


class OverchargingInvoicer(Invoicer):
    """An :class:`Invoicer` that bills the chosen (device, period) ``pct`` % too much."""

    def __init__(self, *, overcharge: Overcharges, **invoicer: Any) -> None:
        super().__init__(**invoicer)
        self.overcharge = overcharge

    def due(self, entries: list[Entry], *, device: int, period: int) -> Bill:
        honest = super().due(entries, device=device, period=period)
        pct = self.overcharge.get((self.site.site_id, device, period), 0)
        if not pct:
            return honest
        log.warning("[%s] TEST: overcharging device %d by %d%%", self.name, device, pct)
        return dataclasses.replace(honest, amount_msat=honest.amount_msat * (100 + pct) // 100)


def overcharge_arg(text: str) -> tuple[str, int, int, int]:
    """``SITE:DEVICE:PERIOD:PCT`` (site by name) as a tuple."""
    try:
        site, device, period, pct = text.rsplit(":", 3)
        return site, int(device), int(period), int(pct)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"want SITE:DEVICE:PERIOD:PCT, got {text!r}") from exc


def main(argv: list[str] | None = None) -> None:
    parser = argument_parser(prog="python -m p2pgrid.testing.overcharge")
    parser.add_argument("--overcharge", type=overcharge_arg, action="append", default=[])
    args = parser.parse_args(argv)
    setup_logging()
    site_ids = {s.name: s.identity.site_id for s in load_scenario(args.scenario).sites}
    overcharge = {(site_ids[s], d, p): pct for s, d, p, pct in args.overcharge}
    make = functools.partial(OverchargingInvoicer, overcharge=overcharge)
    run_process(run_from_files(args.scenario, args.runtime, make_invoicer=make))


if __name__ == "__main__":
    main()
