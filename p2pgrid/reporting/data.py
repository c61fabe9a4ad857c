"""A site's period as data: the device table with names, its CSV and JSON.

:func:`site_period` folds a replica's entries (:func:`p2pgrid.ledger.fold`) and
reads them for people (:func:`p2pgrid.ledger.activity.activity`): the period
report's lines (:mod:`p2pgrid.report`) named by the owner's labels, the
movements of shares and sales, the Lightning payments, the findings with their
reasons and the period's indicators. The CSV has one row per device with the
:class:`~p2pgrid.report.DeviceLine` columns (integer msat and Wh); the JSON
holds all of it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from p2pgrid.billing import Tariff
from p2pgrid.ledger import Entry, Membership, fold, inefficiencies
from p2pgrid.ledger.activity import (
    Activity,
    Flow,
    PaymentLine,
    PeriodIndicators,
    activity,
    explain,
)
from p2pgrid.report import DeviceLine, PeriodReport, period_report

#: The CSV's columns: a device line's fields, findings joined by ``;``.
CSV_COLUMNS = (
    "device",
    "name",
    *(f.name for f in dataclasses.fields(DeviceLine) if f.name not in {"device", "name"}),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    device: int
    name: str
    findings: tuple[str, ...]
    reason: str
    energy_wh: int
    reference_wh: int | None  # the larger of its history mean and its class median


@dataclasses.dataclass(frozen=True, slots=True)
class SitePeriod:
    """Everything the report shows of one site in one period."""

    report: PeriodReport
    names: Mapping[int, str]
    flows: tuple[Flow, ...]
    payments: tuple[PaymentLine, ...]
    findings: tuple[Finding, ...]  # most wasteful first
    indicators: PeriodIndicators | None
    other_sites: Mapping[str, str]  # site hash (hex) -> name

    def name(self, device: int | None) -> str:
        return "?" if device is None else self.names.get(device, f"device {device}")

    def payer(self, flow: Flow) -> str:
        """Who paid: a device of this site, or one of another site."""
        if flow.payer_abroad:
            return f"{self.other_sites.get(flow.other_site, 'other site')}: #{flow.payer}"
        return self.name(flow.payer)

    def payee(self, flow: Flow) -> str:
        """Who was paid: a device of this site, or one of another site."""
        if flow.payee_abroad:
            return f"{self.other_sites.get(flow.other_site, 'other site')}: #{flow.payee}"
        return self.name(flow.payee)


def site_period(
    entries: Iterable[Entry],
    period: int,
    *,
    site: str,
    site_hash: bytes,
    peer_sites: Mapping[bytes, Membership],
    peer_names: Mapping[bytes, str],
    tariff: Tariff | None = None,
) -> SitePeriod:
    entries = list(entries)
    view = fold(entries, site_hash=site_hash, peer_sites=peer_sites)
    act: Activity = activity(entries, peer_sites=peer_sites.keys())
    found = []
    for f in inefficiencies(view, period):
        refs = [r for r in (f.history_mean_wh, f.class_median_wh) if r is not None]
        found.append(
            Finding(
                f.device,
                act.name(f.device),
                tuple(sorted(f.findings)),
                explain(f),
                f.energy_wh,
                max(refs) if refs else None,
            )
        )
    found.sort(
        key=lambda x: (
            -x.energy_wh * 1000 // max(x.reference_wh or x.energy_wh, 1),
            -len(x.findings),
            x.device,
        )
    )
    return SitePeriod(
        report=period_report(view, period, site=site, names=act.names, tariff=tariff),
        names=act.names,
        flows=tuple(f for f in act.flows if f.period == period),
        payments=tuple(p for p in act.payments if p.period == period),
        findings=tuple(found),
        indicators=next((k for k in act.indicators if k.period == period), None),
        other_sites={h.hex(): n for h, n in peer_names.items()},
    )


def _row(line: DeviceLine) -> dict[str, Any]:
    row = dataclasses.asdict(line)
    row["findings"] = ";".join(line.findings)
    return {c: row[c] for c in CSV_COLUMNS}


def to_csv(data: SitePeriod) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for line in data.report.lines:
        writer.writerow(_row(line))
    return out.getvalue()


def to_json(data: SitePeriod) -> str:
    r = data.report
    doc = {
        "site": r.site,
        "period": r.period,
        "invoiced_msat": r.invoiced_msat,
        "paid_msat": r.paid_msat,
        "disputes": r.disputes,
        "overdraft_msat": r.overdraft_msat,
        "grid_fee_msat": r.grid_fee_msat,
        "transit_wh": r.transit_wh,
        "alert": r.alert,
        "devices": [dataclasses.asdict(line) for line in r.lines],
        "flows": [
            dataclasses.asdict(f) | {"from": data.payer(f), "to": data.payee(f)} for f in data.flows
        ],
        "payments": [dataclasses.asdict(p) | {"name": data.name(p.device)} for p in data.payments],
        "findings": [dataclasses.asdict(f) for f in data.findings],
        "indicators": dataclasses.asdict(data.indicators) if data.indicators else None,
    }
    return json.dumps(doc, indent=1)
