"""Every sat accounted: lnd's payments, invoices and channel balances against the log.

One checker, used by the end-to-end and fault tests (and by anyone holding the
nodes' lnd credentials and a replica of each site). Given a snapshot of every
node before a run (:func:`snapshot`), a snapshot after it, the site logs and
who is who (which node authors as which (site, author)), :func:`reconcile`
lists every disagreement:

- every money entry of the log (a ``payment``, a ``share`` or ``site_share``
  with its proof memo) has exactly one SUCCEEDED lnd payment on its author's
  node with the same hash, amount and routing fee;
- every SUCCEEDED payment and every SETTLED invoice made during the run is in
  the log, and the invoice was paid to the party the log names (the utility for
  an ``invoice``, the seller for a ``sale``, the receiver for a share);
- no payment hash appears twice in the log; nothing is in flight;
- per node, the change of its channels' local balance equals what the log says
  it received minus what it paid plus fees, to the msat; routing nodes (the
  utility in a star) together earn exactly the fees the log's payers paid.

The result is a list of problems (empty when lnd and the log agree), so a test
shows all of them at once.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping

from p2pgrid.ledger import Author, Entry, Invoice, Payment, Role, Sale, Share, SiteShare
from p2pgrid.ledger.proof import parse_proof
from p2pgrid.lightning import (
    Invoice as LnInvoice,
)
from p2pgrid.lightning import (
    InvoiceState,
    LightningNode,
    PaymentStatus,
)
from p2pgrid.lightning import (
    Payment as LnPayment,
)

#: (site hash, author): one party of one site's log.
Party = tuple[bytes, Author]


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """What one lnd node shows at one moment."""

    name: str
    local_msat: int
    pending_htlcs: int
    payments: tuple[LnPayment, ...]
    invoices: tuple[LnInvoice, ...]


async def snapshot(name: str, node: LightningNode) -> NodeSnapshot:
    balance = await node.channel_balance()
    channels = await node.list_channels()
    return NodeSnapshot(
        name=name,
        local_msat=balance.local_msat,
        pending_htlcs=sum(c.pending_htlcs for c in channels),
        payments=tuple(await node.list_payments()),
        invoices=tuple(await node.list_invoices()),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class LogPayment:
    """A money entry of the log: who paid, how much, to whom (as the log says)."""

    site: bytes
    entry: Entry
    payment_hash: bytes
    amount_msat: int
    fee_msat: int
    payee: Party | None  # None: the log does not say (a payment of nothing known)


@dataclasses.dataclass(frozen=True, slots=True)
class Reconciliation:
    problems: tuple[str, ...]
    payments: int  # money entries checked
    moved_msat: int  # their amounts

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.payments} payments, {self.moved_msat} msat"
        return head + "".join(f"\n  - {p}" for p in self.problems)


def log_payments(logs: Mapping[bytes, Iterable[Entry]]) -> list[LogPayment]:
    """The money entries of every site log, with the payee each names."""
    out: list[LogPayment] = []
    for site, entries in logs.items():
        entries = list(entries)
        invoices = {e.body.payment_hash: e for e in entries if isinstance(e.body, Invoice)}
        sales: dict[tuple[Author, int], list[Entry]] = {}
        for e in entries:
            if isinstance(e.body, Sale):
                sales.setdefault((e.author, e.body.amount_msat), []).append(e)
        for e in entries:
            body = e.body
            if isinstance(body, Payment):
                payee: Party | None = None
                if body.payment_hash in invoices:
                    payee = (site, Author.utility())
                elif sale := sales.get((e.author, body.amount_msat)):
                    bought = sale.pop(0)  # one sale per payment
                    assert isinstance(bought.body, Sale)
                    payee = (site, Author.device(bought.body.seller))
                out.append(
                    LogPayment(site, e, body.payment_hash, body.amount_msat, body.fee_msat, payee)
                )
            elif isinstance(body, Share | SiteShare):
                proof = parse_proof(body.memo)
                if proof is None:
                    continue  # a share without a Lightning payment moves no sats
                to_site = body.to_site if isinstance(body, SiteShare) else site
                out.append(
                    LogPayment(
                        site,
                        e,
                        proof.payment_hash,
                        body.amount_msat,
                        proof.fee_msat,
                        (to_site, Author.device(body.to_device)),
                    )
                )
    return out


def reconcile(
    *,
    before: Mapping[str, NodeSnapshot],
    after: Mapping[str, NodeSnapshot],
    logs: Mapping[bytes, Iterable[Entry]],
    members: Mapping[Party, str],
    routers: Iterable[str] = (),
) -> Reconciliation:
    """Check lnd (``before`` -> ``after``, by node name) against the site ``logs``
    (by site hash). ``members`` names the node of every party that pays or is paid;
    ``routers`` are the nodes that forward others' payments (they earn the fees)."""
    problems: list[str] = []
    routers = set(routers)
    moves = log_payments(logs)

    def node_of(party: Party) -> str | None:
        return members.get(party)

    def where(m: LogPayment) -> str:
        return f"{m.entry} ({type(m.entry.body).__name__}, hash {m.payment_hash.hex()[:12]})"

    # No hash twice in the log.
    for twice, n in Counter(m.payment_hash for m in moves).items():
        if n > 1:
            problems.append(f"hash {twice.hex()[:12]} is paid {n} times in the log")

    # Every log payment: exactly one succeeded lnd payment on the payer's node.
    new_payments: dict[str, dict[str, list[LnPayment]]] = {}
    new_invoices: dict[str, dict[str, LnInvoice]] = {}
    for name, now in after.items():
        old = before.get(name)
        seen = {p.payment_hash for p in old.payments} if old else set()
        by_hash: dict[str, list[LnPayment]] = {}
        for p in now.payments:
            if p.payment_hash not in seen:
                by_hash.setdefault(p.payment_hash, []).append(p)
            if p.status in (PaymentStatus.IN_FLIGHT, PaymentStatus.INITIATED):
                problems.append(f"{name}: payment {p.payment_hash[:12]} still in flight")
        new_payments[name] = by_hash
        old_inv = {i.payment_hash for i in old.invoices} if old else set()
        new_invoices[name] = {
            i.payment_hash: i
            for i in now.invoices
            if i.payment_hash not in old_inv and i.state is InvoiceState.SETTLED
        }
        if now.pending_htlcs:
            problems.append(f"{name}: {now.pending_htlcs} HTLC(s) pending")

    expected: dict[str, int] = {name: 0 for name in after}
    fees = 0
    logged: dict[str, set[str]] = {name: set() for name in after}
    for m in moves:
        payer = node_of((m.site, m.entry.author))
        if payer is None or payer not in after:
            problems.append(f"{where(m)}: no node known for the payer {m.entry.author}")
            continue
        logged[payer].add(m.payment_hash.hex())
        succeeded = [
            p
            for p in new_payments[payer].get(m.payment_hash.hex(), [])
            if p.status is PaymentStatus.SUCCEEDED
        ]
        if len(succeeded) != 1:
            problems.append(f"{where(m)}: {len(succeeded)} succeeded lnd payment(s) on {payer}")
        elif (succeeded[0].value_msat, succeeded[0].fee_msat) != (m.amount_msat, m.fee_msat):
            p = succeeded[0]
            problems.append(
                f"{where(m)}: log says {m.amount_msat} + fee {m.fee_msat} msat, "
                f"lnd of {payer} says {p.value_msat} + fee {p.fee_msat}"
            )
        expected[payer] -= m.amount_msat + m.fee_msat
        fees += m.fee_msat
        payee = node_of(m.payee) if m.payee is not None else None
        if payee is None or payee not in after:
            problems.append(f"{where(m)}: the log names no known payee ({m.payee})")
            continue
        expected[payee] += m.amount_msat
        invoice = new_invoices[payee].pop(m.payment_hash.hex(), None)
        if invoice is None:
            problems.append(f"{where(m)}: no invoice settled by it on {payee}")
        elif invoice.amt_paid_msat != m.amount_msat:
            problems.append(
                f"{where(m)}: {payee} was paid {invoice.amt_paid_msat} msat, "
                f"the log says {m.amount_msat}"
            )

    # Nothing moved in lnd that the log does not show.
    for name, by_hash in new_payments.items():
        for h, attempts in by_hash.items():
            if h not in logged[name] and any(p.status is PaymentStatus.SUCCEEDED for p in attempts):
                total = sum(p.total_msat for p in attempts if p.status is PaymentStatus.SUCCEEDED)
                problems.append(f"{name}: paid {h[:12]} ({total} msat) with no log entry")
    for name, left in new_invoices.items():
        for h, invoice in left.items():
            problems.append(
                f"{name}: invoice {h[:12]} settled ({invoice.amt_paid_msat} msat) "
                "with no log payment to it"
            )

    # Balances, per node, to the msat; the routers share the fees.
    routed = 0
    for name, now in after.items():
        old = before.get(name)
        delta = now.local_msat - (old.local_msat if old else 0)
        if name in routers:
            routed += delta - expected[name]
        elif delta != expected[name]:
            problems.append(
                f"{name}: channel balance moved {delta:+} msat, the log says {expected[name]:+}"
            )
    if routers and routed != fees:
        problems.append(f"routers earned {routed} msat in fees, the log's payers paid {fees}")
    return Reconciliation(tuple(problems), len(moves), sum(m.amount_msat for m in moves))


def site_members(
    site: bytes, devices: Mapping[int, str], *, utility: str | None = None
) -> dict[Party, str]:
    """``members`` for one site: its devices' nodes (by index) and the utility's."""
    out: dict[Party, str] = {(site, Author.device(i)): node for i, node in devices.items()}
    if utility is not None:
        out[(site, Author(Role.UTILITY))] = utility
    return out
