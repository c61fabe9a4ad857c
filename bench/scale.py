"""Benchmark: how a fleet of sites grows, from tens to hundreds of devices on this machine.

One run, one regtest stack: btcd, the utility's lnd, one site lnd per site (the
node its light devices pay through) and one lnd per device that has its own
(``--light-fraction`` decides how many: ``round(N * (1 - f))``), each with a
channel to the utility. For each size N of ``--sizes``, a fresh fleet
(:mod:`p2pgrid.testing.fleet`, the same one the end-to-end test
``tests/regtest/test_scale.py`` runs): N devices spread evenly over ``--sites``
sites, one ``p2pgrid agent run --all`` gateway per site, the utility from its
file; one compressed period of ``--intervals`` intervals of ``--interval-s``
seconds, interval 0 fixed once every device is ready. It measures:

- time per interval, against the interval's budget (``--interval-s``): how
  long after its interval began each device's reading was written (the
  interval's critical work is done before it: the buy round, the asks for
  shares or allowance of a device that runs short, a curtailment; an interval
  whose work ran over makes the next reading late), p50/p99/max over every
  device and interval, and "on time": the share written within their interval;
  and the growth exponent k of the p50 with devices (p50 ~ N^k, least squares
  on the log-log of the sizes that completed);
- memory: the gateways' RSS at their highest, per device (the utility apart);
- CPU: what every process of the run used from interval 0 to every device's
  ``done``, in % of one core (the machine's cores: ``nproc``);
- pubsub: messages published (envelopes) and RPCs sent to peers (publishes and
  forwards), every host once, per interval (hellos and set-up included);
- payments: the period's invoice payments per second (first invoice entry to
  last payment entry in the log: the utility's invoice creation on its lnd,
  each invoice's way to its device, the device's check, intent, payment and
  entry) against raw lnd REST payments in the same run (a site node paying the
  utility, ``--payments`` at 8 at once, invoices made before the clock starts,
  after the fleet stopped: lnd's own pace on a quieter machine); "settled s":
  the period's end to the last payment entry (a site whose invoicing waited
  for a device's last reading or for a sync shows here); "paying/s": the
  payments alone, the first payment lnd was asked to send to the last payment
  entry (what raw lnd/s compares with); and where the time goes, per paid
  invoice after the period's end (``phases_s`` of the JSON line): its invoice
  entry, its payment sent by the payer's lnd, its HTLC settled, its payment
  entry (first / p50 / last, and each site's last payment);
- entries per second into each replica: the site's entries over the time from
  interval 0 until its replicas answered one digest.

A size that does not complete (a device failed, a process ended, a deadline
passed) is reported with its reason and the larger ones are not tried. At the
end the table is printed in markdown (for docs/performance.md).

Usage (the table of docs/performance.md, and the short run ``./dev test`` makes):

    PYTHONPATH=$PWD .venv/bin/python bench/scale.py --sizes 10 50 200 500 --sites 4
    PYTHONPATH=$PWD .venv/bin/python bench/scale.py --short
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from lnd_payments import AMOUNT_MSAT, raw_payer, run  # bench/, the script's own directory

from p2pgrid.errors import P2PGridError
from p2pgrid.launcher import lnd_nodes
from p2pgrid.ledger import Invoice, Payment
from p2pgrid.regtest import Stack, StackConfig, ensure_daemons
from p2pgrid.regtest.stack import default_root
from p2pgrid.regtest.topology import utility_star
from p2pgrid.testing.fleet import (
    FleetFailed,
    FleetNodes,
    FleetPlan,
    FleetRun,
    run_fleet,
    write_fleet,
)

UTILITY = "utility"
SHORT = {"sizes": [6], "sites": 2, "intervals": 2, "interval_s": 6.0, "payments": 10}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def invoice_payments_per_s(run_: FleetRun) -> float:
    """Invoice payments of the period per second: first invoice entry to last
    payment of an invoice, in the logs' times."""
    invoiced, paid = [], []
    for entries in run_.logs.values():
        hashes = {e.body.payment_hash: e for e in entries if isinstance(e.body, Invoice)}
        invoiced += [e.timestamp_ms for e in hashes.values()]
        paid += [
            e.timestamp_ms
            for e in entries
            if isinstance(e.body, Payment) and e.body.payment_hash in hashes
        ]
    if not paid:
        return 0.0
    return len(paid) / max(0.001, (max(paid) - min(invoiced)) / 1000)


