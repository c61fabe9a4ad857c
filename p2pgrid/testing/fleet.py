"""A fleet of sites, written and run as an operator does: the scale bench and its test.

:func:`write_fleet` makes, with the owner's commands (:mod:`p2pgrid.config.owner`),
one utility file and one site file per site: ``devices`` spread evenly over
``sites`` (each site its own owner), a share ``light_fraction`` of them light
(``lightning = "site"``: paying and paid through their site's node, the file's
``[site_lightning]``), the rest each on an lnd of its own (spread round-robin
over the sites, the first rows of each); fresh keys, enrolments and one
period's allocation (every third device weighs ten times the others: most
devices run short and ask for shares); the clock compressed to ``intervals``
intervals of ``interval_s`` seconds, one period.

:func:`run_fleet` runs it with the commands an operator runs: ``p2pgrid utility
run``, then one ``p2pgrid agent run --all`` per site (a gateway of the site's
devices, bootstrapping from the utility's host of their site), all with
``--control --await-start``, so that interval 0 is fixed once every device is
ready. It waits for every device's ``done`` and the utility's invoices, then
until each site's replicas answer one digest (the ``digest`` command: the
public way to ask, whatever a gateway's storage), samples the processes' memory
and CPU all along (``/proc``), and reads each site's log from the utility's
replica of that site (a path of the utility's own, not the devices'). A device
that reports ``failed``, or a process that ends, fails the run
(:class:`FleetFailed`) with its log's tail; so does a deadline passed (every
device ready, every device done and the utility's invoices after the period),
saying how many devices of each site were.

:class:`FleetRun` is what the bench prints and the test asserts: per device its
report and the lateness of its reading of every interval (its log entry's
time against the interval's start: the interval's work, its buy round
included, done), per site its digests and entries, the utility's invoices,
and the resource samples. Nothing here sleeps to synchronise: the one
``asyncio.sleep`` is the sampler's period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from p2pgrid.billing.period import METER_INTERVAL_S, model_ms
from p2pgrid.config.deployment import LndNode
from p2pgrid.config.files import SiteFile
from p2pgrid.config.owner import add_device, allocate, init_site, init_utility
from p2pgrid.errors import ReportableError, TimeoutExpired
from p2pgrid.identity import SiteIdentity
from p2pgrid.jsonlines import ChildProcess, ProcessFailed
from p2pgrid.ledger import Entry, LogStore, MeterReading, Role
from p2pgrid.poll import wait_until

#: Between "every device is ready" and interval 0: the meshes settle.
START_DELAY_S = 3.0
#: How long all the devices may take to print their ready lines (N hosts dialling).
READY_TIMEOUT_S = 600.0
#: After the last interval: the invoices and their payments.
SETTLE_MARGIN_S = 180.0
CONVERGE_TIMEOUT_S = 120.0
SAMPLE_PERIOD_S = 1.0
UTILITY = "utility"
#: A host's counters that are a device's own (a device that shares its site's
#: host counts what it published itself); the others are the host's.
PER_DEVICE = ("published_records", "published_envelopes")
#: A site's budget, per device: about what a device's meter costs in a period of
#: three intervals; split 10 : 1 (every third row rich), so that most devices run
#: short and ask the rich ones to share (the traffic of a site that trades).
BUDGET_MSAT_PER_DEVICE = 100_000
WEIGHT_RICH = 10


class FleetFailed(ReportableError):
    """A process of the fleet ended, or a device failed, before the run was done."""


@dataclasses.dataclass(frozen=True)
class FleetPlan:
    """How big the fleet is and how fast its clock runs."""

    devices: int
    sites: int
    light_fraction: float
    interval_s: float
    intervals: int

    def __post_init__(self) -> None:
        if not 1 <= self.sites <= self.devices:
            raise ValueError(f"{self.sites} sites for {self.devices} devices")
        if not 0.0 <= self.light_fraction <= 1.0:
            raise ValueError(f"light fraction {self.light_fraction} is not in [0, 1]")

    def site_size(self, site: int) -> int:
        return self.devices // self.sites + (site < self.devices % self.sites)

    @property
    def lnd_devices(self) -> int:
        """How many devices run on an lnd of their own."""
        return round(self.devices * (1.0 - self.light_fraction))

    def own_lnd(self) -> Iterator[tuple[int, int]]:
        """(site, row) of each device on its own lnd: round-robin over the sites."""
        placed = 0
        for row in range(max(self.site_size(s) for s in range(self.sites))):
            for site in range(self.sites):
                if placed == self.lnd_devices:
                    return
                if row < self.site_size(site):
                    yield site, row
                    placed += 1


@dataclasses.dataclass(frozen=True)
class FleetNodes:
    """The lnd nodes a fleet runs on, by name: the utility's, one site node per
    site (its light devices'), one per device on its own lnd."""

    nodes: Mapping[str, LndNode]
    utility: str
    site_nodes: tuple[str, ...]
    device_nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FleetSite:
    name: str
    file: Path
    owner: str  # the owner's public key (hex): the site's identity
    devices: tuple[str, ...]
    index: Mapping[str, int]  # device name -> its index in the site's log


@dataclasses.dataclass(frozen=True)
class Fleet:
    """A fleet's files, as :func:`write_fleet` wrote them."""

    plan: FleetPlan
    dir: Path
    utility_file: Path
    sites: tuple[FleetSite, ...]
    #: The lnd node each device pays from (a light device: its site node).
    node_of: Mapping[str, str]
    light: frozenset[str]

    def replica(self, site: FleetSite) -> Path:
        """The utility's replica of ``site`` (``utility run``'s ``<name>-<site>.db``)."""
        return self.dir / "data" / UTILITY / f"{UTILITY}-{site.name}.db"


def _lnd_table(node: LndNode) -> str:
    e = node.endpoint
    return (
        f'{{ rest_host = "{e.rest_host}", rest_port = {e.rest_port}, '
        f'tls_cert = "{e.tls_cert}", macaroon = "{e.macaroon}" }}'
    )


def _clock(plan: FleetPlan) -> str:
    # --await-start: interval 0 is the runner's; this start is never reached.
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1)
    return f"""[clock]
start = {start.isoformat().replace("+00:00", "Z")}
interval_s = {plan.interval_s}
intervals_per_period = {plan.intervals}
periods = 1
model_start_interval = 0

[tariff]
msat_per_kwh = 250000
"""


