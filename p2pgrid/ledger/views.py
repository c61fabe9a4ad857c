"""Views: pure folds over log entries into per-period, per-device accounts.

The fold is deterministic: entries are taken per period in ascending order,
within a period by (timestamp, author, seq, id). Of equivocating siblings only
the one with the smallest id counts; the author is listed in ``equivocators``.

Money rules (all integer msat):

- ``allocation`` (owner) credits the device; ``carry_over`` debits it and
  credits it again at the start of the next period.
- ``share`` and ``sale`` move money from the author (the payer) to the other
  device *only if the payer's balance covers the whole amount* at that point of
  the fold; otherwise nothing moves and the amount is counted as ``unfunded``.
  The same rule applies to ``carry_over``.
- A ``meter_reading``'s cost is paid from the balance as far as it goes; the
  rest is ``overdraft_msat`` (energy already used, owed to the utility).
- ``site_share`` debits the giver like ``share``; the receiving device of the
  other site credits itself with ``site_share_in`` carrying the giver's signed
  entry, which counts only if it verifies against that site's membership (given
  to :func:`fold` as ``peer_sites``), names this site and this device, and has
  not been counted before. Without ``peer_sites`` nothing is credited.
- ``site_sale`` (energy traded with a device of another site): the buyer's
  (side BOUGHT) debits it like ``sale``; the seller's (side SOLD) credits its
  proceeds only if its evidence, the buyer's signed ``site_sale``, verifies
  against that site's membership, matches it field for field, names this site,
  this device and this device's order, and was not counted before.
- ``fees_msat`` is the Lightning routing fee a device paid on top of its
  payments (``payment`` entries, and the proofs in its ``share`` and
  ``site_share`` memos): real sats that left its node, not taken from its
  budget, shown so that the log accounts for every msat.
- ``paid_msat`` of a period is what was paid of *that period's* invoices (the
  ``payment`` entries are logged later), each invoice once; a payment that pays
  no invoice (a neighbour's energy, recorded with its ``sale``) is not counted.
- ``allowance_sale`` (authored by the seller) moves ``allowance_msat`` of the
  seller's allowance to the buyer *only if the seller's balance covers it* (else
  ``unfunded``), once per payment hash over the whole log (its preimage is
  checked when the entry is decoded). The ``price_msat`` the buyer paid for it
  over Lightning is not budget: it is counted in ``allowance_paid_msat`` (buyer)
  and ``allowance_earned_msat`` (seller), apart from the balance
  (docs/market.md, section 2.9).

So a balance never goes negative, and within a period, over devices,
``sum(allocation + carried_in + received + sold + allowance_bought) ==
sum(balance + spent + given + bought + carried_out + allowance_sold)`` and
``sum(allowance_paid) == sum(allowance_earned)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from p2pgrid.ledger.bodies import (
    Allocation,
    AllowanceSale,
    Body,
    Budget,
    CarryOver,
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
from p2pgrid.ledger.entry import Author, Entry, decode_entry
from p2pgrid.ledger.errors import MalformedError
from p2pgrid.ledger.membership import Membership
from p2pgrid.ledger.proof import parse_proof


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceAccount:
    """One device's money and energy in one period."""

    device: int
    allocation_msat: int = 0
    carried_in_msat: int = 0
    received_msat: int = 0  # shares received
    given_msat: int = 0  # shares given
    bought_msat: int = 0  # paid for energy bought from other devices
    sold_msat: int = 0  # earned by energy sold to other devices
    spent_msat: int = 0  # metered cost paid from the balance
    overdraft_msat: int = 0  # metered cost the balance did not cover
    carried_out_msat: int = 0
    unfunded_msat: int = 0  # shares/sales/carry-overs refused for lack of balance
    energy_wh: int = 0  # metered consumption
    bought_wh: int = 0
    sold_wh: int = 0
    transit_wh: int = 0  # of bought_wh: from producers of other sites (grid fee)
    balance_msat: int = 0  # left in the period
    fees_msat: int = 0  # Lightning routing fees paid on top of its payments
    allowance_bought_msat: int = 0  # allowance bought from other devices (credited)
    allowance_sold_msat: int = 0  # allowance sold to other devices (debited)
    allowance_paid_msat: int = 0  # sats paid for allowance bought (not budget)
    allowance_earned_msat: int = 0  # sats earned for allowance sold (not budget)

    @property
    def borrowed(self) -> bool:
        return self.received_msat > 0

    @property
    def exceeded_allocation(self) -> bool:
        """Consumed more than its own allocation (helped by others or overdrawn)."""
        own = self.allocation_msat + self.carried_in_msat
        return self.spent_msat + self.overdraft_msat + self.bought_msat > own


