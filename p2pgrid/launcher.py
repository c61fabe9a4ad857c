"""Runs a scenario: the utility and every device agent as separate OS processes.

The launcher only starts processes and speaks their line protocol
(:mod:`p2pgrid.jsonlines`); the processes share nothing but libp2p and
Lightning. Each process logs to ``<work_dir>/<name>.log``. Two ways in, one
assembly (both build the ``AgentSetup``/``UtilitySetup`` the node processes run):

- :func:`run_deployment` (the demo, most regtest tests) runs a
  scenario written as deployment files (:mod:`p2pgrid.config.deployment`) with
  the commands an operator runs,
  ``p2pgrid utility run`` and ``p2pgrid agent run`` (:func:`command_line`);
  their clock is the files', so nothing tells them to start (or, with
  ``start_when_ready``, the launcher's: they run with ``--await-start`` and get
  one ``start`` once all are ready, as in step 3 below).
Every test that runs the processes deploys its scenario this way
(``tests/regtest/deployed.py``); as follows:

1. The utility starts; once its hosts listen (its ready line), the devices start.
2. Every device agent starts, bootstrapping from the addresses its file names
   (its site's utility host and the devices listed before it): a device on its
   own lnd in a process of its own, a site node's light devices together in one
   gateway process (``agent run --device A --device B``, named as the node:
   :attr:`p2pgrid.config.deployment.Deployment.processes`), whose one client of
   the node they share; its lines name each device.
3. When every process is done, the launcher waits until all replicas of each
   site have the same digest, asks the utility for its invoices' status, and
   stops everything.

Every process serves a dashboard (:mod:`p2pgrid.dashboard`); the ready lines
give their addresses. A :class:`RunObserver` hears of them once the run starts
(:meth:`RunObserver.started`), and of the result before the processes stop
(:meth:`RunObserver.finished`): the demo prints the addresses and, with
``--keep``, waits there; the browser test looks at the page meanwhile.

Where each process lives is a :class:`Placement` (``place``): by default all
run here and listen on loopback; a test of several hosts puts the utility and
each site in its own network namespace (a command prefix, ``ip netns exec
<ns>``) listening on that namespace's address (a gateway: where its hub
device, the lowest index, is placed). Nothing else changes: every
process bootstraps from the addresses the others' ready lines gave, and
reaches its lnd at the address the stack gives (:class:`p2pgrid.regtest.StackConfig`,
``rest_host``).

A test may disrupt the run (``during``): :meth:`Running.restart` kills a device
agent (with a gateway's other devices) with SIGKILL and starts the same
``p2pgrid agent run`` command again (its
file gives the start, or, with ``--await-start``, the same ``start`` line); the
agent rejoins the running
scenario from its own replica (:meth:`p2pgrid.agent.device.DeviceAgent.run`).
:meth:`Running.restart_utility` does the same to the utility, which comes back
on the same libp2p addresses (its ``ports.json``) and lnd node, and
:meth:`Running.exited` waits for a process that kills itself (a test program
that crashes at a chosen point, :mod:`p2pgrid.testing.crash`). A restart always
starts the product's command (``p2pgrid agent run`` / ``utility run``), whatever
program ran before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from p2pgrid.config.deployment import Deployment, LndNode
from p2pgrid.errors import TimeoutExpired
from p2pgrid.identity import SiteIdentity
from p2pgrid.jsonlines import ChildProcess, ProcessFailed
from p2pgrid.poll import wait_until
from p2pgrid.regtest import Stack
from p2pgrid.scenario import Scenario, SiteSpec, load_scenario

log = logging.getLogger(__name__)

#: Per device (a gateway opens its devices one after another): a deadline for a
#: process that will never say "ready", not a pace. A device whose meter reads
#: a BDEW profile imports pandas and demandlib before it is ready; on a 2-core
#: machine at load 20 a whole start (imports, lnd, host, replica) took ~70 s.
READY_TIMEOUT_S = 120.0
START_DELAY_S = 3.0  # between "all ready" and interval 0: the mesh settles
SETTLE_MARGIN_S = 120.0  # after the last interval: invoices and payments
CONVERGE_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one process of a run lives. ``prefix`` goes before its command
    (``("ip", "netns", "exec", "<ns>")`` runs it in a network namespace); its
    libp2p hosts listen on ``listen_host``, the address the other parties dial."""

    prefix: tuple[str, ...] = ()
    listen_host: str = "127.0.0.1"