def _site_text(
    plan: FleetPlan,
    site: int,
    owner: str,
    utility_key: str,
    fleet: FleetNodes,
    own: Mapping[int, str],
) -> str:
    """Site ``site``'s file; ``own``: row -> lnd node name of its devices on their own lnd."""
    nodes, rows = fleet.nodes, []
    for row in range(plan.site_size(site)):
        if row in own:
            node = nodes[own[row]]
            lightning = f'lnd = {_lnd_table(node)}\nlnd_pubkey = "{node.pubkey}"'
        else:
            lightning = 'lightning = "site"'
        profile = ("g0", "h0")[row % 2]
        rows.append(f"""
[[devices]]
name = "s{site}-d{row}"
index = {row}
device_class = "fridge"
priority = "normal"
weight = {WEIGHT_RICH if row % 3 == 0 else 1}
meter = {{ kind = "bdew", profile = "{profile}", annual_kwh = {3000 + 500 * (row % 7)} }}
key_file = "keys/s{site}-d{row}.key"
data_dir = "data/s{site}-d{row}"
{lightning}
""")
    site_node = nodes[fleet.site_nodes[site]]
    return f"""[site]
name = "site-{site}"
owner_pubkey = "{owner}"
budget_msat = {BUDGET_MSAT_PER_DEVICE * plan.site_size(site)}
entries = "site.entries"
owner_key = "owner/owner.key"

{_clock(plan)}
[utility]
key = "{utility_key}"
lnd_pubkey = "{nodes[fleet.utility].pubkey}"
{"".join(rows)}
[site_lightning]
pubkey = "{site_node.pubkey}"
lnd = {_lnd_table(site_node)}
"""


