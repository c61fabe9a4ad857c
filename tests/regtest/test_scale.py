"""A hundred devices over four sites and a utility, one compressed period, end to end.

The fleet of :mod:`p2pgrid.testing.fleet` (the scale bench's, ``bench/scale.py``)
on the two-site stack (``two_sites_stack``: a utility and six lnd nodes with a
channel each to it): four sites of 25 devices (:data:`PLAN`), each site one
``p2pgrid agent run --all`` gateway; four of the stack's nodes are the sites' nodes, through which
the light devices pay, the other two are the own lnd of one device in each of
the first two sites. The utility runs from its file; interval 0 is fixed once
every device is ready.

Size: 25 devices a site, 98 light, as the scale issue asks. Each gateway
speaks through one libp2p host per site; with one host per device (main before
commit 87588ea) four gateways of 25 were not all ready after 600 s on this
2-core machine under the other suites' load (every host dialling every other),
and the test ran four sites of five. With one host per site: 104-128 s, set-up
of the shared stack apart. Intervals of 12 s: at 8 s, one run under load had a
reading 11.8 s into its interval (p99 7.2 s in a run at 12 s).

Asserted afterwards: every device metered every interval, none missed, each
reading written within its interval (on time); every replica of a site (the
gateway's devices' and the utility's) answers one digest; the utility invoiced
every device once, each invoice is settled in the utility's lnd for its amount;
and lnd and the sites' logs agree to the msat (:func:`p2pgrid.reconcile.reconcile`:
every invoice paid exactly once, by the node the log names).

It is also the short run of the scale bench inside the test command: the bench's
own summary of this run (``bench/scale.py``'s ``summary``, with its raw lnd
baseline: a site node paying the utility, after the money check) is computed,
printed as the bench prints it, and must say the run completed on time.
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

from p2pgrid.identity import SiteIdentity
from p2pgrid.launcher import lnd_nodes
from p2pgrid.ledger import Invoice
from p2pgrid.lightning import InvoiceState
from p2pgrid.reconcile import reconcile, site_members, snapshot
from p2pgrid.regtest import Stack
from p2pgrid.testing.fleet import FleetNodes, FleetPlan, run_fleet, write_fleet

PLAN = FleetPlan(devices=100, sites=4, light_fraction=0.98, interval_s=12.0, intervals=3)
UTILITY = "utility"
SITE_NODES = ("s1-fridge", "s1-hvac", "s1-ev", "s2-solar")
DEVICE_NODES = ("s2-hvac", "s2-heater")
BENCH = Path(__file__).parents[2] / "bench"


@pytest.fixture
def scale_bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``bench/scale.py`` (it imports its neighbour ``lnd_payments`` as a script does)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("scale")


async def test_a_hundred_devices_over_four_sites_complete_a_period(
    two_sites_stack: Stack, tmp_path: Path, scale_bench: ModuleType
) -> None:
    stack = two_sites_stack
    names = (UTILITY, *SITE_NODES, *DEVICE_NODES)
    nodes = await lnd_nodes(stack, names)
    before = {}
    for name in names:
        async with stack.client(name) as client:
            before[name] = await snapshot(name, client)
    fleet = write_fleet(tmp_path, PLAN, FleetNodes(nodes, UTILITY, SITE_NODES, DEVICE_NODES))
    assert len(fleet.light) == 98
    run = await run_fleet(fleet)

    for name, report in run.reports.items():
        assert report["intervals"] == PLAN.intervals, (name, report)
        assert report["missed_intervals"] == 0, (name, report)
        assert report["period_states"] == {"0": "settled"}, (name, report)
    late = run.lateness_s()
    assert sorted(late) == sorted(fleet.node_of)
    assert all(len(v) == PLAN.intervals for v in late.values())
    worst = max(max(v) for v in late.values())
    assert 0 <= worst < PLAN.interval_s, f"a reading {worst:.1f} s into its interval"
    for site in fleet.sites:
        digests = run.digests[site.name]
        assert sorted(digests) == sorted((UTILITY, *site.devices))
        assert len(set(digests.values())) == 1, f"{site.name}'s replicas disagree: {digests}"

    logs = {SiteIdentity.from_hex(s.owner).site_hash: run.logs[s.name] for s in fleet.sites}
    for site in fleet.sites:
        invoiced = Counter(
            e.body.device for e in run.logs[site.name] if isinstance(e.body, Invoice)
        )
        assert invoiced == {i: 1 for i in site.index.values()}, site.name
    assert len(run.invoices) == PLAN.devices
    after = {}
    for name in names:
        async with stack.client(name) as client:
            after[name] = await snapshot(name, client)
    settled = {i.payment_hash: i for i in after[UTILITY].invoices}
    for invoice in run.invoices:
        paid = settled[invoice["payment_hash"]]
        assert paid.state is InvoiceState.SETTLED, invoice
        assert paid.amt_paid_msat == invoice["amount_msat"] > 0, invoice
    members = {}
    for site in fleet.sites:
        members |= site_members(
            SiteIdentity.from_hex(site.owner).site_hash,
            {i: fleet.node_of[n] for n, i in site.index.items()},
            utility=UTILITY,
        )
    money = reconcile(before=before, after=after, logs=logs, members=members, routers=[UTILITY])
    assert money.ok, str(money)
    assert money.payments >= PLAN.devices  # every invoice at least, each paid once

    trace = scale_bench.phases(
        run, await scale_bench.lnd_times(stack, (*SITE_NODES, *DEVICE_NODES))
    )
    assert trace["paid"] == trace["found_in_lnd"] == PLAN.devices  # each one's lnd payment
    ordered = [trace[phase]["first"] for phase in scale_bench.PHASES]
    assert ordered == sorted(ordered), trace  # invoiced, sent, settled, logged
    raw = await scale_bench.raw_lnd(stack, SITE_NODES[0], 10)
    row = scale_bench.summary(run, raw, trace)
    args = scale_bench.parse_args(
        ["--sizes", str(PLAN.devices), "--sites", str(PLAN.sites), "--intervals",
         str(PLAN.intervals), "--interval-s", str(PLAN.interval_s), "--light-fraction",
         str(PLAN.light_fraction)]
    )  # fmt: skip
    print(scale_bench.table([row], args))
    assert row["on_time"] == 1.0
    assert row["missed"] == row["unsettled"] == 0
    assert row["raw_lnd_per_s"] > 0
    assert row["invoice_payments_per_s"] > 0
    assert row["paying_per_s"] >= row["invoice_payments_per_s"]
    assert 0 < row["settled_s"] < PLAN.interval_s * PLAN.intervals + 180


pytestmark = pytest.mark.timeout(900)
