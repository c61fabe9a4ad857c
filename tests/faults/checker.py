"""The one checker of a fault trial: lnd itself and every replica, after the run.

It does not trust the launcher's summary (a run with a fault may not have one):
it opens every replica's SQLite file of the run and asks every lnd. Per trial:

- **replicas**: every replica of a site (each device's and the utility's) holds
  the same log (one digest per site); no author logged two readings of one interval;
- **invoices**: every ``invoice`` entry is settled in the utility's lnd and paid by
  exactly one ``payment`` entry (or disputed); a period whose bill is not zero has
  its invoice; every device period is settled (invoice paid or disputed, or none owed);
- **payments**: per payment hash, at most one SUCCEEDED payment over all nodes
  (more is a double payment); nothing IN_FLIGHT anywhere;
- **money**: lnd and the log agree to the msat (:func:`p2pgrid.demo.check_money`,
  the project's one reconciliation, :mod:`p2pgrid.reconcile`), given snapshots of
  every node before the run;
- **sales across sites**: every purchase a site logged (``site_sale`` BOUGHT) is
  logged sold (``site_sale`` SOLD of the same payment hash) exactly once in the
  seller's site, and nothing is sold that was not bought (:func:`unpaired_site_sales`:
  reconciliation pays the buyer's entry to the seller's node, so a seller's
  missing side shows nowhere else);
- **processes**: none of the run is left alive.

And, for a run with a partition, the accounts against those of an uncut run of
the same scenario (:func:`read_accounts`, :func:`compare_accounts`): what a cut
must not change, as docs/reliability.md ("Partitions judged against an uncut
run") states it. Exactly every figure when the scenario needs no market
(:func:`needs_no_market`); otherwise the figures no market decision touches.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from p2pgrid.billing import charge_msat, split_budget
from p2pgrid.demo import check_money
from p2pgrid.identity import SiteIdentity
from p2pgrid.launcher import RunResult
from p2pgrid.ledger import (
    Author,
    Cleared,
    Curtailment,
    Dispute,
    Entry,
    Invoice,
    LogStore,
    MeterReading,
    Order,
    Payment,
    Role,
    SaleSide,
    SiteSale,
    bill,
    fold,
)
from p2pgrid.lightning import InvoiceState, PaymentStatus
from p2pgrid.reconcile import NodeSnapshot
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario
from p2pgrid.testing.faults import processes_under


@dataclasses.dataclass
class Verdict:
    """What one trial left behind; ``ok`` when nothing is wrong."""

    double_payments: int = 0
    lost_payments: int = 0  # invoices owed and not paid (nor disputed)
    diverged_sites: int = 0
    unsettled_periods: int = 0
    in_flight: int = 0
    duplicate_readings: int = 0
    hanging: int = 0
    unreconciled: int = 0  # disagreements of lnd and the log (p2pgrid.reconcile)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        self.problems.append(text)


def replica_paths(scenario: Scenario, work_dir: Path, site_name: str) -> dict[str, Path]:
    """Every replica file of a site after a run in ``work_dir``, by its keeper: the
    utility's, each device's alone, and the one its site node's gateway keeps for
    its light devices when it runs several (named as the node:
    :func:`p2pgrid.agent.gateway.site_log_file`)."""
    site = next(s for s in scenario.sites if s.name == site_name)
    u = scenario.utility.name
    paths = {u: work_dir / u / f"{u}-{site_name}.db"}
    shared = len(site.light_devices) > 1
    for d in site.devices:
        if not (d.light and shared):
            paths[d.name] = work_dir / d.name / f"{d.name}.db"
    if shared and site.site_node is not None:
        first = min(site.light_devices, key=lambda d: d.index)
        paths[site.site_node] = work_dir / first.name / f"{site.name}.gateway.db"
    return paths


async def read_replica(path: Path, identity: SiteIdentity) -> tuple[bytes, list[Entry]]:
    """The digest and entries of one replica file of a site (``identity``: the site's
    key, the deployment's)."""
    store = await LogStore.open(path, identity, name=f"check-{path.stem}")
    try:
        return store.digest(), await store.entries()
    finally:
        await store.close()


async def replica_entries(path: Path, identity: SiteIdentity) -> list[Entry]:
    return (await read_replica(path, identity))[1]


async def utility_log(
    scenario: Scenario, work_dir: Path, site_name: str, identity: SiteIdentity
) -> list[Entry]:
    """The entries of the utility's replica of a site (its key ``identity``: the
    deployment's), after a run in ``work_dir``."""
    path = replica_paths(scenario, work_dir, site_name)[scenario.utility.name]
    return await replica_entries(path, identity)


def unpaired_site_sales(logs: Mapping[str, list[Entry]]) -> list[str]:
    """Purchases across sites (``site_sale`` BOUGHT, by payment hash, over every
    site's log) not logged sold exactly once by their seller's site, and sales
    logged with no purchase."""
    sides: dict[SaleSide, Counter[bytes]] = {SaleSide.BOUGHT: Counter(), SaleSide.SOLD: Counter()}
    for entries in logs.values():
        for e in entries:
            if isinstance(e.body, SiteSale):
                sides[e.body.side][e.body.payment_hash] += 1
    bought, sold = sides[SaleSide.BOUGHT], sides[SaleSide.SOLD]
    return [
        f"site sale {h.hex()[:12]}: bought {bought[h]}x, sold {sold[h]}x"
        for h in sorted(set(bought) | set(sold))
        if (bought[h], sold[h]) != (1, 1)
    ]


async def check_trial(
    scenario: Scenario,
    stack: Stack,
    work_dir: Path,
    before: dict[str, NodeSnapshot],
    sites: Mapping[str, SiteIdentity],
) -> Verdict:
    """Everything the trial left behind; ``before``: every node before the run;
    ``sites``: each site's key (the deployment's, :attr:`RunResult.sites`)."""
    verdict = Verdict()
    left = processes_under(work_dir)
    if left:
        verdict.hanging = len(left)
        verdict.problem(f"{len(left)} processes of the run still alive: {left}")
    paid_hashes: Counter[str] = Counter()
    for node in scenario.lnd_nodes:  # a light device pays from its site node
        async with stack.client(node) as client:
            for p in await client.list_payments():
                if p.status is PaymentStatus.SUCCEEDED:
                    paid_hashes[p.payment_hash] += 1
                elif p.status is PaymentStatus.IN_FLIGHT:
                    verdict.in_flight += 1
                    verdict.problem(f"{node}: payment {p.payment_hash[:12]} in flight")
    for h, n in paid_hashes.items():
        if n > 1:
            verdict.double_payments += n - 1
            verdict.problem(f"payment hash {h[:12]} paid {n} times")
    async with stack.client(scenario.utility.name) as utility:
        settled = {
            i.payment_hash for i in await utility.list_invoices() if i.state is InvoiceState.SETTLED
        }
    logs: dict[str, list[Entry]] = {}  # site name -> the union of its replicas
    for site in scenario.sites:
        digests = {}
        union: dict[tuple[Author, int], Entry] = {}
        for name, path in replica_paths(scenario, work_dir, site.name).items():
            if not path.exists():
                verdict.problem(f"{site.name}: replica {name} missing ({path})")
                continue
            digests[name], got = await read_replica(path, sites[site.name])
            for e in got:  # the union of the replicas: what any of them holds
                union[(e.author, e.seq)] = e
        if len(set(digests.values())) > 1:
            verdict.diverged_sites += 1
            counts = Counter(digests.values())
            odd = [n for n, d in digests.items() if counts[d] < max(counts.values())]
            verdict.problem(f"{site.name}: replicas differ ({odd} against the rest)")
        entries = sorted(union.values(), key=lambda e: (e.author.role, e.author.index, e.seq))
        logs[site.name] = entries
        readings = Counter(
            (e.author, e.body.interval_start_ms)
            for e in entries
            if isinstance(e.body, MeterReading)
        )
        for key, n in readings.items():
            if n > 1:
                verdict.duplicate_readings += n - 1
                verdict.problem(f"{site.name}: {key[0]} logged interval {key[1]} {n} times")
        payments = Counter(e.body.payment_hash for e in entries if isinstance(e.body, Payment))
        disputed = {(e.author, e.period) for e in entries if isinstance(e.body, Dispute)}
        invoices = {(e.body.device, e.period): e for e in entries if isinstance(e.body, Invoice)}
        for d in site.devices:
            for period in range(scenario.periods):
                owed = bill(entries, device=d.index, period=period, tariff=scenario.tariff)
                inv = invoices.get((d.index, period))
                where = f"{site.name}/{d.name} period {period}"
                if inv is None:
                    if owed.amount_msat:
                        verdict.unsettled_periods += 1
                        verdict.problem(f"{where}: {owed.amount_msat} msat owed, no invoice")
                    continue
                assert isinstance(inv.body, Invoice)
                h = inv.body.payment_hash
                if any(a.index == d.index for a, p in disputed if p == period):
                    continue  # disputed: not paid, on purpose
                if payments[h] == 0 or h.hex() not in settled:
                    verdict.lost_payments += 1
                    verdict.unsettled_periods += 1
                    verdict.problem(
                        f"{where}: invoice {h.hex()[:12]} logged payments={payments[h]}, "
                        f"settled in lnd={h.hex() in settled}"
                    )
                elif payments[h] > 1:
                    verdict.problem(f"{where}: invoice {h.hex()[:12]} logged paid {payments[h]}x")
    for problem in unpaired_site_sales(logs):
        verdict.problem(problem)
    run = RunResult([], [], {}, {}, work_dir, sites=dict(sites))
    money = await check_money(scenario, stack, run, before)
    verdict.unreconciled = len(money.problems)
    for problem in money.problems:
        verdict.problem(f"reconciliation: {problem}")
    return verdict


# -- accounts against an uncut run ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DevicePeriod:
    """One device's accounts of one period, as its site's log holds them after a run:
    the figures a partition is judged by (docs/reliability.md)."""

    #: (interval start in modelled ms, Wh) of every reading, ascending.
    readings: tuple[tuple[int, int], ...]
    #: Interval starts (modelled ms) the device curtailed itself in.
    curtailed: tuple[int, ...] = ()
    bill_msat: int = 0  # from the readings and the tariff (p2pgrid.ledger.bill)
    invoiced_msat: int | None = None  # the utility's invoice; None: no invoice
    paid_msat: int = 0  # of that invoice, over every payment entry logged for it
    payments: int = 0  # payment entries logged for that invoice
    carried_out_msat: int = 0
    # The market's figures: what a cut may change where the market is needed.
    bought_wh: int = 0
    sold_wh: int = 0
    shares_received_msat: int = 0
    shares_given_msat: int = 0
    orders: int = 0  # its orders in the site's pooled rounds (asks, demand curves)
    clearings: int = 0  # the rounds it traded in


#: (site, device name, period) -> its accounts.
Accounts = Mapping[tuple[str, str, int], DevicePeriod]


class Scope(enum.Enum):
    """Which figures of two runs must be equal."""

    #: Every figure: the scenario needs no market (:func:`needs_no_market`).
    EXACT = "exact"
    #: The figures no market decision touches: which intervals were read, the
    #: reading of every interval curtailed in neither run of a device that bought
    #: nothing that period in either run, and (per run) invoice == bill, paid once.
    METERED = "metered"


def needs_no_market(scenario: Scenario) -> bool:
    """Whether no device of ``scenario`` ever needs a neighbour: none produces, and
    every device's allocation covers the cost of its whole demand in every period
    (by its meter and the tariff, interval by interval as the agent checks it).
    Then no device buys, asks for a share or curtails itself, whatever the network
    does, and a run's accounts do not depend on it."""
    for site in scenario.sites:
        if any(d.producer for d in site.devices):
            return False
        allocations = split_budget(site.budget_msat, {d.index: d.weight for d in site.devices})
        for d in site.devices:
            meter = d.meter.source()
            for period in range(scenario.periods):
                first = period * scenario.intervals_per_period
                cost = 0
                for i in range(first, first + scenario.intervals_per_period):
                    modelled = scenario.model_interval(i)
                    r = meter.reading(modelled)
                    use = max(0, r.consumed_wh - r.produced_wh)
                    cost += charge_msat(scenario.tariff, [(modelled, use)])
                if cost > allocations.get(d.index, 0):
                    return False
    return True


def accounts_of(scenario: Scenario, site_name: str, entries: list[Entry]) -> Accounts:
    """The accounts of every device period of one site's log."""
    site = next(s for s in scenario.sites if s.name == site_name)
    view = fold(entries)
    out: dict[tuple[str, str, int], DevicePeriod] = {}
    for d in site.devices:
        for period in range(scenario.periods):
            mine = [
                e
                for e in entries
                if e.period == period and e.author.role is Role.DEVICE and e.author.index == d.index
            ]
            readings = sorted(
                (e.body.interval_start_ms, e.body.energy_wh)
                for e in mine
                if isinstance(e.body, MeterReading)
            )
            curtailed = sorted(e.body.start_ms for e in mine if isinstance(e.body, Curtailment))
            invoice = next(
                (
                    e.body
                    for e in entries
                    if e.period == period
                    and isinstance(e.body, Invoice)
                    and e.body.device == d.index
                ),
                None,
            )
            paid = (
                []
                if invoice is None
                else [
                    e.body
                    for e in entries
                    if isinstance(e.body, Payment) and e.body.payment_hash == invoice.payment_hash
                ]
            )
            account = view.account(d.index, period)
            out[(site.name, d.name, period)] = DevicePeriod(
                readings=tuple(readings),
                curtailed=tuple(curtailed),
                bill_msat=bill(
                    entries, device=d.index, period=period, tariff=scenario.tariff
                ).amount_msat,
                invoiced_msat=None if invoice is None else invoice.amount_msat,
                paid_msat=sum(p.amount_msat for p in paid),
                payments=len(paid),
                carried_out_msat=account.carried_out_msat,
                bought_wh=account.bought_wh,
                sold_wh=account.sold_wh,
                shares_received_msat=account.received_msat,
                shares_given_msat=account.given_msat,
                orders=sum(1 for e in mine if isinstance(e.body, Order)),
                clearings=sum(1 for e in mine if isinstance(e.body, Cleared)),
            )
    return out


async def read_accounts(
    scenario: Scenario, work_dir: Path, sites: Mapping[str, SiteIdentity]
) -> Accounts:
    """The accounts of a run in ``work_dir``, from the utility's replica of each site
    (its key in ``sites``; the checker asserts separately that every replica of a
    site is the same)."""
    out: dict[tuple[str, str, int], DevicePeriod] = {}
    for site in scenario.sites:
        entries = await utility_log(scenario, work_dir, site.name, sites[site.name])
        out.update(accounts_of(scenario, site.name, entries))
    return out


def _own_problems(where: str, a: DevicePeriod) -> list[str]:
    """What is wrong within one run's device period, whatever the other run did."""
    problems = []
    if a.invoiced_msat is None and a.bill_msat:
        problems.append(f"{where}: bill {a.bill_msat} msat, no invoice")
    if a.invoiced_msat is not None and a.invoiced_msat != a.bill_msat:
        problems.append(f"{where}: invoice {a.invoiced_msat} msat != bill {a.bill_msat} msat")
    if a.invoiced_msat is not None and (a.payments != 1 or a.paid_msat != a.invoiced_msat):
        problems.append(
            f"{where}: invoice {a.invoiced_msat} msat paid {a.paid_msat} msat "
            f"in {a.payments} payments (once, in full, expected)"
        )
    return problems


def compare_accounts(reference: Accounts, cut: Accounts, scope: Scope) -> list[str]:
    """Where the accounts of a run with a cut (``cut``) differ from those of the uncut
    run (``reference``) in a way ``scope`` forbids: one readable line per difference,
    none when they agree."""
    problems: list[str] = []
    for key in sorted(reference.keys() - cut.keys()):
        problems.append(f"{'/'.join(map(str, key))}: in the uncut run only")
    for key in sorted(cut.keys() - reference.keys()):
        problems.append(f"{'/'.join(map(str, key))}: in the cut run only")
    for key in sorted(reference.keys() & cut.keys()):
        ref, got = reference[key], cut[key]
        where = f"{key[0]}/{key[1]} period {key[2]}"
        problems += [f"uncut run: {p}" for p in _own_problems(where, ref)]
        problems += [f"cut run: {p}" for p in _own_problems(where, got)]
        ref_r, got_r = dict(ref.readings), dict(got.readings)
        for start in sorted(ref_r.keys() - got_r.keys()):
            problems.append(f"{where}: interval {start} read uncut ({ref_r[start]} Wh), not cut")
        for start in sorted(got_r.keys() - ref_r.keys()):
            problems.append(f"{where}: interval {start} read cut ({got_r[start]} Wh), not uncut")
        if scope is Scope.METERED:
            if ref.bought_wh or got.bought_wh:
                continue  # its readings count only the grid's part of its energy
            skip = set(ref.curtailed) | set(got.curtailed)
            for start in sorted(ref_r.keys() & got_r.keys() - skip):
                if ref_r[start] != got_r[start]:
                    problems.append(
                        f"{where}: interval {start}: {got_r[start]} Wh cut, {ref_r[start]} Wh uncut"
                    )
            continue
        for start in sorted(ref_r.keys() & got_r.keys()):
            if ref_r[start] != got_r[start]:
                problems.append(
                    f"{where}: interval {start}: {got_r[start]} Wh cut, {ref_r[start]} Wh uncut"
                )
        for field in dataclasses.fields(DevicePeriod):
            if field.name == "readings":
                continue
            a, b = getattr(ref, field.name), getattr(got, field.name)
            if a != b:
                problems.append(f"{where}: {field.name} {b} cut, {a} uncut")
    return problems