async def lnd_times(stack: Stack, payers: tuple[str, ...]) -> dict[bytes, tuple[float, float]]:
    """Per payment hash of a succeeded payment of the ``payers``' lnd nodes: when
    lnd was asked to pay it and when its HTLC settled (epoch s, lnd's records)."""
    out: dict[bytes, tuple[float, float]] = {}
    for payer in payers:
        http, _ = raw_payer(stack.endpoint(payer))
        try:
            params = {"include_incomplete": "false", "max_payments": "100000"}
            response = await http.get("/v1/payments", params=params)
            response.raise_for_status()
        finally:
            await http.aclose()
        for p in response.json().get("payments", []):
            settled = [
                int(h["resolve_time_ns"]) for h in p.get("htlcs", []) if h["status"] == "SUCCEEDED"
            ]
            if p["status"] == "SUCCEEDED" and settled:
                hash_ = bytes.fromhex(p["payment_hash"])
                out[hash_] = (int(p["creation_time_ns"]) / 1e9, max(settled) / 1e9)
    return out


PHASES = ("invoiced", "pay_sent", "htlc_settled", "logged")


def phases(run_: FleetRun, lnd: dict[bytes, tuple[float, float]]) -> dict[str, Any]:
    """Where the period's settlement goes: per paid invoice, seconds after the
    period's end of its invoice entry (the utility's invoicing of it began), of
    the payer's lnd asked to pay it (its device saw the invoice, checked it and
    recorded its intent), of its HTLC settled, and of its payment entry; each as
    first / p50 / last over the run's invoices (and per site, the last)."""
    end = run_.at + run_.fleet.plan.intervals * run_.fleet.plan.interval_s
    rows: list[tuple[float, ...]] = []
    last_per_site: dict[str, float] = {}
    for site, entries in run_.logs.items():
        invoices = {e.body.payment_hash: e for e in entries if isinstance(e.body, Invoice)}
        for e in entries:
            if isinstance(e.body, Payment) and e.body.payment_hash in invoices:
                sent, settled = lnd.get(e.body.payment_hash, (math.nan, math.nan))
                invoiced = invoices[e.body.payment_hash].timestamp_ms / 1000
                logged = e.timestamp_ms / 1000
                rows.append((invoiced - end, sent - end, settled - end, logged - end))
                last_per_site[site] = max(last_per_site.get(site, -math.inf), logged - end)
    out: dict[str, Any] = {
        "paid": len(rows),
        "found_in_lnd": sum(not math.isnan(r[1]) for r in rows),
        "last_paid_per_site": last_per_site,
    }
    for k, name in enumerate(PHASES):
        values = [r[k] for r in rows if not math.isnan(r[k])]
        if values:
            out[name] = {
                "first": min(values),
                "p50": statistics.median(values),
                "last": max(values),
            }
    return out


def paying_per_s(trace: dict[str, Any]) -> float:
    """The payments' own pace: paid invoices over the time from the first lnd
    payment sent to the last payment entry (what raw lnd/s compares with)."""
    if not trace["paid"] or "pay_sent" not in trace:
        return 0.0
    span = float(trace["logged"]["last"]) - float(trace["pay_sent"]["first"])
    return float(trace["paid"]) / max(0.001, span)


