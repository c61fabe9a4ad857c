"""The period's picture (PNG, matplotlib's Agg backend): four panels.

1. Budget against use per device: what it had (allocation, carry-in and shares
   received) against what its energy cost (from the grid and from neighbours),
   wasteful devices in red.
2. The flow of money between devices and sites: a two-column flow diagram
   (Sankey style), payers left, payees right, each band as wide as its sats;
   shares, energy sales and site shares in their own colours.
3. The inefficiency ranking: flagged devices, most above their reference
   first, each with the reason of its finding.
4. The period's Lightning payments in time: invoices paid to the utility and
   neighbours' energy, in sats.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from p2pgrid.ledger.activity import FlowKind
from p2pgrid.reporting.data import SitePeriod

COLOURS = {
    FlowKind.SHARE: "#4e79a7",
    FlowKind.SALE: "#f28e2b",
    FlowKind.SITE_SHARE: "#76b7b2",
    FlowKind.SITE_SHARE_IN: "#59a14f",
    FlowKind.SITE_SALE: "#e15759",
    FlowKind.SITE_SALE_IN: "#edc948",
    FlowKind.ALLOWANCE: "#b07aa1",
}


def _budget(ax: Any, data: SitePeriod) -> None:
    lines = data.report.lines
    xs = range(len(lines))
    had = [(ln.allocation_msat + ln.borrowed_msat) / 1000 for ln in lines]
    used = [(ln.spent_msat + ln.overdraft_msat) / 1000 for ln in lines]
    ax.bar([x - 0.2 for x in xs], had, width=0.4, color="#8fb3d9", label="budget + received")
    colours = ["#d9534f" if ln.device in data.report.wasteful else "#5cb85c" for ln in lines]
    ax.bar([x + 0.2 for x in xs], used, width=0.4, color=colours, label="grid energy cost")
    ax.set_xticks(list(xs), [f"{data.name(ln.device)}\n{ln.device_class}" for ln in lines])
    ax.set_ylabel("sat")
    ax.set_title("budget vs use (red: uses more than it should)")
    ax.legend(fontsize=8)


def _band(ax: Any, y0: tuple[float, float], y1: tuple[float, float], colour: str) -> None:
    """A band from the left column's span ``y0`` to the right column's ``y1``."""
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MPath

    (a0, a1), (b0, b1) = y0, y1
    verts = [(0.1, a0), (0.5, a0), (0.5, b0), (0.9, b0), (0.9, b1), (0.5, b1), (0.5, a1),
             (0.1, a1), (0.1, a0)]  # fmt: skip
    codes = [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4, MPath.LINETO,
             MPath.CURVE4, MPath.CURVE4, MPath.CURVE4, MPath.CLOSEPOLY]  # fmt: skip
    ax.add_patch(PathPatch(MPath(verts, codes), facecolor=colour, alpha=0.6, lw=0))


def _flows(ax: Any, data: SitePeriod) -> None:
    links: dict[tuple[str, str, FlowKind], int] = {}
    for f in data.flows:
        key = (data.payer(f), data.payee(f), f.kind)
        links[key] = links.get(key, 0) + f.amount_msat
    ax.set_title("who paid whom (shares, energy sales, site shares; sat)")
    ax.set_axis_off()
    if not links:
        ax.text(0.5, 0.5, "no shares or sales in this period", ha="center", va="center")
        return
    total = sum(links.values())
    gap = 0.03
    lefts = sorted({k[0] for k in links})
    rights = sorted({k[1] for k in links})
    scale = (1 - gap * max(len(lefts), len(rights))) / total

    def column(names: list[str], side: int) -> dict[str, float]:
        top, tops = 1.0, {}
        for n in names:
            tops[n] = top
            top -= sum(v for k, v in links.items() if k[side] == n) * scale + gap
        return tops

    ltop, rtop = column(lefts, 0), column(rights, 1)
    for (payer, payee, kind), msat in sorted(links.items()):
        h = msat * scale
        _band(ax, (ltop[payer] - h, ltop[payer]), (rtop[payee] - h, rtop[payee]), COLOURS[kind])
        ltop[payer] -= h
        rtop[payee] -= h
    for n, top in column(lefts, 0).items():
        h = sum(v for k, v in links.items() if k[0] == n)
        ax.add_patch(_rect(0.07, top - h * scale, h * scale))
        ax.text(
            0.06, top - h * scale / 2, f"{n}\n{h / 1000:,.1f}", ha="right", va="center", fontsize=8
        )
    for n, top in column(rights, 1).items():
        h = sum(v for k, v in links.items() if k[1] == n)
        ax.add_patch(_rect(0.9, top - h * scale, h * scale))
        ax.text(
            0.94, top - h * scale / 2, f"{n}\n{h / 1000:,.1f}", ha="left", va="center", fontsize=8
        )
    for i, (kind, colour) in enumerate(COLOURS.items()):
        ax.text(0.02 + i * 0.25, -0.06, kind.value.replace("_", " "), color=colour, fontsize=8,
                fontweight="bold")  # fmt: skip
    ax.set_xlim(-0.25, 1.25)
    ax.set_ylim(-0.1, 1.02)


def _rect(x: float, y: float, h: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 0.03, h, color="#333")


def _findings(ax: Any, data: SitePeriod) -> None:
    ax.set_title("inefficiency ranking (most above its reference first)")
    if not data.findings:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no findings in this period", ha="center", va="center")
        return
    found = list(reversed(data.findings))  # barh draws bottom-up
    ys = [float(y) for y in range(len(found))]
    ax.barh(ys, [f.energy_wh for f in found], color="#d9534f", height=0.35, label="used Wh")
    refs = [f.reference_wh or 0 for f in found]
    ax.barh(ys, refs, color="none", edgecolor="#333", height=0.35, label="reference Wh")
    ax.set_yticks(ys, [f.name for f in found])
    for y, f in zip(ys, found, strict=True):
        ax.text(0.01, y + 0.3, "\n".join(textwrap.wrap(f.reason, 100)[:3]), fontsize=7, va="center",
                color="#333", transform=ax.get_yaxis_transform())  # fmt: skip
    ax.set_ylim(-0.5, len(found) - 0.1)
    ax.set_xlabel("Wh")
    ax.legend(fontsize=8, loc="lower right")


def _payments(ax: Any, data: SitePeriod) -> None:
    ax.set_title("Lightning payments of the period")
    if not data.payments:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no payments logged in this period", ha="center", va="center")
        return
    t0 = min(p.timestamp_ms for p in data.payments)
    for of_invoice, colour, label in ((True, "#4e79a7", "invoice (utility)"),
                                      (False, "#f28e2b", "to a neighbour")):  # fmt: skip
        pts = [p for p in data.payments if p.of_invoice is of_invoice]
        if pts:
            xs = [(p.timestamp_ms - t0) / 1000 for p in pts]
            ys = [p.amount_msat / 1000 for p in pts]
            ax.vlines(xs, 0, ys, colors=colour, alpha=0.5)
            ax.scatter(xs, ys, color=colour, label=label, zorder=3)
            for x, y, p in zip(xs, ys, pts, strict=True):
                if p.of_invoice:
                    ax.annotate(data.name(p.device), (x, y), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")  # fmt: skip
    span = max((p.timestamp_ms - t0) / 1000 for p in data.payments)
    ax.set_xlim(-1 - span * 0.05, span * 1.1 + 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds after the period's first payment")
    ax.set_ylabel("sat")
    ax.legend(fontsize=8)


def period_figure(data: SitePeriod, path: Path) -> Path:
    """Draw the four panels of ``data`` into ``path`` (PNG). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9), dpi=80)
    try:
        r = data.report
        k = data.indicators
        kpi = ""
        if k is not None and k.self_sufficiency is not None:
            kpi = f" · self-sufficiency {100 * k.self_sufficiency:.1f} %"
        fig.suptitle(
            f"site {r.site}, period {r.period}: invoiced {r.invoiced_msat / 1000:,.3f} sat, "
            f"paid {r.paid_msat / 1000:,.3f} sat{kpi}"
        )
        _budget(axes[0][0], data)
        _flows(axes[0][1], data)
        _findings(axes[1][0], data)
        _payments(axes[1][1], data)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
