"""The utility node as an OS process: ``p2pgrid utility run --config utility.toml``
builds one typed :class:`UtilitySetup` (:mod:`p2pgrid.config.setups`) and runs
:func:`run_utility` on it, which watches each site's entries file while it runs and
reads them again on SIGHUP (:mod:`p2pgrid.replication.entries_watch`).

For each site of the scenario it runs one libp2p host, one SQLite replica of
the site's log and one invoicer on its lnd, all with the utility's key for that
site (the site owner enrolled it in the site's log; the host speaks as the
site's utility, net member index ``UTILITY_NET_INDEX``). It prints
``{"event": "ready", "addrs": {site: [...]}, "dashboard": url}`` (it serves its
dashboard over those replicas: :mod:`p2pgrid.dashboard`), waits for ``{"cmd": "start",
"at": ...}``, grants budgets and invoices every period, prints ``{"event":
"done", "invoices": [...]}`` and then ``{"event": "status", ...}`` on
``{"cmd": "status"}`` until ``{"cmd": "stop"}``, end of input, SIGTERM or
SIGINT, at any moment (:class:`p2pgrid.service.Service`). Errors end it with one
line on stderr and the exit codes of :mod:`p2pgrid.service`, never a traceback.

:func:`run_utility` takes the factory of its invoicers: tests hand it an
invoicer that bills wrong on purpose (``p2pgrid.testing.overcharge``).

Each site's host listens on the port it used last time (``ports.json`` in the
data directory; a free port the first time), so a restarted utility is found
where devices last saw it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from p2pgrid.billing import FlatTariff
from p2pgrid.dashboard import Dashboard, SiteFeed
from p2pgrid.errors import ConfigError
from p2pgrid.identity import UTILITY_NET_INDEX, Signer, SiteIdentity
from p2pgrid.jsonlines import commands, emit
from p2pgrid.ledger import Author, Invoice, LogWriter, Membership, decode_entry
from p2pgrid.lightning import LndClient, NodeWatch, WatchedNode
from p2pgrid.net import DeviceKey, NetConfig, TrioBridge
from p2pgrid.provision import membership_of
from p2pgrid.replication import EntriesWatch, NodeSpec, ReplicaConfig, open_node_parts
from p2pgrid.runtime import Runtime
from p2pgrid.scenario import Timing
from p2pgrid.service import Command, Service, on_hangup
from p2pgrid.utility.invoicer import LND_AWAY_WAIT_S, Invoicer
from p2pgrid.utility.node import READINGS_WAIT_S, SiteDesk, UtilityNode

ANTI_ENTROPY_S = 2.0

#: Builds a site's invoicer from :class:`Invoicer`'s keyword arguments.
InvoicerFactory = Callable[..., Invoicer]
#: Where the commands come from (stdin's JSON lines, or ``p2pgrid utility run``'s start).
CommandSource = Callable[[], AsyncIterator[Command]]


PORTS_FILE = "ports.json"


def listen_ports(data_dir: Path) -> dict[str, int]:
    """The TCP port each site's host listened on last time (``ports.json`` in the
    data directory): a restarted utility listens where devices know to find it."""
    path = data_dir / PORTS_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {str(site): int(port) for site, port in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a JSON object of site name to port: {exc}") from exc


def save_listen_ports(data_dir: Path, ports: dict[str, int]) -> None:
    path = data_dir / PORTS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ports, sort_keys=True))
    tmp.replace(path)  # whole or not at all


def tcp_port(addrs: list[str]) -> int:
    """The TCP port of a host's multiaddrs (``/ip4/../tcp/PORT/p2p/..``)."""
    for addr in addrs:
        parts = addr.split("/")
        if "tcp" in parts:
            return int(parts[parts.index("tcp") + 1])
    raise ConfigError(f"no TCP address among {addrs}")


@dataclasses.dataclass(frozen=True)
class UtilitySite:
    """One site the utility serves: its identity, the utility's key there (the
    owner enrolled it), the site's budget per period, its devices and the
    owner's signed entries (enrolments, allocations)."""

    name: str
    identity: SiteIdentity
    signer: Signer
    budget_msat: int
    devices: tuple[int, ...]
    provision: tuple[bytes, ...]
    #: The TCP port its host listens on (0: the last one, ``ports.json``, or any).
    listen_port: int = 0
    #: The owner's entries file ``provision`` was read from: watched while the
    #: utility runs, read again on SIGHUP (None: the launcher's fixed provisioning).
    entries_file: Path | None = None

    @property
    def membership(self) -> Membership:
        site = self.identity.site_hash
        return membership_of(self.identity, (decode_entry(raw, site) for raw in self.provision))


@dataclasses.dataclass(frozen=True)
class UtilitySetup:
    """Everything the utility process is built from (typed, validated once): from a
    utility file (:mod:`p2pgrid.config`, ``p2pgrid utility run``)."""

    name: str
    sites: tuple[UtilitySite, ...]
    timing: Timing
    tariff: FlatTariff
    invoice_secret: bytes = dataclasses.field(repr=False)
    runtime: Runtime
    #: How long it waits at a period's end for the devices' last readings.
    readings_wait_s: float = READINGS_WAIT_S
    #: How long the first call at start, and an invoicing or status call, waits
    #: for an lnd that does not answer.
    lnd_away_wait_s: float = LND_AWAY_WAIT_S