#: Where each process of a run lives, by its name (the utility's or a device's).
Placer = Callable[[str], Placement]


def on_this_host(name: str) -> Placement:
    """Every process on this host, on loopback: the default placement."""
    return Placement()


@dataclasses.dataclass(frozen=True)
class UtilityCommand:
    """A test program run in place of ``utility run`` on the same file:
    ``python -m <module> --config utility.toml --control <args>``."""

    module: str
    args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class AgentCommand:
    """A test program run in place of a device's ``agent run`` on the same file:
    ``python -m <module> --config site.toml --device N --control <args>``."""

    module: str
    args: tuple[str, ...] = ()


class RunObserver(Protocol):
    """Hears how a run goes; its calls run inside the run (processes up)."""

    async def started(self, dashboards: dict[str, str]) -> None:
        """Every process got its start time; ``dashboards``: process name -> URL."""

    async def finished(self, result: RunResult) -> None:
        """The run is done and converged; the processes still serve."""


@dataclasses.dataclass
class RunResult:
    utility_invoices: list[dict[str, Any]]
    invoice_status: list[dict[str, Any]]
    reports: dict[str, dict[str, Any]]
    digests: dict[str, dict[str, str]]  # site -> replica name -> digest
    work_dir: Path
    dashboards: dict[str, str] = dataclasses.field(default_factory=dict)  # process -> URL
    #: Each site's key by name (the deployment's: fresh, never the scenario's seeds).
    sites: dict[str, SiteIdentity] = dataclasses.field(default_factory=dict)

    def identity(self, site: SiteSpec) -> SiteIdentity:
        """``site``'s key in this run (the deployment's)."""
        return self.sites[site.name]


async def _spawn(
    module: str,
    name: str,
    args: list[str],
    work_dir: Path,
    log_name: str | None = None,
    placement: Placement = Placement(),
) -> ChildProcess:
    return await ChildProcess.spawn(
        name, module, args, work_dir / (log_name or f"{name}.log"), prefix=placement.prefix
    )


