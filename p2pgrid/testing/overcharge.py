"""A utility process that bills chosen invoices above the log, for end-to-end tests.

``python -m p2pgrid.testing.overcharge --config utility.toml [--control [--await-start]]
--overcharge SITE:DEVICE:PERIOD:PCT`` is ``p2pgrid utility run`` (the same
setup from the same file, :mod:`p2pgrid.config.setups`, and the same
:func:`p2pgrid.utility.process.run_utility`) with :class:`OverchargingInvoicer`:
the invoice of ``DEVICE`` of site ``SITE`` for ``PERIOD`` asks ``PCT`` percent
more than the log's bill, so a test sees the agent recompute the bill, dispute
the invoice and pay nothing. The launcher starts it through
:class:`p2pgrid.launcher.UtilityCommand`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2pgrid.billing import Bill
from p2pgrid.config import UtilityFile, node_commands, utility_setup, utility_start
from p2pgrid.ledger import Entry
from p2pgrid.service import run_process
from p2pgrid.utility import Invoicer
from p2pgrid.utility.process import run_utility, setup_logging

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
    parser = argparse.ArgumentParser(prog="python -m p2pgrid.testing.overcharge")
    parser.add_argument("--config", type=Path, required=True, help="the utility file")
    parser.add_argument("--control", action="store_true", help="as `utility run --control`")
    parser.add_argument("--await-start", action="store_true", help="as `... run --await-start`")
    parser.add_argument("--overcharge", type=overcharge_arg, action="append", default=[])
    args = parser.parse_args(argv)
    setup_logging()
    run_process(run_overcharging(args.config, (args.control, args.await_start), args.overcharge))


async def run_overcharging(
    config: Path, commands: tuple[bool, bool], overcharges: list[tuple[str, int, int, int]]
) -> None:
    """``p2pgrid utility run --config CONFIG``, billing ``overcharges`` above the log."""
    utility_file = UtilityFile(config)
    setup = utility_setup(utility_file)
    site_ids = {s.name: s.identity.site_id for s in setup.sites}
    overcharge = {(site_ids[s], d, p): pct for s, d, p, pct in overcharges}
    make = functools.partial(OverchargingInvoicer, overcharge=overcharge)
    start = utility_start(utility_file)
    await run_utility(setup, make_invoicer=make, source=lambda: node_commands(start, *commands))


if __name__ == "__main__":
    main()