@dataclasses.dataclass(frozen=True, slots=True)
class PeriodView:
    """The site in one billing period."""

    period: int
    budget_msat: int
    accounts: Mapping[int, DeviceAccount]
    invoiced_msat: int
    paid_msat: int
    disputes: tuple[Entry, ...]

    @property
    def fees_msat(self) -> int:
        return sum(a.fees_msat for a in self.accounts.values())

    @property
    def allocated_msat(self) -> int:
        return sum(a.allocation_msat for a in self.accounts.values())

    @property
    def over_allocated(self) -> bool:
        """The owner allocated more than the utility's budget (if one was set)."""
        return self.budget_msat > 0 and self.allocated_msat > self.budget_msat

    def account(self, device: int) -> DeviceAccount:
        return self.accounts.get(device) or DeviceAccount(device)


@dataclasses.dataclass(frozen=True, slots=True)
class LedgerView:
    """All periods of a log, plus what is known about devices and authors."""

    periods: Mapping[int, PeriodView]
    device_classes: Mapping[int, str]
    equivocators: frozenset[Author]

    def period(self, period: int) -> PeriodView:
        return self.periods.get(period) or PeriodView(period, 0, {}, 0, 0, ())

    def account(self, device: int, period: int) -> DeviceAccount:
        return self.period(period).account(device)


def canonical(entries: Iterable[Entry]) -> tuple[list[Entry], frozenset[Author]]:
    """Entries in fold order with equivocating siblings dropped, and the equivocators."""
    chosen: dict[tuple[Author, int], Entry] = {}
    flagged: set[Author] = set()
    for entry in entries:
        key = (entry.author, entry.seq)
        other = chosen.get(key)
        if other is not None and other.id != entry.id:
            flagged.add(entry.author)
        if other is None or entry.id < other.id:
            chosen[key] = entry
    ordered = sorted(
        chosen.values(), key=lambda e: (e.period, e.timestamp_ms, e.author, e.seq, e.id)
    )
    return ordered, frozenset(flagged)


