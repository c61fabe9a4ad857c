"""Reports from a real fold over two periods: CSV and JSON columns equal the
views, names replace indexes, and a picture is drawn for every period."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from p2pgrid.config.deployment import write_deployment
from p2pgrid.errors import ConfigError
from p2pgrid.ledger import (
    Allocation,
    Author,
    DeviceInfo,
    Entry,
    Invoice,
    MeterReading,
    Payment,
    Sale,
    Share,
    fold,
)
from p2pgrid.ledger.activity import InvoiceState, activity
from p2pgrid.reporting import (
    CSV_COLUMNS,
    ReportRequest,
    period_figure,
    run_report,
    site_period,
    to_csv,
    to_json,
)
from p2pgrid.scenario import load_scenario
from tests.config.test_deployment import START, fake_lnd
from tests.ledger.ledger_factory import T0_MS, Site

PERIOD_MS = 3_600_000
PREIMAGE = bytes(range(32))
HASH = hashlib.sha256(PREIMAGE).digest()


def two_periods() -> tuple[Site, list[Entry]]:
    site = Site.make(b"report data test")
    owner = site.chain(Author.owner())
    devices = {d: site.chain(Author.device(d)) for d in (0, 1, 2)}
    utility = site.chain(Author.utility())
    entries = [
        owner.next(DeviceInfo(0, "fridge", "kitchen"), period=0, ts=T0_MS),
        owner.next(DeviceInfo(1, "fridge", "garage"), period=0, ts=T0_MS),
        owner.next(DeviceInfo(2, "solar_inverter", "roof"), period=0, ts=T0_MS),
    ]
    for period in (0, 1):
        t = T0_MS + period * PERIOD_MS
        entries += [owner.next(Allocation(d, 100_000), period=period, ts=t) for d in (0, 1, 2)]
        entries.append(devices[0].next(Share(1, 30_000 + period, "help"), period=period, ts=t + 1))
        entries.append(devices[1].next(Sale(2, 40, 5_000), period=period, ts=t + 2))
        for d, wh in ((0, 100), (1, 500 + 300 * period), (2, 10)):
            reading = MeterReading(t, 900, wh, wh * 250)
            entries.append(devices[d].next(reading, period=period, ts=t + 3))
    invoice = Invoice(1, 125_000, 500, HASH, "lnbcrt1250n1...")
    entries.append(utility.next(invoice, period=0, ts=T0_MS + PERIOD_MS + 10))
    entries.append(
        devices[1].next(
            Payment(125_000, HASH, PREIMAGE, fee_msat=0), period=1, ts=T0_MS + PERIOD_MS + 20
        )
    )
    return site, entries


def test_csv_and_json_columns_equal_the_views(tmp_path: Path) -> None:
    site, entries = two_periods()
    view = fold(entries)
    for period in (0, 1):
        data = site_period(entries, period, site="shop", site_hash=site.membership.site_hash,
                           peer_sites={}, peer_names={})  # fmt: skip
        rows = list(csv.DictReader(io.StringIO(to_csv(data))))
        assert tuple(rows[0]) == CSV_COLUMNS
        assert [r["name"] for r in rows] == ["kitchen", "garage", "roof"]
        doc = json.loads(to_json(data))
        for row, line in zip(rows, doc["devices"], strict=True):
            acc = view.account(int(row["device"]), period)
            expected = {
                "allocation_msat": acc.allocation_msat + acc.carried_in_msat,
                "energy_wh": acc.energy_wh,
                "spent_msat": acc.spent_msat,
                "overdraft_msat": acc.overdraft_msat,
                "borrowed_msat": acc.received_msat,
                "given_msat": acc.given_msat,
                "bought_wh": acc.bought_wh,
                "sold_wh": acc.sold_wh,
                "carried_out_msat": acc.carried_out_msat,
                "balance_msat": acc.balance_msat,
            }
            assert {k: int(row[k]) for k in expected} == expected
            assert {k: line[k] for k in expected} == expected
        assert doc["paid_msat"] == view.period(period).paid_msat
        assert doc["invoiced_msat"] == view.period(period).invoiced_msat
        assert [(f["from"], f["to"], f["amount_msat"]) for f in doc["flows"]] == [
            ("kitchen", "garage", 30_000 + period),
            ("garage", "roof", 5_000),
        ]
        png = period_figure(data, tmp_path / f"shop-p{period}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    period1 = site_period(entries, 1, site="shop", site_hash=site.membership.site_hash,
                          peer_sites={}, peer_names={})  # fmt: skip
    garage = next(f for f in period1.findings if f.name == "garage")
    assert "above_class" in garage.findings
    assert "over 125 % of its class's median 100 Wh" in garage.reason


def test_an_invoice_is_paid_once_its_payment_is_logged() -> None:
    _, entries = two_periods()
    act = activity(entries)
    (invoice,) = act.invoices
    assert invoice.state is InvoiceState.PAID
    assert act.paid_msat(1, 0) == 125_000
    assert act.paid_msat(1, 1) == 0
    unpaid = activity(e for e in entries if not isinstance(e.body, Payment))
    assert unpaid.invoices[0].state is InvoiceState.OPEN


async def test_the_command_refuses_an_unknown_site_or_a_missing_replica(tmp_path: Path) -> None:
    console = Console(record=True)
    scenario = Path(__file__).parents[2] / "p2pgrid" / "scenarios" / "two_sites.toml"
    ask = ReportRequest(scenario, "store-1", None, None, tmp_path, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"no site file store-1\.toml \(TOML files there: none\)"):
        await run_report(console, ask)  # not the scenario's seeds: a run's keys are its own
    lnd = fake_lnd(load_scenario(scenario))
    write_deployment(scenario, tmp_path, lnd, start=START, port=lambda _: 0)
    with pytest.raises(ConfigError, match="no replica at"):
        await run_report(console, ask)
    there = r"TOML files there: store-1\.toml, store-2\.toml, utility\.toml"
    with pytest.raises(ConfigError, match=rf"no site 'store-9' .*\({there}\)"):
        await run_report(console, dataclasses.replace(ask, site="store-9"))
    assert not (tmp_path / "out").exists()