def write_fleet(root: Path, plan: FleetPlan, fleet: FleetNodes) -> Fleet:
    """The utility's and every site's files in ``root``, keys, enrolments and one
    period's allocation, made by the owner's commands."""
    if len(fleet.site_nodes) < plan.sites:
        raise ValueError(f"{plan.sites} sites need as many site nodes")
    if len(fleet.device_nodes) < plan.lnd_devices:
        raise ValueError(f"{plan.lnd_devices} devices on their own lnd need as many nodes")
    utility_key = init_utility(root / "ukeys")["key"]
    own: dict[int, dict[int, str]] = {}
    for k, (site, row) in enumerate(plan.own_lnd()):
        own.setdefault(site, {})[row] = fleet.device_nodes[k]
    sites, node_of, light, utility_sites = [], {}, set(), []
    for s in range(plan.sites):
        site_dir = root / f"site-{s}"
        site_dir.mkdir(parents=True)
        owner = init_site(site_dir / "owner", site_dir / "site.entries", utility_key).site
        path = site_dir / "site.toml"
        path.write_text(_site_text(plan, s, owner, utility_key, fleet, own.get(s, {})))
        names = tuple(f"s{s}-d{row}" for row in range(plan.site_size(s)))
        for row, name in enumerate(names):
            add_device(SiteFile(path), name, None)
            node_of[name] = own.get(s, {}).get(row, fleet.site_nodes[s])
            if row not in own.get(s, {}):
                light.add(name)
        allocate(SiteFile(path), 0, 1)
        sites.append(
            FleetSite(f"site-{s}", path, owner, names, {n: i for i, n in enumerate(names)})
        )
        utility_sites.append(f"""
[[sites]]
name = "site-{s}"
owner_pubkey = "{owner}"
entries = "site-{s}/site.entries"
budget_msat = {BUDGET_MSAT_PER_DEVICE * plan.site_size(s)}
""")
    utility_file = root / "utility.toml"
    utility_file.write_text(f"""[utility]
name = "{UTILITY}"
key_file = "ukeys/utility.key"
invoice_secret_file = "ukeys/invoice.secret"
data_dir = "data/{UTILITY}"
lnd = {_lnd_table(fleet.nodes[fleet.utility])}

{_clock(plan)}{"".join(utility_sites)}""")
    return Fleet(plan, root, utility_file, tuple(sites), node_of, frozenset(light))