@dataclasses.dataclass
class Running:
    """A scenario while it runs, for tests that disrupt it."""

    scenario: Scenario
    at: float  # epoch seconds of interval 0
    work_dir: Path
    devices: dict[str, ChildProcess]  # the current process of each device
    children: list[ChildProcess]  # every process started (all are stopped at the end)
    utility: ChildProcess
    pubkeys: dict[str, str]
    argv: dict[str, list[str]]  # every process's arguments (the product's, no test extras)
    #: Each device process's name and its devices (a gateway: several).
    processes: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    restarts: dict[str, int] = dataclasses.field(default_factory=dict)
    placements: dict[str, Placement] = dataclasses.field(default_factory=dict)
    utility_pubkey: str = ""
    utility_addrs: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: The modules a restart runs (device, utility) with ``argv``: ``p2pgrid``'s
    #: ``agent run`` / ``utility run``; and whether it then sends ``start`` (they run
    #: with ``--await-start``), else their clock is their file's.
    programs: tuple[str, str] = ("p2pgrid", "p2pgrid")
    send_start: bool = False

    def time_of(self, interval: int) -> float:
        return self.at + interval * self.scenario.interval_s

    async def until(self, interval: int, offset_s: float = 0.0) -> None:
        """Return once ``offset_s`` into ``interval`` (a clock tick, not a sync)."""
        delay = self.time_of(interval) + offset_s - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def process_of(self, device: str) -> str:
        """The process that runs ``device`` (its own, or its site node's gateway)."""
        return next((p for p, names in self.processes.items() if device in names), device)

    async def restart(self, name: str) -> None:
        """SIGKILL device ``name`` (a gateway's: with its other devices) and start it
        again on the same files; returns once it is ready and was told to start
        (same start time and nodes as everyone; a deployment's too with
        ``--await-start``), or (a deployment's on its file's clock) once it is
        ready: its file says when."""
        await self.devices[name].kill()
        process = self.process_of(name)
        names = self.processes.get(process, (name,))
        child, ready = await self._respawn(self.programs[0], process, names)
        for device, up in ready.items():
            self.devices[device] = child
            if up["pubkey"] != self.pubkeys[device]:
                raise ProcessFailed(f"{device} came back on another lnd node: {up['pubkey']}")
        if self.send_start:
            await child.send("start", at=self.at, nodes=self.pubkeys)

    async def restart_utility(self) -> None:
        """SIGKILL the utility (if it still runs) and start the product's utility again
        on the same files; returns once it was told to start (as :meth:`restart`). It
        must come back on the same lnd node and libp2p addresses, where the devices
        redial it."""
        name = self.scenario.utility.name
        await self.utility.kill()
        self.utility, ready = await self._respawn(self.programs[1], name)
        up = ready[name]
        if up["pubkey"] != self.utility_pubkey:
            raise ProcessFailed(f"{name} came back on another lnd node: {up['pubkey']}")
        if up["addrs"] != self.utility_addrs:
            raise ProcessFailed(f"{name} came back elsewhere: {up['addrs']}")
        if self.send_start:
            await self.utility.send("start", at=self.at)

    async def exited(self, name: str, timeout_s: float) -> int:
        """Wait until process ``name`` (a device or the utility) exits on its own;
        returns its exit code (``-9``: it was killed with SIGKILL)."""
        child = self.utility if name == self.scenario.utility.name else self.devices[name]
        async with asyncio.timeout(timeout_s):
            return await child.wait()

    async def _respawn(
        self, module: str, name: str, devices: tuple[str, ...] = ()
    ) -> tuple[ChildProcess, dict[str, dict[str, Any]]]:
        """Process ``name`` started again; its ready line (the utility's), or each
        of ``devices``'."""
        n = self.restarts[name] = self.restarts.get(name, 0) + 1
        child = await _spawn(
            module,
            name,
            self.argv[name],
            self.work_dir,
            f"{name}.{n}.log",
            self.placements.get(name, Placement()),
        )
        self.children.append(child)
        async with asyncio.timeout(READY_TIMEOUT_S * max(1, len(devices))):
            if not devices:
                return child, {name: await child.expect("ready")}
            return child, await child.expect_each("ready", devices)


#: What a test does to a running scenario; it returns before the last interval.
Disruption = Callable[[Running], Awaitable[None]]


#: From writing a deployment's files to its interval 0: every process starts and its
#: hosts meet (on the loaded 2-core machine, 7 processes took ~48 s to be ready).
START_LEAD_S = 10.0
START_LEAD_PER_PROCESS_S = 8.0


def start_after_lead(processes: int) -> dt.datetime:
    """Interval 0 of a deployment of ``processes`` processes written now: once they
    can all be up (:data:`START_LEAD_S` and :data:`START_LEAD_PER_PROCESS_S`)."""
    lead_s = START_LEAD_S + START_LEAD_PER_PROCESS_S * processes
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead_s)).replace(microsecond=0)


#: ``p2pgrid`` before each command of a deployment's processes: INFO logs to stderr.
CLI_PREFIX = ("-v",)
#: After each command: it also reads the launcher's commands (digest, status, stop).
CLI_CONTROL = ("--control",)
#: After those, in a run that starts the clock once every process is ready
#: (``run_deployment(start_when_ready=True)``): interval 0 is the launcher's ``start``.
CLI_AWAIT_START = ("--await-start",)


async def lnd_nodes(stack: Stack, names: Sequence[str]) -> dict[str, LndNode]:
    """The lnd of each of ``names`` on ``stack``: its REST endpoint and its pubkey."""
    nodes = {}
    for name in names:
        async with stack.client(name) as client:
            nodes[name] = LndNode(stack.endpoint(name), (await client.get_info()).pubkey)
    return nodes


