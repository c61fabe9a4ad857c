"""The period report a site owner reads: a table and a picture (PNG).

Per device: class, allocation, energy used and its cost, its overdraft (the
metered cost beyond its allocation and the shares it received: what the site
budget did not cover), shares borrowed and given, energy bought and sold,
leftover allowance bought and sold and the sats paid and earned for it
(docs/market.md 2.9), carry-over, balance left, Lightning routing fees paid on
top, and the findings of the inefficiency view
(:func:`p2pgrid.ledger.inefficiencies`): the devices that consume more than
they should, against their own history and their class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from p2pgrid.billing import Tariff, grid_fee_msat
from p2pgrid.ledger import Inefficiency, LedgerView, inefficiencies


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceLine:
    device: int
    device_class: str
    allocation_msat: int
    energy_wh: int
    spent_msat: int
    overdraft_msat: int
    borrowed_msat: int
    given_msat: int
    bought_wh: int
    sold_wh: int
    carried_out_msat: int
    balance_msat: int
    fees_msat: int
    findings: tuple[str, ...]
    name: str = ""  # the owner's label (device_info), if the log has one
    transit_wh: int = 0  # bought from producers of other sites
    grid_fee_msat: int = 0  # the grid fee line of its invoice (docs/market.md, section 7)
    allowance_bought_msat: int = 0
    allowance_sold_msat: int = 0
    allowance_paid_msat: int = 0  # sats paid for allowance bought (not budget)
    allowance_earned_msat: int = 0  # sats earned for allowance sold (not budget)


@dataclasses.dataclass(frozen=True, slots=True)
class PeriodReport:
    site: str
    period: int
    lines: tuple[DeviceLine, ...]
    invoiced_msat: int
    paid_msat: int
    disputes: int
    fees_msat: int = 0

    @property
    def grid_fee_msat(self) -> int:
        """The grid fee lines of the period's bills: energy from other sites."""
        return sum(line.grid_fee_msat for line in self.lines)

    @property
    def transit_wh(self) -> int:
        return sum(line.transit_wh for line in self.lines)

    @property
    def overdraft_msat(self) -> int:
        """The site's overdraft: consumption billed beyond the devices' budgets."""
        return sum(line.overdraft_msat for line in self.lines)

    @property
    def overdrawn(self) -> tuple[int, ...]:
        """Devices in overdraft: for them the budget did not bind."""
        return tuple(line.device for line in self.lines if line.overdraft_msat > 0)

    @property
    def alert(self) -> str:
        """One line for the owner when the budget did not bind, else empty."""
        if not self.overdraft_msat:
            return ""
        return (
            f"OVERDRAFT {_sat(self.overdraft_msat)} sat on {len(self.overdrawn)} device(s): "
            "the budget did not bind"
        )

    @property
    def wasteful(self) -> tuple[int, ...]:
        """Devices flagged for using more than they should (not only for borrowing)."""
        waste = {"exceeded_allocation", "above_history", "above_class"}
        return tuple(line.device for line in self.lines if waste & set(line.findings))


def period_report(
    view: LedgerView,
    period: int,
    *,
    site: str,
    names: Mapping[int, str] | None = None,
    tariff: Tariff | None = None,
) -> PeriodReport:
    """The report of ``period``; ``names`` (device -> label) names the devices;
    with ``tariff``, each device's grid fee line (:func:`p2pgrid.billing.grid_fee_msat`
    of its transit energy, as on its invoice)."""
    found: dict[int, Inefficiency] = {f.device: f for f in inefficiencies(view, period)}
    now = view.period(period)
    lines = []
    for device, acc in sorted(now.accounts.items()):
        finding = found.get(device)
        lines.append(
            DeviceLine(
                device=device,
                device_class=view.device_classes.get(device, "?"),
                allocation_msat=acc.allocation_msat + acc.carried_in_msat,
                energy_wh=acc.energy_wh,
                spent_msat=acc.spent_msat,
                overdraft_msat=acc.overdraft_msat,
                borrowed_msat=acc.received_msat,
                given_msat=acc.given_msat,
                bought_wh=acc.bought_wh,
                sold_wh=acc.sold_wh,
                carried_out_msat=acc.carried_out_msat,
                balance_msat=acc.balance_msat,
                fees_msat=acc.fees_msat,
                findings=tuple(sorted(finding.findings)) if finding else (),
                name=(names or {}).get(device, ""),
                transit_wh=acc.transit_wh,
                grid_fee_msat=grid_fee_msat(tariff, acc.transit_wh) if tariff else 0,
                allowance_bought_msat=acc.allowance_bought_msat,
                allowance_sold_msat=acc.allowance_sold_msat,
                allowance_paid_msat=acc.allowance_paid_msat,
                allowance_earned_msat=acc.allowance_earned_msat,
            )
        )
    return PeriodReport(
        site,
        period,
        tuple(lines),
        now.invoiced_msat,
        now.paid_msat,
        len(now.disputes),
        now.fees_msat,
    )


