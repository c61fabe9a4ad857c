"""Every sat accounted: lnd's payments, invoices and channel balances against the log.

One checker, used by the end-to-end and fault tests (and by anyone holding the
nodes' lnd credentials and a replica of each site). Given a snapshot of every
node before a run (:func:`snapshot`), a snapshot after it, the site logs and
who is who (which node authors as which (site, author)), :func:`reconcile`
lists every disagreement:

- every money entry of the log (a ``payment``, a ``share`` or ``site_share``
  with its proof memo) has exactly one SUCCEEDED lnd payment on its author's
  node with the same hash, amount and routing fee; one whose payer and payee
  are on one node (light devices of a site node) is an internal transfer: no
  lnd payment, no fee, its invoice on that node cancelled;
- every SUCCEEDED payment and every SETTLED invoice made during the run is in
  the log, and the invoice was paid to the party the log names (the utility for
  an ``invoice``, the seller for a ``sale``, the producer of the other site
  for a ``site_sale``, the receiver for a share);
- no payment hash appears twice in the log; nothing is in flight;
- every ``allowance_sale`` has its buyer's ``payment`` of its hash for its
  price (that payment is paid to the seller, who logged the sale);
- per node, the change of its channels' local balance equals what the log says
  it received minus what it paid plus fees, to the msat; routing nodes (the
  utility in a star) together earn exactly the fees the log's payers paid.

The result is a list of problems (empty when lnd and the log agree), so a test
shows all of them at once.

:func:`reconcile_node` is the same check narrowed to what one operator holds:
one node's lnd (now, no snapshot before) and one replica of its site's log
(``p2pgrid log verify --against-lnd``). Every money entry the node's author
logged has exactly one SUCCEEDED payment on it with that hash, amount and fee;
every money entry paying that author has its invoice settled on it for the
amount; no payment or settled invoice on it of a hash the log knows (an
``invoice`` entry, a money entry) lacks its entry; nothing is in flight. lnd's
payments and invoices of hashes the log does not know are someone else's
business, and without a snapshot before there is no balance to compare.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Iterable, Mapping

from p2pgrid.identity import SiteIdentity
from p2pgrid.ledger import (
    AllowanceSale,
    Author,
    Entry,
    Invoice,
    LedgerError,
    Payment,
    Role,
    Sale,
    SaleSide,
    Share,
    SiteSale,
    SiteShare,
    decode_entry,
)
from p2pgrid.ledger.proof import parse_proof
from p2pgrid.ledger.verify import ReplicaFile
from p2pgrid.lightning import (
    Invoice as LnInvoice,
)
from p2pgrid.lightning import (
    InvoiceState,
    LightningNode,
    LndClient,
    LndEndpoint,
    NodeUnreachable,
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
        allowances = {e.body.payment_hash: e for e in entries if isinstance(e.body, AllowanceSale)}
        sales: dict[tuple[Author, int], list[Entry]] = {}
        across: dict[bytes, SiteSale] = {}  # payment hash -> the purchase it paid
        for e in entries:
            if isinstance(e.body, Sale):
                sales.setdefault((e.author, e.body.amount_msat), []).append(e)
            elif isinstance(e.body, SiteSale) and e.body.side == SaleSide.BOUGHT:
                across[e.body.payment_hash] = e.body
        for e in entries:
            body = e.body
            if isinstance(body, Payment):
                payee: Party | None = None
                if body.payment_hash in invoices:
                    payee = (site, Author.utility())
                elif (purchase := across.get(body.payment_hash)) is not None:
                    payee = (purchase.other_site, Author.device(purchase.other_device))
                elif (sold := allowances.get(body.payment_hash)) is not None:
                    payee = (site, sold.author)  # the seller logged the sale of allowance
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


def allowance_problems(logs: Mapping[bytes, Iterable[Entry]]) -> list[str]:
    """Every ``allowance_sale`` has its buyer's ``payment`` of the same hash for
    exactly its price (the sats that left the buyer's node for it), and names
    the author of that payment as its buyer."""
    problems = []
    for logged in logs.values():
        entries = list(logged)
        payments = {
            e.body.payment_hash: e
            for e in entries
            if isinstance(e.body, Payment) and e.author.role is Role.DEVICE
        }
        for e in entries:
            sold = e.body
            if not isinstance(sold, AllowanceSale):
                continue
            paid = payments.get(sold.payment_hash)
            where = f"{e} (allowance_sale, hash {sold.payment_hash.hex()[:12]})"
            if paid is None:
                problems.append(f"{where}: no payment of it in the log")
            elif paid.author != Author.device(sold.buyer):
                problems.append(f"{where}: paid by {paid.author}, sold to device {sold.buyer}")
            elif isinstance(paid.body, Payment) and paid.body.amount_msat != sold.price_msat:
                problems.append(
                    f"{where}: the price is {sold.price_msat} msat, "
                    f"the buyer paid {paid.body.amount_msat}"
                )
    return problems


def _where(m: LogPayment) -> str:
    return f"{m.entry} ({type(m.entry.body).__name__}, hash {m.payment_hash.hex()[:12]})"


def _paid_problem(m: LogPayment, attempts: Iterable[LnPayment], payer: str) -> str | None:
    """A money entry against its payer's lnd payments of its hash: one SUCCEEDED,
    with the logged amount and fee."""
    succeeded = [p for p in attempts if p.status is PaymentStatus.SUCCEEDED]
    if len(succeeded) != 1:
        return f"{_where(m)}: {len(succeeded)} succeeded lnd payment(s) on {payer}"
    p = succeeded[0]
    if (p.value_msat, p.fee_msat) != (m.amount_msat, m.fee_msat):
        return (
            f"{_where(m)}: log says {m.amount_msat} + fee {m.fee_msat} msat, "
            f"lnd of {payer} says {p.value_msat} + fee {p.fee_msat}"
        )
    return None


def _received_problem(m: LogPayment, invoice: LnInvoice | None, payee: str) -> str | None:
    """A money entry against its payee's settled invoice of its hash."""
    if invoice is None:
        return f"{_where(m)}: no invoice settled by it on {payee}"
    if invoice.amt_paid_msat != m.amount_msat:
        return (
            f"{_where(m)}: {payee} was paid {invoice.amt_paid_msat} msat, "
            f"the log says {m.amount_msat}"
        )
    return None


def _paid_twice(moves: Iterable[LogPayment]) -> list[str]:
    return [
        f"hash {twice.hex()[:12]} is paid {n} times in the log"
        for twice, n in Counter(m.payment_hash for m in moves).items()
        if n > 1
    ]


def _in_flight(node: NodeSnapshot) -> list[str]:
    return [
        f"{node.name}: payment {p.payment_hash[:12]} still in flight"
        for p in node.payments
        if p.status in (PaymentStatus.IN_FLIGHT, PaymentStatus.INITIATED)
    ]


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

    problems += _paid_twice(moves)
    problems += allowance_problems(logs)

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
        problems += _in_flight(now)
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
            problems.append(f"{_where(m)}: no node known for the payer {m.entry.author}")
            continue
        logged[payer].add(m.payment_hash.hex())
        payee = node_of(m.payee) if m.payee is not None else None
        if payee == payer:  # light devices of one node: an internal transfer, no lnd
            attempts = new_payments[payer].get(m.payment_hash.hex(), [])
            internal = _internal_problem(m, after[payer], attempts)
            if internal is not None:
                problems.append(internal)
            continue
        paid = _paid_problem(m, new_payments[payer].get(m.payment_hash.hex(), []), payer)
        if paid is not None:
            problems.append(paid)
        expected[payer] -= m.amount_msat + m.fee_msat
        fees += m.fee_msat
        if payee is None or payee not in after:
            problems.append(f"{_where(m)}: the log names no known payee ({m.payee})")
            continue
        expected[payee] += m.amount_msat
        received = _received_problem(m, new_invoices[payee].pop(m.payment_hash.hex(), None), payee)
        if received is not None:
            problems.append(received)

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


def _internal_problem(
    m: LogPayment, node: NodeSnapshot, payments: Iterable[LnPayment]
) -> str | None:
    """An internal transfer (payer and payee light on this node) against the node:
    no fee, no lnd payment of its hash, its invoice on the node cancelled, not settled."""
    if m.fee_msat:
        return f"{_where(m)}: an internal transfer with a fee of {m.fee_msat} msat"
    if any(p.status is PaymentStatus.SUCCEEDED for p in payments):
        return f"{_where(m)}: an internal transfer that {node.name} also paid over Lightning"
    invoice = next((i for i in node.invoices if i.payment_hash == m.payment_hash.hex()), None)
    if invoice is None:
        return f"{_where(m)}: an internal transfer to no invoice of {node.name}"
    if invoice.state is not InvoiceState.CANCELED:
        return f"{_where(m)}: an internal transfer whose invoice is {invoice.state.value}"
    if invoice.value_msat != m.amount_msat:
        return (
            f"{_where(m)}: an internal transfer of {m.amount_msat} msat to an invoice "
            f"of {invoice.value_msat}"
        )
    return None


def reconcile_node(
    node: NodeSnapshot, *, site: bytes, entries: Iterable[Entry], authors: Collection[Author]
) -> Reconciliation:
    """One node's lnd ``node`` (its authors in the log of ``site``: ``authors``, one
    device or the utility, or every light device of a site node) against one
    replica's ``entries`` (see the module's contract).

    A money entry between two of ``authors`` is an internal transfer (light
    devices of one node, docs/protocol.md "Light devices"): it must touch no
    lnd (no payment, no settled invoice, no fee) and its invoice on the node
    must be cancelled. Every other entry of theirs is checked as one node's."""
    entries = list(entries)
    mine: set[Party] = {(site, a) for a in authors}
    moves = log_payments({site: entries})
    problems = _paid_twice(moves) + _in_flight(node) + allowance_problems({site: entries})
    payments: dict[str, list[LnPayment]] = {}
    for p in node.payments:
        payments.setdefault(p.payment_hash, []).append(p)
    settled = {i.payment_hash: i for i in node.invoices if i.state is InvoiceState.SETTLED}

    def pays(m: LogPayment) -> bool:
        return (m.site, m.entry.author) in mine

    def is_paid(m: LogPayment) -> bool:
        return m.payee is not None and m.payee in mine

    internal = {m.payment_hash.hex() for m in moves if pays(m) and is_paid(m)}
    paid_by_me = {m.payment_hash.hex() for m in moves if pays(m)} - internal
    paid_to_me = {m.payment_hash.hex() for m in moves if is_paid(m)} - internal
    for m in moves:
        h = m.payment_hash.hex()
        if h in internal:
            problem = _internal_problem(m, node, payments.get(h, []))
        elif pays(m):
            problem = _paid_problem(m, payments.get(h, []), node.name)
        elif is_paid(m):
            problem = _received_problem(m, settled.get(h), node.name)
        else:
            continue
        if problem is not None:
            problems.append(problem)
    # Money the log knows of (an invoice in it, a money entry) that moved on this
    # node without the entry that says so.
    known = {m.payment_hash.hex() for m in moves}
    known |= {e.body.payment_hash.hex() for e in entries if isinstance(e.body, Invoice)}
    for h, attempts in sorted(payments.items()):
        done = [p for p in attempts if p.status is PaymentStatus.SUCCEEDED]
        if h in known and h not in paid_by_me | internal and done:
            total = sum(p.total_msat for p in done)
            problems.append(f"{node.name}: paid {h[:12]} ({total} msat) with no log entry")
    for h, invoice in sorted(settled.items()):
        if h in known and h not in paid_to_me | internal:
            problems.append(
                f"{node.name}: invoice {h[:12]} settled ({invoice.amt_paid_msat} msat) "
                "with no log payment to it"
            )
    touching = [m for m in moves if pays(m) or is_paid(m)]
    return Reconciliation(tuple(problems), len(touching), sum(m.amount_msat for m in touching))


async def reconcile_replica_with_lnd(
    replica: ReplicaFile, site: SiteIdentity, endpoint: LndEndpoint, authors: Collection[Author]
) -> Reconciliation:
    """``p2pgrid log verify --against-lnd``: the node at ``endpoint`` (authors
    ``authors`` of ``site``: one device, the utility, or a site node's light
    devices) against the entries of a replica's file (read read-only; an entry
    that does not decode is left to the replay's verdict)."""
    entries = []
    for raw in replica.raws:
        try:
            entries.append(decode_entry(raw, site.site_hash))
        except LedgerError:
            continue
    try:
        async with LndClient(endpoint) as node:
            now = await snapshot(endpoint.name, node)
    except NodeUnreachable as exc:
        where = f"{endpoint.rest_host}:{endpoint.rest_port}"
        raise NodeUnreachable(f"lnd of {endpoint.name} at {where} does not answer: {exc}") from None
    return reconcile_node(now, site=site.site_hash, entries=entries, authors=authors)


def site_members(
    site: bytes, devices: Mapping[int, str], *, utility: str | None = None
) -> dict[Party, str]:
    """``members`` for one site: its devices' nodes (by index) and the utility's."""
    out: dict[Party, str] = {(site, Author.device(i)): node for i, node in devices.items()}
    if utility is not None:
        out[(site, Author(Role.UTILITY))] = utility
    return out