def summary(run_: FleetRun, raw_per_s: float, trace: dict[str, Any]) -> dict[str, Any]:
    plan = run_.fleet.plan
    late = [t for v in run_.lateness_s().values() for t in v]
    gateways = [s.name for s in run_.fleet.sites]
    peak_kb = max(sum(s.rss_kb[g] for g in gateways) for s in run_.samples)
    during = [s for s in run_.samples if 0 <= s.t_s <= run_.done_s]
    first, last = during[0], during[-1]
    cpu_pct = (
        100
        * (sum(last.cpu_s.values()) - sum(first.cpu_s.values()))
        / max(0.001, last.t_s - first.t_s)
    )
    hosts = run_.host_totals()
    entries = statistics.mean(len(v) for v in run_.logs.values())
    reports = run_.reports.values()
    return {
        "devices": plan.devices,
        "sites": plan.sites,
        "light": len(run_.fleet.light),
        "completed": True,
        "ready_s": run_.ready_s,
        "p50_s": statistics.median(late),
        "p99_s": percentile(late, 0.99),
        "max_s": max(late),
        "on_time": sum(t < plan.interval_s for t in late) / len(late),
        "missed": sum(r["missed_intervals"] for r in reports),
        "unsettled": sum(r["period_states"] != {"0": "settled"} for r in reports),
        "gateway_mb_per_device": peak_kb / 1024 / plan.devices,
        "gateways_mb": peak_kb / 1024,
        "cpu_pct": cpu_pct,
        "published_per_interval": hosts.get("published_envelopes", 0) / plan.intervals,
        "rpcs_per_interval": hosts.get("rpcs_queued", 0) / plan.intervals,
        "invoice_payments_per_s": invoice_payments_per_s(run_),
        "settled_s": trace["logged"]["last"] if trace["paid"] else math.nan,
        "paying_per_s": paying_per_s(trace),
        "phases_s": trace,
        "raw_lnd_per_s": raw_per_s,
        "entries_per_s_per_replica": entries / run_.converged_s,
        "converged_s": run_.converged_s,
    }


async def raw_lnd(stack: Stack, payer: str, count: int) -> float:
    """Payments/s of raw REST calls ``payer`` -> utility, 8 at once (lnd's own pace)."""
    async with stack.client(UTILITY) as utility:
        invoices = [
            (await utility.add_invoice(AMOUNT_MSAT, "bench")).payment_request for _ in range(count)
        ]
    http, pay = raw_payer(stack.endpoint(payer))
    try:
        result = await run(pay, invoices, 8)
    finally:
        await http.aclose()
    await stack.wait_settled()
    return result["per_s"]


