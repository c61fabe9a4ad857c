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
- **processes**: none of the run is left alive.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from p2pgrid.demo import check_money
from p2pgrid.identity import SiteIdentity
from p2pgrid.launcher import RunResult
from p2pgrid.ledger import Author, Dispute, Entry, Invoice, LogStore, MeterReading, Payment, bill
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
    site = next(s for s in scenario.sites if s.name == site_name)
    u = scenario.utility.name
    paths = {u: work_dir / u / f"{u}-{site_name}.db"}
    for d in site.devices:
        paths[d.name] = work_dir / d.name / f"{d.name}.db"
    return paths


async def read_replica(
    scenario: Scenario, site_name: str, path: Path, identity: SiteIdentity | None = None
) -> tuple[bytes, list[Entry]]:
    """The digest and entries of one replica file of a site (``identity``: the site's
    key where the run was deployed from files with fresh keys, else the scenario's)."""
    site = next(s for s in scenario.sites if s.name == site_name)
    store = await LogStore.open(path, identity or site.identity, name=f"check-{path.stem}")
    try:
        return store.digest(), await store.entries()
    finally:
        await store.close()


async def replica_entries(
    scenario: Scenario, site_name: str, path: Path, identity: SiteIdentity | None = None
) -> list[Entry]:
    return (await read_replica(scenario, site_name, path, identity))[1]


async def utility_log(scenario: Scenario, work_dir: Path, site_name: str) -> list[Entry]:
    """The entries of the utility's replica of a site, after a run in ``work_dir``."""
    path = replica_paths(scenario, work_dir, site_name)[scenario.utility.name]
    return await replica_entries(scenario, site_name, path)


async def check_trial(
    scenario: Scenario,
    stack: Stack,
    work_dir: Path,
    before: dict[str, NodeSnapshot],
    sites: Mapping[str, SiteIdentity] | None = None,
) -> Verdict:
    """Everything the trial left behind; ``before``: every node before the run;
    ``sites``: each site's key if not the scenario's (:attr:`RunResult.sites`)."""
    sites = sites or {}
    verdict = Verdict()
    left = processes_under(work_dir)
    if left:
        verdict.hanging = len(left)
        verdict.problem(f"{len(left)} processes of the run still alive: {left}")
    paid_hashes: Counter[str] = Counter()
    for node in (scenario.utility.name, *(d.name for s in scenario.sites for d in s.devices)):
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
    for site in scenario.sites:
        digests = {}
        union: dict[tuple[Author, int], Entry] = {}
        for name, path in replica_paths(scenario, work_dir, site.name).items():
            if not path.exists():
                verdict.problem(f"{site.name}: replica {name} missing ({path})")
                continue
            digests[name], got = await read_replica(scenario, site.name, path, sites.get(site.name))
            for e in got:  # the union of the replicas: what any of them holds
                union[(e.author, e.seq)] = e
        if len(set(digests.values())) > 1:
            verdict.diverged_sites += 1
            counts = Counter(digests.values())
            odd = [n for n, d in digests.items() if counts[d] < max(counts.values())]
            verdict.problem(f"{site.name}: replicas differ ({odd} against the rest)")
        entries = sorted(union.values(), key=lambda e: (e.author.role, e.author.index, e.seq))
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
    run = RunResult([], [], {}, {}, work_dir, sites=dict(sites))
    money = await check_money(scenario, stack, run, before)
    verdict.unreconciled = len(money.problems)
    for problem in money.problems:
        verdict.problem(f"reconciliation: {problem}")
    return verdict
