"""The demo: a regtest stack, a utility and sites of devices trading for real, deployed
the way an operator deploys them.

Brings up btcd and one lnd per process of the scenario (funded, with channels to
the utility): the utility's, each device's on its own lnd, each site node (the
one lnd of a site's light devices, its channel sized for all of them: the
shipped scenario, ``two_sites_light.toml``, has store-1's fridge and hvac
light), writes the scenario as deployment files into the work directory
(:func:`p2pgrid.config.deployment.write_deployment`: fresh keys made by the
owner's own steps, ``utility.toml`` and one ``<site>.toml`` per site, fixed
ports, a compressed clock whose interval 0 is a moment after every process can
be up), prints the commands and runs them: ``p2pgrid utility run`` and one
``p2pgrid agent run`` per device on its own lnd and per site node (a gateway of
its light devices: :func:`p2pgrid.launcher.run_deployment`), each its own OS
process. Then it prints each site's period reports (table and PNG),
the invoices, whether every site's replicas agree, and whether every node's lnd
agrees with the logs to the msat (:func:`check_money`: a site node's payments
are its light devices', and a share between two of them an internal transfer).
While it runs it prints the utility's dashboard address (every agent serves one
too); with ``keep`` the processes and their dashboards stay up until Ctrl-C.

The work directory is the demo's: a directory that a previous demo wrote (its
marker file ``DEMO_MARKER``) is emptied first; any other non-empty one is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import importlib.resources
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from p2pgrid.config.deployment import Deployment, write_deployment
from p2pgrid.errors import ConfigError
from p2pgrid.launcher import (
    RunObserver,
    RunResult,
    command_line,
    lnd_nodes,
    run_deployment,
    start_after_lead,
)
from p2pgrid.ledger import Entry, LedgerView, LogStore, fold
from p2pgrid.ledger.activity import activity
from p2pgrid.reconcile import (
    NodeSnapshot,
    Party,
    Reconciliation,
    log_payments,
    reconcile,
    site_members,
    snapshot,
)
from p2pgrid.regtest import Stack, StackConfig, ensure_daemons
from p2pgrid.regtest.stack import remove_tree
from p2pgrid.regtest.topology import utility_star
from p2pgrid.report import period_report, report_png, report_table
from p2pgrid.scenario import Scenario, load_scenario

DEFAULT_SCENARIO = "two_sites_light.toml"
#: Written into the work directory: a later demo may empty it.
DEMO_MARKER = ".p2pgrid-demo"


def default_scenario() -> Path:
    return Path(str(importlib.resources.files("p2pgrid.scenarios") / DEFAULT_SCENARIO))


def prepare_work_dir(work_dir: Path) -> None:
    """Make ``work_dir`` empty: refuse one holding files no demo wrote."""
    if work_dir.exists() and any(work_dir.iterdir()):
        if not (work_dir / DEMO_MARKER).is_file():
            raise ConfigError(
                f"{work_dir} is not empty and not a demo's work directory: give --work-dir"
            )
        remove_tree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / DEMO_MARKER).write_text("written by `p2pgrid demo`: emptied by the next one\n")


async def run_demo(
    console: Console,
    *,
    scenario_path: Path | None,
    work_dir: Path,
    keep: bool,
    stack_name: str = "demo",
    stack_root: Path | None = None,
    stack: Stack | None = None,
) -> RunResult:
    """Run the demo (see the module's contract) on a stack ``stack_name`` under
    ``stack_root`` (default: where ``p2pgrid regtest`` keeps stacks), brought up
    here; or on ``stack``, one up already with a node per process of the scenario
    (a test's, shared with others), which it leaves running."""
    path = scenario_path or default_scenario()
    scenario = load_scenario(path)
    prepare_work_dir(work_dir)
    own = stack is None
    if stack is None:
        daemons = await ensure_daemons(console=console)
        topology = utility_star(scenario.own_lnd_devices, scenario.site_nodes)
        config = StackConfig(name=stack_name, topology=topology)
        stack = Stack(
            config if stack_root is None else dataclasses.replace(config, root=stack_root),
            daemons,
            console=console,
        )
        await stack.up()
    try:
        before = await snapshots(scenario, stack)
        # Every device counts: a gateway opens its light devices one after another.
        start = start_after_lead(1 + sum(len(s.devices) for s in scenario.sites))
        deployment = write_deployment(
            path, work_dir, await lnd_nodes(stack, scenario.lnd_nodes), start=start
        )
        print_deployment(console, deployment)

        async def summary(result: RunResult) -> None:
            await print_reports(console, scenario, result)
            checked = await check_money(scenario, stack, result, before)
            for line in await site_node_lines(scenario, result):
                console.print(line)
            console.print(
                f"lnd and the logs: [green]agree[/] ({checked})"
                if checked.ok
                else f"lnd and the logs: [red]disagree[/] ({checked})"
            )

        observer = DemoObserver(console, scenario, summary, keep=keep)
        result = await run_deployment(deployment, observer=observer)
        await summary(result)
    finally:
        if own and keep:
            console.print(
                f"stack [bold]{stack_name}[/] left running: stop it with "
                f"`p2pgrid regtest down {stack_name}`"
            )
        elif own:  # a caller's stack is the caller's to stop
            await stack.down()
    return result


def print_deployment(console: Console, deployment: Deployment) -> None:
    """The files written and the commands about to run, to copy."""
    d = deployment
    files = ", ".join(str(p) for p in (d.utility_file, *d.site_files.values()))
    console.print(
        f"deployment files (docs/deploy.md): {escape(files)}; entries files beside them, "
        f"keys under {escape(str(d.dir / 'keys'))}"
    )
    wait_s = (d.start - dt.datetime.now(dt.UTC)).total_seconds()
    console.print(
        f"interval 0 at {d.start:%H:%M:%S} UTC (in {wait_s:.0f} s), then ~{d.run_s:.0f} s of "
        f"periods; running (logs in {escape(str(d.dir))}/<name>.log; --control: the demo "
        "asks them for digests and invoices on stdin, leave it out by hand):"
    )
    for name in d.names:
        console.print(f"  p2pgrid {escape(shlex.join(command_line(d, name)))}", soft_wrap=True)


class DemoObserver(RunObserver):
    """Prints the dashboards' addresses; with ``keep``, prints the ``summary`` of
    the run and then holds it open (processes and dashboards up) until Ctrl-C."""

    def __init__(
        self,
        console: Console,
        scenario: Scenario,
        summary: Callable[[RunResult], Awaitable[None]],
        *,
        keep: bool,
    ) -> None:
        self.console = console
        self.scenario = scenario
        self.summary = summary
        self.keep = keep

    async def started(self, dashboards: dict[str, str]) -> None:
        utility = self.scenario.utility.name
        self.console.print(f"dashboard (live): [bold]{dashboards[utility]}[/]")
        others = ", ".join(f"{n} {u}" for n, u in dashboards.items() if n != utility)
        self.console.print(f"[dim]each agent's own: {others}[/]")

    async def finished(self, result: RunResult) -> None:
        if not self.keep:
            return
        await self.summary(result)
        self.console.print(
            f"run done; dashboard still at [bold]{result.dashboards[self.scenario.utility.name]}[/]"
            " (Ctrl-C stops the processes)"
        )
        await asyncio.Event().wait()  # until Ctrl-C cancels the run


async def print_reports(console: Console, scenario: Scenario, result: RunResult) -> None:
    stores: dict[str, LogStore] = {}
    try:
        for site in scenario.sites:  # the utility's replicas: every site's log and members
            db = result.work_dir / scenario.utility.name / f"{scenario.utility.name}-{site.name}.db"
            stores[site.name] = await LogStore.open(db, result.identity(site), name=site.name)
        views: dict[str, LedgerView] = {}
        names: dict[str, dict[int, str]] = {}
        for site in scenario.sites:
            store = stores[site.name]
            peers = {s.membership.site_hash: s.membership for s in stores.values() if s != store}
            entries = await store.entries()
            views[site.name] = fold(entries, site_hash=store.membership.site_hash, peer_sites=peers)
            names[site.name] = activity(entries).names
    finally:
        for store in stores.values():
            await store.close()
    for site in scenario.sites:
        view = views[site.name]
        for period in range(scenario.periods):
            report = period_report(view, period, site=site.name, names=names[site.name])
            console.print(report_table(report))
            png = report_png(report, result.work_dir / f"report-{site.name}-p{period}.png")
            console.print(f"picture: {png}")
    table = Table(title="Invoices (utility's lnd)")
    for column in ("site", "device", "period", "sat", "state"):
        table.add_column(column)
    device_names = {(site.name, d.index): d.name for site in scenario.sites for d in site.devices}
    for s in result.invoice_status:
        name = device_names.get((s["site"], s["device"]), str(s["device"]))
        table.add_row(
            escape(s["site"]), escape(name), str(s["period"]),
            f"{s['amount_msat'] / 1000:,.3f}", s["collection"],
        )  # fmt: skip
    console.print(table)
    for site_name, digests in result.digests.items():
        agree = len(set(digests.values())) == 1
        console.print(
            f"{escape(site_name)}: {len(digests)} replicas "
            + ("[green]agree[/]" if agree else "[red]differ[/]")
            + f" (digest {next(iter(digests.values()))[:16]}...)"
        )


async def snapshots(scenario: Scenario, stack: Stack) -> dict[str, NodeSnapshot]:
    """Every lnd node of the scenario as lnd shows it now."""
    out = {}
    for name in scenario.lnd_nodes:
        async with stack.client(name) as node:
            out[name] = await snapshot(name, node)
    return out


async def site_entries(scenario: Scenario, result: RunResult) -> dict[bytes, list[Entry]]:
    """Each site's log, from the utility's replica of it, by site hash."""
    logs = {}
    for site in scenario.sites:
        db = result.work_dir / scenario.utility.name / f"{scenario.utility.name}-{site.name}.db"
        store = await LogStore.open(db, result.identity(site), name=f"check-{site.name}")
        try:
            logs[store.membership.site_hash] = await store.entries()
        finally:
            await store.close()
    return logs


def node_members(scenario: Scenario, result: RunResult) -> dict[Party, str]:
    """The lnd node of every party of the run: a device's own, a light device's
    site node, the utility's."""
    members: dict[Party, str] = {}
    for site in scenario.sites:
        devices = {d.index: site.node_of(d) for d in site.devices}
        site_hash = result.identity(site).site_hash
        members |= site_members(site_hash, devices, utility=scenario.utility.name)
    return members


async def check_money(
    scenario: Scenario, stack: Stack, result: RunResult, before: dict[str, NodeSnapshot]
) -> Reconciliation:
    """Reconcile every node's lnd since ``before`` against the sites' logs (a light
    device's money is its site node's)."""
    return reconcile(
        before=before,
        after=await snapshots(scenario, stack),
        logs=await site_entries(scenario, result),
        members=node_members(scenario, result),
        routers={scenario.utility.name},
    )


async def site_node_lines(scenario: Scenario, result: RunResult) -> list[str]:
    """A line per site node: its light devices, and how many of the logs' payments
    from them were internal transfers (to another light device of the node: no
    Lightning hop) or went over Lightning."""
    members = node_members(scenario, result)
    moves = log_payments(await site_entries(scenario, result))
    lines = []
    for site in scenario.sites:
        if site.site_node is None:
            continue
        paying = [m for m in moves if members.get((m.site, m.entry.author)) == site.site_node]
        inside = sum(
            1 for m in paying if m.payee is not None and members.get(m.payee) == site.site_node
        )
        lines.append(
            f"site node {escape(site.site_node)} of {escape(site.name)}: light devices "
            + ", ".join(escape(d.name) for d in site.light_devices)
            + f"; {inside} payment(s) between them (internal transfers, no Lightning hop), "
            + f"{len(paying) - inside} over Lightning"
        )
    return lines