def exponent(rows: list[dict[str, Any]], key: str) -> float | None:
    """k of ``key`` ~ devices^k, least squares on the log-log of completed rows."""
    points = [(math.log(r["devices"]), math.log(r[key])) for r in rows if r[key] > 0]
    if len(points) < 2:
        return None
    mx = statistics.mean(x for x, _ in points)
    my = statistics.mean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else None


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [
        f"{args.sites} sites, light fraction {args.light_fraction}, {args.intervals} intervals "
        f"of {args.interval_s} s (the budget of an interval), {os.cpu_count()} cores, "
        f"load average at the end {os.getloadavg()[0]:.1f}",
        "",
        "| devices | light | ready s | interval p50 s | p99 s | max s | on time | missed "
        "| unsettled | gateway MB/device | CPU % | published/interval | RPCs/interval "
        "| invoice payments/s | settled s | paying/s | raw lnd/s | entries/s per replica |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if not r["completed"]:
            out.append(f"| {r['devices']} | {r['light']} | did not complete: {r['reason']} |")
            continue
        out.append(
            f"| {r['devices']} | {r['light']} | {r['ready_s']:.0f} | {r['p50_s']:.2f} "
            f"| {r['p99_s']:.2f} | {r['max_s']:.2f} | {100 * r['on_time']:.0f} % | {r['missed']} "
            f"| {r['unsettled']} "
            f"| {r['gateway_mb_per_device']:.1f} | {r['cpu_pct']:.0f} "
            f"| {r['published_per_interval']:.0f} | {r['rpcs_per_interval']:.0f} "
            f"| {r['invoice_payments_per_s']:.1f} | {r['settled_s']:.1f} "
            f"| {r['paying_per_s']:.1f} | {r['raw_lnd_per_s']:.1f} "
            f"| {r['entries_per_s_per_replica']:.1f} |"
        )
    done = [r for r in rows if r["completed"]]
    k = exponent(done, "p50_s")
    m = exponent(done, "gateways_mb")
    out.append("")
    out.append(
        "growth exponent (x ~ devices^k, sizes that completed): time per interval p50 "
        + (f"k = {k:.2f}" if k is not None else "n/a")
        + "; gateways' memory "
        + (f"k = {m:.2f}" if m is not None else "n/a")
    )
    if len(done) >= 2:
        a, b = done[0], done[-1]
        extra = (b["gateways_mb"] - a["gateways_mb"]) / (b["devices"] - a["devices"])
        out.append(
            f"memory of a further device in a gateway: {extra:.1f} MB "
            f"(({b['gateways_mb']:.0f} - {a['gateways_mb']:.0f}) MB / "
            f"({b['devices']} - {a['devices']}) devices)"
        )
    return "\n".join(out)


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    plans = [
        FleetPlan(n, min(args.sites, n), args.light_fraction, args.interval_s, args.intervals)
        for n in args.sizes
    ]
    sites = tuple(f"site-{s}" for s in range(max(p.sites for p in plans)))
    own = tuple(f"dev-{k}" for k in range(max(p.lnd_devices for p in plans)))
    config = StackConfig(
        name=f"bench-scale-{os.getpid()}",
        root=default_root() / "bench",
        topology=utility_star((*sites, *own)),
    )
    stack = Stack(config, await ensure_daemons())
    started = time.monotonic()
    await stack.up()
    print(f"stack of {1 + len(sites) + len(own)} lnd up in {time.monotonic() - started:.0f} s",
          file=sys.stderr, flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    try:
        nodes = await lnd_nodes(stack, (UTILITY, *sites, *own))
        for plan in plans:
            with contextlib.ExitStack() as keep:
                if args.keep is None:
                    tmp = keep.enter_context(tempfile.TemporaryDirectory(prefix="p2pgrid-scale-"))
                    root = Path(tmp)
                else:
                    root = args.keep / f"n{plan.devices}"
                fleet = write_fleet(root, plan, FleetNodes(nodes, UTILITY, sites, own))
                try:
                    ran = await run_fleet(fleet)
                except (FleetFailed, TimeoutError, P2PGridError) as exc:  # say why, stop growing
                    traceback.print_exc()
                    reason = (str(exc) or type(exc).__name__).splitlines()[0][:200]
                    rows.append(
                        {"devices": plan.devices, "light": len(fleet.light), "completed": False,
                         "reason": reason}
                    )  # fmt: skip
                    untried = [p.devices for p in plans if p.devices > plan.devices]
                    rows += [
                        {"devices": n, "light": "", "completed": False,
                         "reason": f"not tried ({plan.devices} did not complete)"}
                        for n in untried
                    ]  # fmt: skip
                    break
                await stack.wait_settled()
                trace = phases(ran, await lnd_times(stack, (*sites, *own)))
                raw = await raw_lnd(stack, sites[0], args.payments)
                rows.append(summary(ran, raw, trace))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        print(table(rows, args), flush=True)  # also when stopped (Ctrl-C) midway
        await stack.down()
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200, 500])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--light-fraction", type=float, default=0.99)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--intervals", type=int, default=3)
    parser.add_argument("--payments", type=int, default=50, help="raw lnd payments per size")
    parser.add_argument(
        "--keep", type=Path, help="write each size's fleet (files, logs, replicas) under here"
    )
    parser.add_argument("--short", action="store_true", help="one small size (the test's)")
    args = parser.parse_args(argv)
    if args.short:
        for key, value in SHORT.items():
            setattr(args, key, value)
    return args


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parse_args()))
