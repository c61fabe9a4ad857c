"""What happened on a site, entry by entry: a pure read of the log for people.

:func:`activity` turns a site's entries into the lines an operator reads: the
devices' names (the owner's ``device_info`` labels), every movement of money
between devices and sites (shares, energy sales, site shares) in log order,
the invoices with their Lightning state as the log knows it, the payments, the
curtailments, and per-period indicators. It only reads entries; the money of
each device stays the business of :func:`p2pgrid.ledger.fold` (a share the
payer could not fund is listed here as logged, and counted there as unfunded).

Invoice states as the log knows them: ``paid`` (a ``payment`` entry carries its
preimage, so Lightning settled it), ``disputed`` (the device disputed the
invoice entry), else ``open``.

Indicators per period (ratios for display; the amounts stay integer):
``self_sufficiency`` is the energy bought from neighbours over all energy the
devices used (neighbours' plus metered grid import); ``moved_devices`` and
``moved_sites`` are the shares given to devices of the site and to the owner's
other sites over what the owner allocated. Self-consumption (the share of the
site's own production used on the site) is not computed: the log records a
producer's output only as far as it is sold to a neighbour.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable

from p2pgrid.ledger.bodies import (
    Allocation,
    AllowanceSale,
    Curtailment,
    DeviceInfo,
    Dispute,
    Invoice,
    MeterReading,
    Payment,
    Role,
    Sale,
    SaleSide,
    Share,
    SiteSale,
    SiteShare,
    SiteShareIn,
)
from p2pgrid.ledger.entry import Entry, decode_entry
from p2pgrid.ledger.errors import MalformedError
from p2pgrid.ledger.inefficiency import DEFAULT_TOLERANCE_PCT, Finding, Inefficiency
from p2pgrid.ledger.views import canonical


class FlowKind(enum.StrEnum):
    SHARE = "share"  # budget given to a device of the site
    SALE = "sale"  # energy bought from a neighbour (buyer pays seller)
    SITE_SHARE = "site_share"  # budget given to a device of another site
    SITE_SHARE_IN = "site_share_in"  # budget received from another site
    SITE_SALE = "site_sale"  # energy bought from a producer of another site
    SITE_SALE_IN = "site_sale_in"  # energy sold to a device of another site
    ALLOWANCE = "allowance"  # leftover allowance bought (buyer pays the price to the seller)


class InvoiceState(enum.StrEnum):
    OPEN = "open"
    PAID = "paid"
    DISPUTED = "disputed"


@dataclasses.dataclass(frozen=True, slots=True)
class Flow:
    """Money moved by one entry: ``payer`` to ``payee`` (device indexes).

    ``other_site`` is the other site's hash (hex) for site shares and sales: the
    payee of a ``site_share`` or a purchase (``site_sale``) and the payer of a
    ``site_share_in`` or a sale (``site_sale_in``) live there."""

    kind: FlowKind
    period: int
    timestamp_ms: int
    entry_id: str
    payer: int | None
    payee: int | None
    amount_msat: int
    energy_wh: int = 0
    other_site: str = ""

    @property
    def payer_abroad(self) -> bool:
        """The payer is a device of ``other_site``."""
        return self.kind in (FlowKind.SITE_SHARE_IN, FlowKind.SITE_SALE_IN)

    @property
    def payee_abroad(self) -> bool:
        """The payee is a device of ``other_site``."""
        return self.kind in (FlowKind.SITE_SHARE, FlowKind.SITE_SALE)


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceLine:
    period: int
    device: int
    amount_msat: int
    energy_wh: int
    payment_hash: str
    state: InvoiceState
    paid_at_ms: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PaymentLine:
    """A Lightning payment a device logged: of an invoice, or to a neighbour (its
    energy, or its leftover allowance)."""

    period: int
    timestamp_ms: int
    device: int
    amount_msat: int
    payment_hash: str
    of_invoice: bool


@dataclasses.dataclass(frozen=True, slots=True)
class CurtailmentLine:
    period: int
    device: int
    start_ms: int
    duration_s: int
    max_power_w: int


@dataclasses.dataclass(frozen=True, slots=True)
class PeriodIndicators:
    period: int
    allocated_msat: int
    grid_wh: int
    local_wh: int
    moved_devices_msat: int
    moved_sites_msat: int
    self_sufficiency: float | None
    moved_devices: float | None
    moved_sites: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Activity:
    names: dict[int, str]
    classes: dict[int, str]
    flows: tuple[Flow, ...]
    invoices: tuple[InvoiceLine, ...]
    payments: tuple[PaymentLine, ...]
    curtailments: tuple[CurtailmentLine, ...]
    indicators: tuple[PeriodIndicators, ...]
    entries: int

    def name(self, device: int | None) -> str:
        if device is None:
            return "?"
        return self.names.get(device, f"device {device}")

    def paid_msat(self, device: int, period: int) -> int:
        """What ``device`` paid of its invoices of ``period`` (each invoice once)."""
        return sum(
            i.amount_msat
            for i in self.invoices
            if i.device == device and i.period == period and i.state is InvoiceState.PAID
        )


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def activity(entries: Iterable[Entry], *, peer_sites: Iterable[bytes] = ()) -> Activity:
    """Read ``entries`` (any order, duplicates and siblings allowed) into lines;
    ``peer_sites`` (site hashes of the owner's other sites) name the givers of
    ``site_share_in`` entries."""
    peer_sites = tuple(peer_sites)
    ordered, _ = canonical(entries)
    names: dict[int, str] = {}
    classes: dict[int, str] = {}
    flows: list[Flow] = []
    invoices: dict[bytes, Entry] = {}
    disputed_ids: set[tuple[int, int, int]] = set()
    paid: dict[bytes, int] = {}
    payments: list[PaymentLine] = []
    curtailments: list[CurtailmentLine] = []
    periods: dict[int, dict[str, int]] = {}
    # Like the fold: a payment pays an invoice logged anywhere in the log, once.
    invoiced = {e.body.payment_hash for e in ordered if isinstance(e.body, Invoice)}
    for e in ordered:
        body, me = e.body, e.author.index
        per = periods.setdefault(
            e.period, dict.fromkeys(("alloc", "grid", "local", "dev", "site"), 0)
        )
        at = (e.period, e.timestamp_ms, e.id.hex())
        if isinstance(body, DeviceInfo):
            names[body.device] = body.label or f"device {body.device}"
            classes[body.device] = body.device_class
        elif isinstance(body, Allocation):
            per["alloc"] += body.amount_msat
        elif isinstance(body, MeterReading):
            per["grid"] += body.energy_wh
        elif isinstance(body, Share):
            per["dev"] += body.amount_msat
            flows.append(
                Flow(
                    FlowKind.SHARE,
                    *at,
                    payer=me,
                    payee=body.to_device,
                    amount_msat=body.amount_msat,
                )
            )
        elif isinstance(body, Sale):
            per["local"] += body.energy_wh
            flows.append(
                Flow(
                    FlowKind.SALE,
                    *at,
                    payer=me,
                    payee=body.seller,
                    amount_msat=body.amount_msat,
                    energy_wh=body.energy_wh,
                )
            )
        elif isinstance(body, SiteShare):
            per["site"] += body.amount_msat
            flows.append(
                Flow(
                    FlowKind.SITE_SHARE,
                    *at,
                    payer=me,
                    payee=body.to_device,
                    amount_msat=body.amount_msat,
                    other_site=body.to_site.hex(),
                )
            )
        elif isinstance(body, SiteShareIn):
            flows.append(_site_share_in(body, me, e, peer_sites))
        elif isinstance(body, SiteSale):
            bought = body.side == SaleSide.BOUGHT
            if bought:
                per["local"] += body.energy_wh  # from a neighbour, not the grid
            flows.append(
                Flow(
                    FlowKind.SITE_SALE if bought else FlowKind.SITE_SALE_IN,
                    *at,
                    payer=me if bought else body.other_device,
                    payee=body.other_device if bought else me,
                    amount_msat=body.amount_msat,
                    energy_wh=body.energy_wh,
                    other_site=body.other_site.hex(),
                )
            )
        elif isinstance(body, AllowanceSale):  # the sats of the price: buyer -> seller
            flows.append(
                Flow(
                    FlowKind.ALLOWANCE,
                    *at,
                    payer=body.buyer,
                    payee=me,
                    amount_msat=body.price_msat,
                )
            )
        elif isinstance(body, Invoice):
            invoices[body.payment_hash] = e
        elif isinstance(body, Payment):
            of_invoice = body.payment_hash in invoiced and body.payment_hash not in paid
            if of_invoice:
                paid[body.payment_hash] = e.timestamp_ms
            payments.append(
                PaymentLine(
                    e.period,
                    e.timestamp_ms,
                    me,
                    body.amount_msat,
                    body.payment_hash.hex(),
                    of_invoice,
                )
            )
        elif isinstance(body, Curtailment):
            curtailments.append(
                CurtailmentLine(
                    e.period, body.device, body.start_ms, body.duration_s, body.max_power_w
                )
            )
        elif isinstance(body, Dispute):
            disputed_ids.add((body.target_role, body.target_index, body.target_seq))
    lines = []
    for h, e in invoices.items():
        assert isinstance(e.body, Invoice)
        state = InvoiceState.OPEN
        if h in paid:
            state = InvoiceState.PAID
        elif (int(Role.UTILITY), e.author.index, e.seq) in disputed_ids:
            state = InvoiceState.DISPUTED
        lines.append(
            InvoiceLine(
                e.period,
                e.body.device,
                e.body.amount_msat,
                e.body.energy_wh,
                h.hex(),
                state,
                paid.get(h),
            )
        )
    indicators = []
    for period, p in sorted(periods.items()):
        indicators.append(
            PeriodIndicators(
                period=period,
                allocated_msat=p["alloc"],
                grid_wh=p["grid"],
                local_wh=p["local"],
                moved_devices_msat=p["dev"],
                moved_sites_msat=p["site"],
                self_sufficiency=_ratio(p["local"], p["local"] + p["grid"]),
                moved_devices=_ratio(p["dev"], p["alloc"]),
                moved_sites=_ratio(p["site"], p["alloc"]),
            )
        )
    return Activity(
        names=names,
        classes=classes,
        flows=tuple(flows),
        invoices=tuple(sorted(lines, key=lambda i: (i.period, i.device))),
        payments=tuple(payments),
        curtailments=tuple(curtailments),
        indicators=tuple(indicators),
        entries=len(ordered),
    )


def _site_share_in(body: SiteShareIn, me: int, e: Entry, peer_sites: Iterable[bytes]) -> Flow:
    """The receiving end of a site share: amount and giver read from the evidence
    (the giver's signed entry) if it decodes for one of ``peer_sites``; whether it
    counts is the fold's business (it verifies the signature)."""
    amount, site, payer = 0, "", None
    try:
        raw = bytes.fromhex(body.evidence)
    except ValueError:
        raw, peer_sites = b"", ()  # not hex: nothing to read (the fold credits nothing)
    for site_h in peer_sites:
        try:
            given = decode_entry(raw, site_h)
        except MalformedError:
            continue
        if isinstance(given.body, SiteShare):
            amount, site, payer = given.body.amount_msat, site_h.hex(), given.author.index
            break
    return Flow(
        FlowKind.SITE_SHARE_IN,
        e.period,
        e.timestamp_ms,
        e.id.hex(),
        payer,
        me,
        amount,
        other_site=site,
    )


def explain(found: Inefficiency, *, tolerance_pct: int = DEFAULT_TOLERANCE_PCT) -> str:
    """Why a device was flagged, in words with the numbers behind each finding."""
    parts = []
    for f in sorted(found.findings):
        if f is Finding.BORROWED:
            parts.append("received shares from other devices")
        elif f is Finding.EXCEEDED_ALLOCATION:
            parts.append("used more than its own allocation")
        elif f is Finding.ABOVE_HISTORY:
            parts.append(
                f"used {found.energy_wh} Wh, over {tolerance_pct} % of its own mean "
                f"{found.history_mean_wh} Wh"
            )
        elif f is Finding.ABOVE_CLASS:
            parts.append(
                f"used {found.energy_wh} Wh, over {tolerance_pct} % of its class's median "
                f"{found.class_median_wh} Wh"
            )
        elif f is Finding.EQUIVOCATED:
            parts.append("signed two different entries with one sequence number")
    return "; ".join(parts)