def _sat(msat: int) -> str:
    return f"{msat / 1000:,.3f}"


def report_table(report: PeriodReport) -> Table:
    """The report as a rich table (amounts in sat, energy in Wh)."""
    caption = (
        f"invoiced {_sat(report.invoiced_msat)} sat, paid {_sat(report.paid_msat)} sat, "
        f"{report.disputes} dispute(s), routing fees {_sat(report.fees_msat)} sat"
    )
    if report.transit_wh:
        caption += (
            f"\ngrid fee {_sat(report.grid_fee_msat)} sat on {report.transit_wh:,} Wh "
            "bought from other sites (on the invoices)"
        )
    if report.alert:
        caption += f"\n{report.alert}"
    table = Table(
        title=f"site {escape(report.site)}, period {report.period}",  # names are data
        caption=caption,
    )
    # A period with energy from other sites shows each device's grid fee line.
    transit = ("transit Wh", "grid fee sat") if report.transit_wh else ()
    # Leftover allowance traded (2.9): two columns, only in a period that has any.
    allowance = any(line.allowance_bought_msat or line.allowance_sold_msat
                    for line in report.lines)  # fmt: skip
    for name in ("device", "class", "alloc sat", "used Wh", "cost sat", "overdraft sat",
                 "borrowed", "given",
                 "bought Wh", *transit, "sold Wh",
                 *(("allowance in/out sat", "allowance paid/earned sat") if allowance else ()),
                 "carried", "left sat", "fees sat",
                 "findings"):  # fmt: skip
        table.add_column(
            name, justify="left" if name in {"device", "class", "findings"} else "right"
        )
    for line in report.lines:
        flagged = line.device in report.wasteful
        fee = (f"{line.transit_wh:,}", _sat(line.grid_fee_msat)) if transit else ()
        traded = (
            (
                f"{_sat(line.allowance_bought_msat)}/{_sat(line.allowance_sold_msat)}",
                f"{_sat(line.allowance_paid_msat)}/{_sat(line.allowance_earned_msat)}",
            )
            if allowance
            else ()
        )
        table.add_row(
            escape(line.name or str(line.device)),  # from the log: any text
            escape(line.device_class),
            _sat(line.allocation_msat),
            f"{line.energy_wh:,}",
            _sat(line.spent_msat + line.overdraft_msat),
            _sat(line.overdraft_msat),
            _sat(line.borrowed_msat),
            _sat(line.given_msat),
            f"{line.bought_wh:,}",
            *fee,
            f"{line.sold_wh:,}",
            *traded,
            _sat(line.carried_out_msat),
            _sat(line.balance_msat),
            _sat(line.fees_msat),
            escape(", ".join(line.findings)) or "-",
            style="bold red" if flagged else None,
        )
    return table


def report_png(report: PeriodReport, path: Path) -> Path:
    """Allocation against cost per device; wasteful devices in red. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    labels = [f"{line.name or line.device}\n{line.device_class}" for line in report.lines]
    xs = list(range(len(report.lines)))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(xs) + 2), 4.0), dpi=100)
    try:
        ax.bar([x - 0.2 for x in xs], [ln.allocation_msat / 1000 for ln in report.lines],
               width=0.4, label="allocation (sat)", color="#8fb3d9")  # fmt: skip
        colors = ["#d9534f" if ln.device in report.wasteful else "#5cb85c" for ln in report.lines]
        ax.bar([x + 0.2 for x in xs],
               [(ln.spent_msat + ln.overdraft_msat) / 1000 for ln in report.lines],
               width=0.4, label="energy cost (sat)", color=colors)  # fmt: skip
        ax.set_xticks(xs, labels)
        ax.set_ylabel("sat")
        ax.set_title(f"site {report.site}, period {report.period} (red: uses more than it should)")
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