class _Period:
    def __init__(self, period: int, carried_in: Mapping[int, int]) -> None:
        self.period = period
        self.budget = 0
        self.invoiced = 0
        self.paid = 0
        self.disputes: list[Entry] = []
        self.accounts: dict[int, dict[str, int]] = {}
        for device, amount in carried_in.items():
            acc = self.acc(device)
            acc["carried_in_msat"] += amount
            acc["balance_msat"] += amount

    def acc(self, device: int) -> dict[str, int]:
        if device not in self.accounts:
            fields = dataclasses.fields(DeviceAccount)
            self.accounts[device] = {f.name: 0 for f in fields if f.name != "device"}
        return self.accounts[device]

    def debit(self, device: int, amount: int) -> bool:
        """Take ``amount`` from the balance if it is all there; else count it unfunded."""
        acc = self.acc(device)
        if amount > acc["balance_msat"]:
            acc["unfunded_msat"] += amount
            return False
        acc["balance_msat"] -= amount
        return True

    def apply(self, entry: Entry, classes: dict[int, str], credit: _SiteCredits) -> None:
        body, me = entry.body, entry.author.index
        if entry.author.role is Role.DEVICE:
            self._fee(body, me)
        if isinstance(body, Allocation):
            acc = self.acc(body.device)
            acc["allocation_msat"] += body.amount_msat
            acc["balance_msat"] += body.amount_msat
        elif isinstance(body, MeterReading):
            acc = self.acc(me)
            covered = min(body.cost_msat, acc["balance_msat"])
            acc["energy_wh"] += body.energy_wh
            acc["spent_msat"] += covered
            acc["overdraft_msat"] += body.cost_msat - covered
            acc["balance_msat"] -= covered
        elif isinstance(body, Share):
            if self.debit(me, body.amount_msat):
                self.acc(me)["given_msat"] += body.amount_msat
                other = self.acc(body.to_device)
                other["received_msat"] += body.amount_msat
                other["balance_msat"] += body.amount_msat
        elif isinstance(body, Sale):
            if self.debit(me, body.amount_msat):
                buyer, seller = self.acc(me), self.acc(body.seller)
                buyer["bought_msat"] += body.amount_msat
                buyer["bought_wh"] += body.energy_wh
                seller["sold_msat"] += body.amount_msat
                seller["sold_wh"] += body.energy_wh
                seller["balance_msat"] += body.amount_msat
        elif isinstance(body, SiteSale) and body.side == SaleSide.BOUGHT:
            if self.debit(me, body.amount_msat):
                buyer = self.acc(me)
                buyer["bought_msat"] += body.amount_msat
                buyer["bought_wh"] += body.energy_wh
            self.acc(me)["transit_wh"] += body.energy_wh  # billed as signed (ledger.bill)
        elif isinstance(body, SiteSale):
            if credit.verify_sale(body, entry.period, me):
                seller = self.acc(me)
                seller["sold_msat"] += body.amount_msat
                seller["sold_wh"] += body.energy_wh
                seller["balance_msat"] += body.amount_msat
        elif isinstance(body, SiteShare):
            if self.debit(me, body.amount_msat):
                self.acc(me)["given_msat"] += body.amount_msat
        elif isinstance(body, SiteShareIn):
            amount = credit.verify(body, me)
            if amount:
                acc = self.acc(me)
                acc["received_msat"] += amount
                acc["balance_msat"] += amount
        elif isinstance(body, AllowanceSale):
            counted = _ALLOWANCE + body.payment_hash
            if counted not in credit.counted and self.debit(me, body.allowance_msat):
                credit.counted.add(counted)
                seller, buyer = self.acc(me), self.acc(body.buyer)
                seller["allowance_sold_msat"] += body.allowance_msat
                seller["allowance_earned_msat"] += body.price_msat
                buyer["allowance_bought_msat"] += body.allowance_msat
                buyer["allowance_paid_msat"] += body.price_msat
                buyer["balance_msat"] += body.allowance_msat
        elif isinstance(body, CarryOver):
            if self.debit(me, body.amount_msat):
                self.acc(me)["carried_out_msat"] += body.amount_msat
        elif isinstance(body, Budget):
            self.budget += body.amount_msat
        elif isinstance(body, Invoice):
            self.invoiced += body.amount_msat
        elif isinstance(body, Dispute):
            self.disputes.append(entry)
        elif isinstance(body, DeviceInfo):
            classes[body.device] = body.device_class
        # Curtailment changes no account.

    def _fee(self, body: Body, device: int) -> None:
        if isinstance(body, Payment):
            self.acc(device)["fees_msat"] += body.fee_msat
        elif isinstance(body, Share | SiteShare):
            proof = parse_proof(body.memo)
            if proof is not None:
                self.acc(device)["fees_msat"] += proof.fee_msat

    def freeze(self) -> PeriodView:
        accounts = {d: DeviceAccount(device=d, **v) for d, v in sorted(self.accounts.items())}
        return PeriodView(
            self.period, self.budget, accounts, self.invoiced, self.paid, tuple(self.disputes)
        )


#: An ``allowance_sale`` counts once per payment hash: its key in
#: :attr:`_SiteCredits.counted` (47 bytes, so never a 32-byte entry id there).
_ALLOWANCE = b"allowance_sale:"