# -- running ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    """The fleet's processes at one moment: seconds since interval 0 (negative:
    before it), RSS (kB) and CPU time used so far (s), summed, and by process."""

    t_s: float
    rss_kb: Mapping[str, int]
    cpu_s: Mapping[str, float]


@dataclasses.dataclass(frozen=True)
class FleetRun:
    """What a run of a fleet did and cost."""

    fleet: Fleet
    at: float  # epoch seconds of interval 0
    ready_s: float  # from the first spawn to every device ready
    done_s: float  # from interval 0 to every device done and the utility's invoices
    converged_s: float  # from interval 0 to every site's replicas under one digest
    reports: Mapping[str, Mapping[str, Any]]  # device -> its done report
    peer_ids: Mapping[str, str]  # device -> its libp2p host's peer id (its ready line)
    net: Mapping[str, Mapping[str, Any]]  # device -> its host's counters (its done line)
    invoices: Sequence[Mapping[str, Any]]  # the utility's
    digests: Mapping[str, Mapping[str, str]]  # site -> replica -> digest
    logs: Mapping[str, Sequence[Entry]]  # site -> its entries (the utility's replica)
    samples: Sequence[Sample]
    pids: Mapping[str, int]  # process (the utility, each site's gateway) -> pid

    def host_totals(self) -> dict[str, int]:
        """The integer counters of the run's libp2p hosts, summed: what each device
        published (:data:`PER_DEVICE`) over every device, the rest (gossip RPCs,
        peers) once per host (devices that share a host report the same ones)."""
        totals: dict[str, int] = {}
        hosts = {self.peer_ids[name]: net for name, net in self.net.items()}
        for net in hosts.values():
            for key, value in net.items():
                if isinstance(value, int) and key not in PER_DEVICE:
                    totals[key] = totals.get(key, 0) + value
        for net in self.net.values():
            for key in PER_DEVICE:
                totals[key] = totals.get(key, 0) + int(net.get(key, 0))
        return totals

    def lateness_s(self) -> dict[str, list[float]]:
        """Per device, for each interval it logged a reading of, how long after the
        interval's start that reading was written: the interval's critical work
        (its buy round, its asks for shares or allowance when short, its
        curtailment) is done before it; an interval whose work ran over delays
        the next reading, so a device late on one is late here."""
        return {
            name: [t - self._begun(i) for i, t in sorted(readings.items())]
            for name, readings in self._readings().items()
        }

    def _begun(self, interval: int) -> float:
        return self.at + interval * self.fleet.plan.interval_s

    def _readings(self) -> dict[str, dict[int, float]]:
        """Per device, the time (epoch s) it wrote its reading of each interval."""
        out: dict[str, dict[int, float]] = {}
        interval_ms = METER_INTERVAL_S * 1000
        for site in self.fleet.sites:
            names = {i: n for n, i in site.index.items()}
            for entry in self.logs[site.name]:
                if isinstance(entry.body, MeterReading) and entry.author.role is Role.DEVICE:
                    i = (entry.body.interval_start_ms - model_ms(0)) // interval_ms
                    name = names[entry.author.index]
                    out.setdefault(name, {})[i] = entry.timestamp_ms / 1000
        return out


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            return int(value.split()[0])
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _sample(pids: Mapping[str, int], zero: list[float], into: list[Sample]) -> None:
    """Sample ``pids`` every :data:`SAMPLE_PERIOD_S` until cancelled; ``zero[0]``:
    the epoch time samples count from (interval 0, once known)."""
    while True:
        with contextlib.suppress(OSError):  # a process just ended: its last sample stands
            into.append(
                Sample(
                    time.time() - zero[0],
                    {n: _rss_kb(p) for n, p in pids.items()},
                    {n: _cpu_s(p) for n, p in pids.items()},
                )
            )
        await asyncio.sleep(SAMPLE_PERIOD_S)  # the sampling period, not a synchronisation


async def _each(
    child: ChildProcess, event: str, names: Sequence[str], got: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``event`` line of every device of ``names`` (a gateway's), by name, into
    ``got`` (so a caller that times out sees how far it came); a ``failed`` line or
    the process's end raises :class:`FleetFailed`."""
    got = {} if got is None else got
    while len(got) < len(names):
        try:
            line = await child.next_event()
        except ProcessFailed as exc:
            raise FleetFailed(f"{child.name}: {exc}\n{child.stderr_tail(40)}") from exc
        if line["event"] == "failed":
            raise FleetFailed(f"{line.get('name')} failed: {line.get('error')}")
        if line["event"] == event and line.get("name") in names:
            got[str(line["name"])] = line
    return got


async def run_fleet(fleet: Fleet) -> FleetRun:
    """Run ``fleet`` once (see the module's contract); every process is stopped
    before this returns or raises."""
    children: list[ChildProcess] = []
    try:
        return await _run(fleet, children)
    except BaseExceptionGroup as group:
        # The sampler's TaskGroup wraps what the run raised; the caller wants that.
        if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
            raise group.exceptions[0] from None
        raise
    finally:
        async with asyncio.TaskGroup() as stops:
            for child in children:
                stops.create_task(child.stop())


def with_bootstrap(site_text: str, addrs: Sequence[str]) -> str:
    """The site file ``site_text`` with ``addrs`` (the utility's host of the site)
    as its first device's bootstrap: the site runs as one gateway, whose host
    bootstraps from every row's addresses, so one row says it once."""
    bootstrap = f"bootstrap = {json.dumps(list(addrs))}\n"
    return site_text.replace("data_dir = ", bootstrap + "data_dir = ", 1)


async def _spawn(fleet: Fleet, name: str, args: list[str]) -> ChildProcess:
    argv = [*args, "--control", "--await-start"]
    return await ChildProcess.spawn(name, "p2pgrid", argv, fleet.dir / f"{name}.log")