def command_line(deployment: Deployment, name: str, *, await_start: bool = False) -> list[str]:
    """The ``p2pgrid`` arguments the launcher runs process ``name`` of ``deployment``
    with (``await_start``: interval 0 from the launcher, :data:`CLI_AWAIT_START`)."""
    return [*CLI_PREFIX, *deployment.argv(name), *CLI_CONTROL, *_await(await_start)]


def _await(await_start: bool) -> tuple[str, ...]:
    return CLI_AWAIT_START if await_start else ()


async def run_deployment(
    deployment: Deployment,
    *,
    observer: RunObserver | None = None,
    during: Disruption | None = None,
    utility: UtilityCommand | None = None,
    agents: Mapping[str, AgentCommand] | None = None,
    start_when_ready: bool = False,
    place: Placer = on_this_host,
) -> RunResult:
    """Run the processes of ``deployment`` the way an operator does, from its files:
    ``p2pgrid utility run``, then one ``p2pgrid agent run`` per device (the
    command a user runs, :func:`command_line`; each logs to ``<dir>/<name>.log``).
    Interval 0 is the files' ``clock.start``: nothing is sent to start them. With
    ``start_when_ready`` the launcher fixes interval 0 instead, :data:`START_DELAY_S`
    after every process is ready (the commands get ``--await-start``; the files'
    start is not used): the run does not wait out a lead written for a loaded
    machine (:func:`start_after_lead`). When
    every process is done, the replicas' agreement and the invoices' state are
    asked for (see the module's contract), then every process is stopped.
    ``during`` runs once every process is ready (see :class:`Running`; a restart
    runs the product's command again); ``utility`` and ``agents`` (by process name: a
    device's own, :attr:`~p2pgrid.config.deployment.Deployment.processes`):
    test programs run in place of ``p2pgrid utility run`` / ``agent run`` on the same
    files; ``place`` says where each process runs (its :class:`Placement`'s
    ``prefix``; the files name its ``listen_host``: ``write_deployment``'s ``listen_hosts``;
    a gateway of light devices lives where its hub device, the lowest index, is placed)."""
    children: list[ChildProcess] = []
    programs: dict[str, UtilityCommand | AgentCommand] = dict(agents or {})
    if utility is not None:
        programs[deployment.utility] = utility
    try:
        placements = {deployment.utility: place(deployment.utility)}
        placements |= {name: place(ds[0]) for name, ds in deployment.processes.items()}
        return await _run_deployment(
            deployment, children, observer, during, programs, start_when_ready, placements
        )
    finally:
        async with asyncio.TaskGroup() as stops:
            for child in children:
                stops.create_task(child.stop())