class _SiteCredits:
    """Checks ``site_share_in`` evidence against the owner's other sites, once
    each; also holds the ``allowance_sale`` payment hashes counted so far."""

    def __init__(self, site_hash: bytes | None, peer_sites: Mapping[bytes, Membership]) -> None:
        self.site_hash = site_hash
        self.peer_sites = peer_sites
        self.counted: set[bytes] = set()

    def verify(self, body: SiteShareIn, receiver: int) -> int:
        """The amount to credit ``receiver``, or 0 if the evidence does not hold."""
        raw = bytes.fromhex(body.evidence)
        for site_h, membership in self.peer_sites.items():
            try:
                given = decode_entry(raw, site_h)
            except MalformedError:
                continue
            if (
                membership.check(given) is None
                and isinstance(given.body, SiteShare)
                and given.body.to_site == self.site_hash
                and given.body.to_device == receiver
                and given.id not in self.counted
            ):
                self.counted.add(given.id)
                return given.body.amount_msat
        return 0

    def verify_sale(self, body: SiteSale, period: int, seller: int) -> bool:
        """Whether a seller's ``site_sale`` (side SOLD) of ``period`` is a sale to
        a buyer of another site that the buyer's signed entry proves, not counted
        before (docs/market.md, section 6.3)."""
        bought = verified_purchase(body, self.peer_sites)
        if bought is None or bought.id in self.counted or self.site_hash is None:
            return False
        b = bought.body
        assert isinstance(b, SiteSale)
        try:
            order = decode_entry(b.evidence, self.site_hash)
        except MalformedError:
            return False
        if (
            bought.period == period
            and b.other_site == self.site_hash
            and b.other_device == seller
            and order.author == Author.device(seller)
            and order.period == period
        ):
            self.counted.add(bought.id)
            return True
        return False


def verified_purchase(body: SiteSale, peer_sites: Mapping[bytes, Membership]) -> Entry | None:
    """The buyer's ``site_sale`` (side BOUGHT) that a seller's ``body`` (side SOLD)
    carries, if it verifies against ``body.other_site``'s membership in
    ``peer_sites`` (author, signature), is of that author, and states the same
    round, energy, amount and payment; else None."""
    membership = peer_sites.get(body.other_site)
    if membership is None or body.side != SaleSide.SOLD:
        return None
    try:
        bought = decode_entry(body.evidence, body.other_site)
    except MalformedError:
        return None
    b = bought.body
    if (
        membership.check(bought) is None
        and isinstance(b, SiteSale)
        and b.side == SaleSide.BOUGHT
        and bought.author == Author.device(body.other_device)
        and (b.interval, b.energy_wh, b.amount_msat, b.payment_hash)
        == (body.interval, body.energy_wh, body.amount_msat, body.payment_hash)
    ):
        return bought
    return None


def fold(
    entries: Iterable[Entry],
    *,
    site_hash: bytes | None = None,
    peer_sites: Mapping[bytes, Membership] | None = None,
) -> LedgerView:
    """Fold log entries (any order, duplicates and siblings allowed) into a view.

    ``site_hash`` (this log's site) and ``peer_sites`` (the owner's other sites,
    by site hash) let ``site_share_in`` entries be verified and credited."""
    credit = _SiteCredits(site_hash, peer_sites or {})
    ordered, flagged = canonical(entries)
    by_period: dict[int, list[Entry]] = {}
    for entry in ordered:
        by_period.setdefault(entry.period, []).append(entry)
    classes: dict[int, str] = {}
    # A payment counts for the period of the invoice it pays (it is logged later);
    # a payment that pays no invoice (a neighbour's energy) is not an invoice's.
    invoice_period = {e.body.payment_hash: e.period for e in ordered if isinstance(e.body, Invoice)}
    paid: dict[int, int] = {}
    for e in ordered:
        if isinstance(e.body, Payment) and e.body.payment_hash in invoice_period:
            p = invoice_period.pop(e.body.payment_hash)  # once per invoice
            paid[p] = paid.get(p, 0) + e.body.amount_msat
    periods: dict[int, PeriodView] = {}
    carried: dict[int, int] = {}
    todo = sorted(by_period)
    while todo:
        number = todo.pop(0)
        state = _Period(number, carried)
        for entry in by_period.get(number, []):
            state.apply(entry, classes, credit)
        state.paid = paid.get(number, 0)
        periods[number] = state.freeze()
        carried = {
            d: a["carried_out_msat"] for d, a in state.accounts.items() if a["carried_out_msat"]
        }
        if carried and (not todo or todo[0] != number + 1):
            todo.insert(0, number + 1)
    return LedgerView(periods, classes, flagged)