async def _run(fleet: Fleet, children: list[ChildProcess]) -> FleetRun:
    plan, samples, zero = fleet.plan, list[Sample](), [time.time()]
    spawned = time.monotonic()
    utility = await _spawn(fleet, UTILITY, ["utility", "run", "-c", str(fleet.utility_file)])
    children.append(utility)
    async with asyncio.timeout(READY_TIMEOUT_S):
        addrs = (await utility.expect("ready"))["addrs"]
    gateways: dict[str, ChildProcess] = {}
    for site in fleet.sites:
        site.file.write_text(with_bootstrap(site.file.read_text(), addrs[site.name]))
        gateways[site.name] = await _spawn(
            fleet, site.name, ["agent", "run", "-c", str(site.file), "--all"]
        )
        children.append(gateways[site.name])
    pids = {c.name: c.pid for c in children}
    async with asyncio.TaskGroup() as group:
        sampler = group.create_task(_sample(pids, zero, samples))
        try:
            peer_ids = {}
            seen: dict[str, dict[str, Any]] = {site.name: {} for site in fleet.sites}
            async with saying_who(fleet.sites, "ready", seen, READY_TIMEOUT_S):
                for site in fleet.sites:
                    ready = await _each(gateways[site.name], "ready", site.devices, seen[site.name])
                    peer_ids.update({n: str(e["peer_id"]) for n, e in ready.items()})
            ready_s = time.monotonic() - spawned
            at = time.time() + START_DELAY_S
            zero[0] = at
            for child in children:
                await child.send("start", at=at)
            run_s = START_DELAY_S + plan.intervals * plan.interval_s + SETTLE_MARGIN_S
            reports: dict[str, Any] = {}
            net: dict[str, Any] = {}
            seen = {site.name: {} for site in fleet.sites}
            async with saying_who(fleet.sites, "done", seen, run_s):
                for site in fleet.sites:
                    done = await _each(gateways[site.name], "done", site.devices, seen[site.name])
                    reports.update({n: e["report"] for n, e in done.items()})
                    net.update({n: e.get("net", {}) for n, e in done.items()})
                invoices = (await utility.expect("done"))["invoices"]
            done_s = time.time() - at
            digests = await _converged(fleet, utility, gateways)
            converged_s = time.time() - at
        finally:
            sampler.cancel()
    logs = {}
    for site in fleet.sites:
        store = await LogStore.open(
            fleet.replica(site), SiteIdentity.from_hex(site.owner), name=f"read-{site.name}"
        )
        async with store:
            logs[site.name] = await store.entries()
    return FleetRun(
        fleet=fleet,
        at=at,
        ready_s=ready_s,
        done_s=done_s,
        converged_s=converged_s,
        reports=reports,
        peer_ids=peer_ids,
        net=net,
        invoices=invoices,
        digests=digests,
        logs=logs,
        samples=samples,
        pids=pids,
    )


@contextlib.asynccontextmanager
async def saying_who(
    sites: Sequence[FleetSite],
    event: str,
    seen: Mapping[str, Mapping[str, Any]],
    timeout_s: float,
) -> AsyncIterator[None]:
    """``asyncio.timeout(timeout_s)`` whose expiry raises :class:`FleetFailed`
    saying how many devices of each site had printed their ``event`` line
    (``seen``: the lines read, by site). The gateways are read in turn, so a site
    after the first one short is "not read"; if every device's line was read, what
    the time ran out on was the utility's."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError as exc:
        counts, short = [], False
        for site in sites:
            got = len(seen.get(site.name, {}))
            counts.append(f"{site.name} " + ("not read" if short else f"{got}/{len(site.devices)}"))
            short = short or got < len(site.devices)
        who = "" if short else f"; the {UTILITY}'s not"
        raise FleetFailed(
            f"no {event!r} line of every device after {timeout_s:.0f} s: {', '.join(counts)}{who}"
        ) from exc


async def _converged(
    fleet: Fleet, utility: ChildProcess, gateways: Mapping[str, ChildProcess]
) -> dict[str, dict[str, str]]:
    """Ask every replica's digest until each site's agree (or the time is up:
    then the last answers, for the caller to see which disagree)."""
    latest: dict[str, dict[str, str]] = {}

    async def agree() -> bool | None:
        await utility.send("digest")
        held = (await utility.expect("digest"))["digests"]
        for site in fleet.sites:
            await gateways[site.name].send("digest")
            answers = await _each(gateways[site.name], "digest", site.devices)
            latest[site.name] = {UTILITY: str(held[site.name])}
            latest[site.name].update({n: str(a["digest"]) for n, a in answers.items()})
        return all(len(set(d.values())) == 1 for d in latest.values()) or None

    with contextlib.suppress(TimeoutExpired):
        await wait_until(agree, timeout_s=CONVERGE_TIMEOUT_S, what="every site's replicas to agree")
    return latest