async def _run_deployment(
    deployment: Deployment,
    children: list[ChildProcess],
    observer: RunObserver | None,
    during: Disruption | None,
    programs: Mapping[str, UtilityCommand | AgentCommand],
    start_when_ready: bool,
    placements: dict[str, Placement],
) -> RunResult:
    work_dir, uname = deployment.dir, deployment.utility
    extra = _await(start_when_ready)

    async def spawn(name: str) -> ChildProcess:
        program, where = programs.get(name), placements[name]
        if program is None:
            argv = command_line(deployment, name, await_start=start_when_ready)
            child = await _spawn("p2pgrid", name, argv, work_dir, placement=where)
        else:  # the command's options after ``run``, then the program's own
            args = [*deployment.argv(name)[2:], *CLI_CONTROL, *extra, *program.args]
            child = await _spawn(program.module, name, args, work_dir, placement=where)
        children.append(child)
        return child

    utility = await spawn(uname)
    async with asyncio.timeout(READY_TIMEOUT_S):
        ready = await utility.expect("ready")  # its hosts listen: devices dial them
    dashboards = {uname: str(ready.get("dashboard", ""))}
    processes = deployment.processes
    started = {name: await spawn(name) for name in processes}
    devices = {d: started[name] for name, names in processes.items() for d in names}
    pubkeys = {}
    for name, child in started.items():
        async with asyncio.timeout(READY_TIMEOUT_S * len(processes[name])):
            ready_devices = await child.expect_each("ready", processes[name])
        for device, up in ready_devices.items():
            dashboards[device] = str(up.get("dashboard", ""))
            pubkeys[device] = str(up["pubkey"])
    at = deployment.start.timestamp()
    if start_when_ready:
        at = time.time() + START_DELAY_S
        for child in children:
            await child.send("start", at=at)
    late_s = time.time() - at
    if late_s > 0:
        log.warning("every process was up %.1f s after interval 0 began: intervals missed", late_s)
    if observer is not None:
        await observer.started(dashboards)
    reports: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(max(0.0, -late_s) + deployment.run_s + SETTLE_MARGIN_S):
        if during is not None:
            running = Running(
                load_scenario(deployment.scenario),
                at,
                work_dir,
                devices,
                children,
                utility,
                pubkeys,
                {
                    name: command_line(deployment, name, await_start=start_when_ready)
                    for name in deployment.names
                },
                processes=dict(processes),
                placements=placements,
                utility_pubkey=str(ready["pubkey"]),
                utility_addrs=ready["addrs"],
                programs=("p2pgrid", "p2pgrid"),
                send_start=start_when_ready,
            )
            await during(running)
            utility = running.utility  # it may have been restarted
        for names in processes.values():  # a restart may have replaced the process
            done = await devices[names[0]].expect_each("done", names)
            reports |= {device: line["report"] for device, line in done.items()}
        reports = {device: reports[device] for device in deployment.device_sites}
        invoices = (await utility.expect("done"))["invoices"]
    return await _finish(
        Ended(uname, deployment.device_sites, processes, utility, devices, reports, invoices),
        RunResult([], [], {}, {}, work_dir, dashboards, dict(deployment.identities)),
        observer,
    )


@dataclasses.dataclass(frozen=True)
class Ended:
    """A run whose processes are all done (and still serve their replicas)."""

    utility_name: str
    sites: dict[str, str]  # device name -> its site's name
    processes: dict[str, tuple[str, ...]]  # device process name -> its devices
    utility: ChildProcess
    devices: dict[str, ChildProcess]
    reports: dict[str, dict[str, Any]]  # the devices' done reports
    invoices: list[dict[str, Any]]  # the utility's done invoices


async def _finish(ended: Ended, shell: RunResult, observer: RunObserver | None) -> RunResult:
    """Wait until each site's replicas agree, ask the utility for its invoices'
    state; ``shell`` gives the result's work dir, dashboards and sites."""
    digests = await _converged(ended)
    await ended.utility.send("status")
    status = (await ended.utility.expect("status"))["invoices"]
    result = dataclasses.replace(
        shell,
        utility_invoices=ended.invoices,
        invoice_status=status,
        reports=ended.reports,
        digests=digests,
    )
    if observer is not None:
        await observer.finished(result)
    return result


async def _converged(ended: Ended) -> dict[str, dict[str, str]]:
    """Poll every replica's digest (external processes) until each site agrees."""
    latest: dict[str, dict[str, str]] = {}

    async def agree() -> dict[str, dict[str, str]] | None:
        await ended.utility.send("digest")
        by_site = {
            site: {f"{ended.utility_name}/{site}": digest}
            for site, digest in (await ended.utility.expect("digest"))["digests"].items()
        }
        for names in ended.processes.values():  # a gateway answers for each device
            child = ended.devices[names[0]]
            await child.send("digest")
            for name, got in (await child.expect_each("digest", names)).items():
                by_site[ended.sites[name]][name] = got["digest"]
        latest.clear()
        latest.update(by_site)
        return by_site if all(len(set(d.values())) == 1 for d in by_site.values()) else None

    with contextlib.suppress(TimeoutExpired):
        return await wait_until(agree, timeout_s=CONVERGE_TIMEOUT_S, what="replicas to converge")
    return latest