async def run_utility(
    setup: UtilitySetup,
    *,
    make_invoicer: InvoicerFactory = Invoicer,
    source: CommandSource = commands,
) -> None:
    """Assemble the utility of ``setup``, serve ``source``'s commands until
    stopped (see the module's contract), then stop its parts in order."""
    runtime, timing = setup.runtime, setup.timing
    runtime.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as parts:
        commands_in = source()
        aclose = getattr(commands_in, "aclose", None)
        if aclose is not None:
            parts.push_async_callback(aclose)  # closes the stdin pipe last
        node = await parts.enter_async_context(LndClient(runtime.lnd))
        watch = NodeWatch(setup.name)  # one lnd, watched for every site's invoicer
        # lnd first, waited for as the agent does at its start (a WARNING while
        # away); still away after ``lnd_away_wait_s`` is exit 3, before anything opens
        first = WatchedNode(node, watch, away_wait_s=setup.lnd_away_wait_s)
        pubkey = (await first.get_info()).pubkey
        bridge = TrioBridge()
        await bridge.start()
        parts.push_async_callback(bridge.stop)
        desks: list[SiteDesk] = []
        addrs: dict[str, list[str]] = {}
        feeds: list[SiteFeed] = []
        ports = listen_ports(runtime.data_dir)
        memberships = {site.name: site.membership for site in setup.sites}
        watches: list[EntriesWatch] = []  # of the sites run from an entries file
        for site in setup.sites:
            identity = site.identity
            log_node = await open_node_parts(
                parts,
                NodeSpec(
                    name=f"{setup.name}/{site.name}",
                    db_path=runtime.data_dir / f"{setup.name}-{site.name}.db",
                    site=identity,
                    net=NetConfig(
                        listen_host=runtime.listen_host,
                        listen_port=site.listen_port or ports.get(site.name, 0),
                        bootstrap=runtime.bootstrap,
                        mdns=runtime.mdns,
                    ),
                    key=DeviceKey(identity, UTILITY_NET_INDEX, site.signer),
                    replica=ReplicaConfig(anti_entropy_interval_s=ANTI_ENTROPY_S),
                    provision=list(site.provision),
                    bridge=bridge,
                    entries_file=site.entries_file,
                ),
            )
            if log_node.entries is not None:
                watches.append(log_node.entries)
            store, host, replica = log_node.store, log_node.host, log_node.replica
            # Its chain back from the site's devices before its first invoice there.
            writer = LogWriter(
                store,
                site.signer,
                Author.utility(),
                before_first=functools.partial(replica.take_own_chain, Author.utility()),
            )
            invoicer = make_invoicer(
                site=identity,
                store=store,
                writer=writer,
                node=node,
                tariff=setup.tariff,
                secret=setup.invoice_secret,
                name=f"{setup.name}/{site.name}",
                watch=watch,
                lnd_away_wait_s=setup.lnd_away_wait_s,
            )
            desks.append(
                SiteDesk(
                    name=site.name,
                    budget_msat=site.budget_msat,
                    devices=site.devices,
                    store=store,
                    writer=writer,
                    replica=replica,
                    invoicer=invoicer,
                )
            )
            addrs[site.name] = list(host.addrs)
            ports[site.name] = tcp_port(addrs[site.name])
            others = [s for s in setup.sites if s != site]
            feeds.append(
                SiteFeed(
                    name=site.name,
                    store=store,
                    peer_sites={s.identity.site_hash: memberships[s.name] for s in others},
                    replicator=replica.replicator,
                    peer_names={s.identity.site_hash: s.name for s in others},
                )
            )
        save_listen_ports(runtime.data_dir, ports)
        if watches:

            def read_entries_again() -> None:  # SIGHUP: every site's entries file, now
                for watch in watches:
                    watch.poke()

            parts.enter_context(on_hangup(read_entries_again))
        # Entered last, so it stops first: before the stores it reads close.
        dashboard = await parts.enter_async_context(
            Dashboard(setup.name, tuple(feeds), runtime.dashboard)
        )
        emit(
            "ready",
            name=setup.name,
            pubkey=pubkey,
            addrs=addrs,
            dashboard=dashboard.url,
        )
        service = Service()

        async def run_periods(at: float) -> None:
            un = UtilityNode(
                clock=timing.clock(at),
                model_ms=timing.model_ms,
                sites=desks,
                readings_wait_s=setup.readings_wait_s,
            )
            await un.run(timing.periods)
            # Every invoice in the log, also those a utility killed before this
            # start wrote (``un.invoiced`` holds only this process's).
            invoices = [
                {
                    "period": entry.period,
                    "device": entry.body.device,
                    "amount_msat": entry.body.amount_msat,
                    "payment_hash": entry.body.payment_hash.hex(),
                }
                for desk in desks
                for entry in await desk.store.entries()
                if isinstance(entry.body, Invoice) and entry.author == desk.writer.author
            ]
            emit("done", name=setup.name, invoices=invoices)

        async def handle(command: Command) -> None:
            if command["cmd"] == "start":
                service.spawn(run_periods(float(command["at"])))  # stop is answered meanwhile
            elif command["cmd"] == "status":
                statuses = []
                for period in range(_periods_so_far(desks) if timing.periods is None
                                    else timing.periods):  # fmt: skip
                    for desk in desks:
                        for s in await desk.invoicer.status(period):
                            row = dataclasses.asdict(s)
                            row.update(
                                site=desk.name,
                                payment_hash=s.payment_hash.hex(),
                                collection=s.collection.value,
                            )
                            statuses.append(row)
                emit("status", invoices=statuses)
            elif command["cmd"] == "digest":
                emit("digest", digests={d.name: d.store.digest().hex() for d in desks})

        await service.serve(commands_in, handle)
    emit("stopped", name=setup.name)


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("libp2p").setLevel(logging.WARNING)


def _periods_so_far(desks: list[SiteDesk]) -> int:
    """Periods that have begun in any of the utility's replicas (a run with no end)."""
    return 1 + max((d.store.next_position(a)[3] for d in desks for a in d.store.heads()), default=0)
