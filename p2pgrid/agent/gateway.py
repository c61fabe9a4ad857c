"""A site gateway: one OS process that runs the agents of one or more devices.

``p2pgrid agent run --config site.toml --device A --device B`` (or ``--all``)
runs a gateway of those devices; ``--device A`` alone (and the test program
:mod:`p2pgrid.testing.crash`) is a gateway of one (:func:`run_device`).

What the devices of a gateway share: the process (one interpreter, one import
of libp2p), the asyncio loop, one :class:`~p2pgrid.net.TrioBridge`, one
libp2p host per site (:func:`open_hub`, a :class:`~p2pgrid.net.HostHub`: one
peer id and port, those of its *hub device*, the site's device of the lowest
index in the gateway (:func:`hub_device`), whatever the order of ``--device``;
its hello proves every device of the gateway of that site, requests name their
device, docs/protocol-net.md sections 6-7), and, for its devices of one site,
the site's log: one
:class:`~p2pgrid.ledger.LogStore` (one SQLite file, :func:`site_log_file`) and
one :class:`~p2pgrid.replication.NetReplica` (:class:`SiteLog`,
:class:`SiteLogs`), so an entry is received, verified and stored once per
gateway, not once per device. What each device keeps for itself, exactly as in
a process of its own: its key and log author (its own
:class:`~p2pgrid.ledger.LogWriter` on the shared store), its
:class:`~p2pgrid.net.PeerHost` (a view on the hub that signs with its key), its
lnd client, its payment intents (``<name>.intents.db``), its budget (its
agent's :class:`~p2pgrid.ledger.BalanceBook` follows the shared store), forecast,
decisions and dashboard. Light devices (no lnd of their own, ``lightning =
"site"``) share the gateway's one client of their site node
(:func:`open_site_nodes`), each through its own
:class:`~p2pgrid.agent.sitewallet.SiteWallet`. Devices of one gateway reach
each other through their hub, over the same messages as any peer (a request
between them is a call, not a stream); a site can be split across gateways, or
across a gateway and single agents, with no change. Each hub bootstraps from
the hubs of the gateway's other sites opened before it.

The site's replica runs on the host view of the first of its devices that
opens, its hub device (its *anchor*): gossip (every device's entries are
announced there), anti-entropy, pushes; the other devices' views answer the
sync requests their peers address to them from the same store
(:meth:`NetReplica.serve_on`), and are never synced with. The store, the
replica and the anchor's view are the site's, not the anchor device's
(:class:`SiteLog`, closed after the site's devices, before its hub). Files: a
device alone keeps ``<data_dir>/<name>.db``; the devices of a site in a gateway
of several share ``<site>.gateway.db`` in the data directory of the hub
device; replica files the devices kept before (an upgraded deployment, a
device moved between gateways) are merged into it on open, each entry
verified, and renamed ``.merged``
(:mod:`p2pgrid.replication.merge`). The gateway holds the lock of each of
these files and of each device's intents file (``<file>.lock``,
:mod:`p2pgrid.ledger.store_lock`) until it stops: a second process that would
write one is refused (exit 2) before it opens anything.

Lifecycle: the bridge starts first; the devices open site by site (the sites in
the order of their first device given), each site's hub device first (a
device that cannot open, a bad key file or an lnd that does not answer, fails
the whole gateway with the exit codes of :mod:`p2pgrid.service`: nothing has
run yet); each prints its ``ready`` line. ``start`` starts every device's run
(``nodes``: the Lightning node of each device; those of the gateway's own
devices are known without it); ``digest`` is answered by every running device.
Every line names its device, as a single agent's does.

One device's failure while running (an error out of its run: a fatal one, a
corrupt log, or a bug) stops that device alone: an ERROR log line, a ``{"event":
"failed", "name": ..., "error": ...}`` line, its parts closed in order (its run
cancelled: a payment in flight stays an open intent, resolved by hash when the
gateway starts again); the other devices go on trading. The anchor too: its
host view stays up for the site's replica (a WARNING line says so), its agent's
protocols withdrawn (:meth:`~p2pgrid.net.PeerHost.withdraw`: its peers' requests
to it get an error answer, as to a device not running), so its siblings keep
their replication. Once every device has failed the gateway stops; otherwise it stops when told to
(``stop``, end of input, SIGTERM, SIGINT), and then ends with the first
failure's exit code, so neither an operator nor a supervisor misses it. Expected
conditions (a peer or lnd away, a refused payment) never reach this level: the
agent handles them itself.

Stop order: the command input, the devices' runs, then each device's parts in
the reverse order of opening (dashboard, host view but the anchor's, intents,
lnd client), then each site's shared parts (the entries watch, the replica, the
anchor's host view, the store), then the site's libp2p host, then the site
nodes' clients, then the bridge, then the log files' locks, last the command
pipe. A deployed gateway watches the owner's entries file of each site it runs
(with the site's replica) and reads it again on SIGHUP
(:mod:`p2pgrid.replication.entries_watch`), as a single agent does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from p2pgrid.agent.device import AgentParts, DeviceAgent, DeviceProfile, Metering
from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.agent.ports import Wallet
from p2pgrid.agent.setup import AgentSetup
from p2pgrid.agent.sitewallet import SiteNode
from p2pgrid.dashboard import Dashboard, SiteFeed
from p2pgrid.errors import ConfigError, P2PGridError
from p2pgrid.identity import Roster
from p2pgrid.jsonlines import commands, emit
from p2pgrid.ledger import Author, LogStore, LogWriter, lock_store
from p2pgrid.lightning import LndClient, LndEndpoint, NodeWatch, WatchedNode
from p2pgrid.market import Party
from p2pgrid.net import (
    DeviceKey,
    HostHub,
    NetConfig,
    PeerHost,
    Topic,
    TrioBridge,
    owner_topic,
    peer_id_of,
    site_topic,
)
from p2pgrid.replication import (
    EntriesWatch,
    NetReplica,
    NodeSpec,
    ReplicaConfig,
    check_not_behind,
    merge_replica,
    merged_path,
    open_log_store,
    remove_replica,
    retire_replica,
    start_host,
    start_replica,
)
from p2pgrid.service import Command, Service, on_hangup

log = logging.getLogger(__name__)

#: Where the commands come from: the file's start (``p2pgrid agent run``), then
#: stdin's JSON lines with ``--control``. Called inside the running loop.
CommandSource = Callable[[], AsyncIterator[Command]]

#: Builds a device's paymaster from :class:`Paymaster`'s keyword arguments.
PaymasterFactory = Callable[..., Paymaster]


@dataclasses.dataclass
class GatewayDevice:
    """One device of a gateway, once its parts serve."""

    setup: AgentSetup
    agent: DeviceAgent
    site_log: SiteLog
    host: PeerHost
    #: Its lnd node: where the site's devices pay it.
    pubkey: str
    #: Its own parts, closed when it fails or when the gateway stops (the host
    #: view that runs its site's replica is the site's: :class:`SiteLog`).
    parts: contextlib.AsyncExitStack
    #: What ``host`` answered before its agent was built (the site replica's
    #: sync): kept when it fails; whatever its agent answers is withdrawn.
    replica_protocols: frozenset[str] = frozenset()
    failed: bool = False
    #: Its run, once ``start`` started it.
    run: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.setup.name

    @property
    def store(self) -> LogStore:
        return self.site_log.store

    @property
    def carries_replica(self) -> bool:
        """Whether its host view runs its site's replica (the view is the site's)."""
        return self.site_log.replica is not None and self.site_log.replica.host is self.host


def by_site(setups: Sequence[AgentSetup]) -> dict[str, list[AgentSetup]]:
    """The devices ``setups`` of a gateway by site id (the sites in the order of
    their first device in ``setups``), each site's by device index: a site's first
    is its *hub device* (:func:`hub_device`), whatever the order of ``--device``."""
    sites: dict[str, list[AgentSetup]] = {}
    for setup in setups:
        sites.setdefault(setup.identity.site_id, []).append(setup)
    return {site: sorted(members, key=lambda s: s.device.index) for site, members in sites.items()}


def hub_device(members: Sequence[AgentSetup]) -> AgentSetup:
    """The device that the gateway's one host of a site speaks as: of ``members``
    (that site's devices in the gateway), the one with the lowest device index.
    Its key makes the host's peer id and signs its hello, its row's
    ``listen_host``/``listen_port`` are where it listens, its data directory holds
    the site's log file (:func:`site_log_file`) and its host view runs the site's
    replica. The rule reads the device set, never the order of ``--device``: the
    same devices always give the same peer id and address; a device of a lower
    index joining the gateway (or the hub device leaving it) moves the host to
    that device's identity and row (docs/deploy.md, section 4)."""
    if not members:
        raise ConfigError("a gateway's host speaks for at least one device")
    return min(members, key=lambda s: s.device.index)


def site_log_file(setups: Sequence[AgentSetup]) -> Path:
    """The file of the site log of ``setups``, the devices of one site that one
    gateway runs: a device alone keeps ``<data_dir>/<name>.db``, as a single agent
    always did; several share ``<site>.gateway.db`` in the data directory of the
    hub device (:func:`hub_device`: the lowest device index; so the file stays
    where it is whatever the order of ``--device``, and two gateways of one site,
    which run different devices, never open the same file)."""
    if len(setups) == 1:
        return setups[0].runtime.data_dir / f"{setups[0].name}.db"
    first = hub_device(setups)
    return first.runtime.data_dir / f"{first.site_name}.gateway.db"


def earlier_files(setups: Sequence[AgentSetup]) -> list[Path]:
    """The replica files the devices ``setups`` of one site may have kept before
    this gateway (each alone: ``<name>.db``; in a gateway whose hub device was
    another: that one's ``<site>.gateway.db``), but for :func:`site_log_file`."""
    now = site_log_file(setups)
    files = [s.runtime.data_dir / f"{s.name}.db" for s in setups]
    files += [s.runtime.data_dir / f"{s.site_name}.gateway.db" for s in setups]
    return [f for f in dict.fromkeys(files) if f != now]


@dataclasses.dataclass
class SiteLog:
    """The log of a gateway's devices of one site: one store, one replica, owned by
    the gateway (closed on ``parts``, after the site's devices and before its hub),
    not by one of its devices.

    The replica runs on the host view of the first of them that opens (its
    *anchor*, the hub device: gossip, anti-entropy, announcements of every
    device's entries); that view is the site's too (on ``parts``): if the anchor
    device fails, the view stays, withdrawn from its agent's protocols, and the
    replica runs on for the others. The host views of the others (on the site's
    one hub) answer the sync requests their peers address to them from the same
    store (:meth:`NetReplica.serve_on`).
    """

    path: Path
    store: LogStore
    members: tuple[str, ...]
    #: What the site's shared parts close on: the store, the anchor's host view,
    #: the replica and the owner's entries file watch.
    parts: contextlib.AsyncExitStack
    replica: NetReplica | None = None
    #: The device whose host view runs the replica (None until one opened).
    anchor: str | None = None
    #: The watch of the owner's entries file (None: run without one).
    entries: EntriesWatch | None = None

    async def host_for(self, parts: contextlib.AsyncExitStack, spec: NodeSpec) -> PeerHost:
        """Start device ``spec.name``'s host (view): the site's first device's on
        the site's ``parts`` (it will carry the site's replica, :meth:`serve`), every
        other's on its own ``parts``."""
        return await start_host(self.parts if self.replica is None else parts, spec, self.store)

    async def serve(self, spec: NodeSpec, host: PeerHost) -> NetReplica:
        """The replica a device on ``host`` uses: for the site's first device,
        started on ``host`` (and the owner's entries file watched), its stops on
        the site's ``parts``; for each other, answering on ``host`` too. Every
        view of a hub shares the hub's peer id, but requests name their device and
        reach that device's view alone: each view answers, none is synced with (the
        hub's devices are all this site's here: the replica knows their addresses
        from its start, before the hub announces them to it as they attach)."""
        if self.replica is None:
            hub = host.hub
            serves = [a for a in map(hub.address, hub.keys) if a != host.address]
            self.replica, self.entries = await start_replica(
                self.parts, spec, self.store, host, serves=serves
            )
            self.anchor = spec.name
            return self.replica
        if host is not self.replica.host:
            self.replica.serve_on(host)
        return self.replica


class SiteLogs:
    """The logs of the sites of a gateway's devices, each opened on its site's
    stack (:meth:`parts_of`, closed on ``stack`` after the site's devices) when the
    first of its devices opens (:meth:`of`, after that device's lnd answered: a
    gateway refused for an lnd writes no log).

    A site's log is the file of :func:`site_log_file` with the owner's
    provisioning, and merged into it (:func:`~p2pgrid.replication.merge_replica`,
    each entry verified) the devices' earlier replica files (:func:`earlier_files`,
    then renamed ``.merged``), so a device moved into (or out of) a gateway
    resumes from every entry it had, none twice. A store that holds less of a
    device's own entries than its merged file did is refused (its log is in
    another gateway's file): a :class:`ConfigError`, before anything runs, and
    no new file left behind.

    One process writes a log file: the gateway holds the lock of each site's
    file, of the earlier files it merges and of each device's intents file (so a
    device is run by one process, whatever the gateways' files), until it stops
    (:func:`~p2pgrid.ledger.lock_store`, taken by :meth:`claim` before anything
    opens); a file another process holds is refused with
    :class:`~p2pgrid.ledger.StoreInUse` (a :class:`ConfigError` naming the file
    and the holder's pid), nothing opened or changed.
    """

    def __init__(self, stack: contextlib.AsyncExitStack, setups: Sequence[AgentSetup]) -> None:
        self._stack = stack
        self._sites = by_site(setups)
        self._open: dict[str, SiteLog] = {}
        self._claimed: set[str] = set()
        self._parts: dict[str, contextlib.AsyncExitStack] = {}

    def parts_of(self, site_id: str) -> contextlib.AsyncExitStack:
        """The stack the shared parts of site ``site_id`` close on (its store, its
        replica and the host view that runs it): made, and its close pushed on
        ``stack``, at the first call. :func:`run_gateway` calls it as it opens the
        site's hub, so these close after the site's devices' parts, before the hub."""
        if site_id not in self._parts:
            parts = contextlib.AsyncExitStack()
            self._stack.push_async_callback(parts.aclose)
            self._parts[site_id] = parts
        return self._parts[site_id]

    @property
    def opened(self) -> tuple[SiteLog, ...]:
        """The sites' logs opened so far."""
        return tuple(self._open.values())

    def claim(self) -> None:
        """Lock every site's log file, and the earlier files to merge into it,
        until ``stack`` closes; :class:`~p2pgrid.ledger.StoreInUse` if another
        process holds one (the locks taken so far are released with the stack)."""
        for site_id in self._sites:
            self._claim(site_id)

    def _claim(self, site_id: str) -> None:
        if site_id in self._claimed:
            return
        members = self._sites[site_id]
        path = site_log_file(members)
        # Each device's own intents file too: two gateways of one site that
        # share a device have different log files, but not different intents.
        intents = [s.runtime.data_dir / f"{s.name}.intents.db" for s in members]
        for file in (path, *(f for f in earlier_files(members) if f.is_file()), *intents):
            file.parent.mkdir(parents=True, exist_ok=True)
            self._stack.enter_context(lock_store(file))
        self._claimed.add(site_id)

    async def of(self, setup: AgentSetup) -> SiteLog:
        """The log of ``setup``'s site, opened now if it is the site's first device."""
        site_id = setup.identity.site_id
        if site_id not in self._open:
            self._open[site_id] = await self._open_site(self._sites[site_id])
        return self._open[site_id]

    async def _open_site(self, members: list[AgentSetup]) -> SiteLog:
        first = members[0]
        site_id = first.identity.site_id
        self._claim(site_id)
        path = site_log_file(members)
        name = first.name if len(members) == 1 else path.stem
        fresh = not path.exists()
        parts = self.parts_of(site_id)
        store = await open_log_store(parts, path, first.identity, name, first.provision)
        earlier = [f for f in earlier_files(members) if f.is_file()]
        try:
            for old in earlier:
                merged = await merge_replica(store, old, retire=False)
                log.info(
                    "[%s] merged %s: %d entries, %d new, %d equivocations",
                    name,
                    *dataclasses.astuple(merged),
                )
            for setup in members:
                own = setup.runtime.data_dir / f"{setup.name}.db"
                await check_not_behind(store, merged_path(own), Author.device(setup.device.index))
        except ConfigError:
            if fresh:  # refused: leave no file behind (an older one stays as it was)
                await store.close()
                remove_replica(path)
            raise
        for old in earlier:  # every check passed: the old files are never used again
            await retire_replica(old)
        return SiteLog(path, store, tuple(s.name for s in members), parts)


def check_gateway(setups: Sequence[AgentSetup]) -> None:
    """Refuse a gateway that cannot run: no device, a device twice, two sites'
    hosts on one port, a site's host on a free port while another of its rows
    names one, two mDNS responders in one process (py-libp2p's discovery is one
    per process).

    A site's devices in a gateway speak through one host (:func:`open_hub`) that
    listens where its hub device (:func:`hub_device`: the lowest index) would (its
    ``listen_host``, its ``listen_port``): the other rows' addresses are not used,
    so they may name no port, or the same; a port of their own is logged as not
    used. A hub device's row that names no port while another row does is refused:
    the host would take a free port and the hub device's peer id, where the file
    says peers find it at the other row's port (a gateway written when the first
    ``--device`` made the host: move the port to the hub device's row)."""
    if not setups:
        raise ConfigError("a gateway runs at least one device")
    names = [s.name for s in setups]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"a gateway runs each device once: {', '.join(twice)} given twice")
    sites = by_site(setups)  # site id -> its devices here, the hub device first
    ports: dict[tuple[str, int], list[str]] = {}
    for first, *others in sites.values():
        where = (first.runtime.listen_host, first.runtime.listen_port)
        if first.runtime.listen_port:
            ports.setdefault(where, []).append(f"{first.site_name} ({first.name})")
        else:
            named = [o for o in others if o.runtime.listen_port]
            if named:
                raise ConfigError(
                    f"{first.site_name}: the gateway's host of "
                    f"{', '.join(s.name for s in (first, *others))} speaks as {first.name} (the "
                    f"lowest device index, {first.device.index}) and listens on its row's "
                    f"listen_port, which names none, while {named[0].name}'s row names "
                    f"{named[0].runtime.listen_port}: give that listen_port on {first.name}'s "
                    f"row (and {first.name}'s peer id in the peers' bootstrap addresses)"
                )
        for other in others:
            if other.runtime.listen_port not in (0, where[1]) or (
                other.runtime.listen_port and other.runtime.listen_host != where[0]
            ):
                log.warning(
                    "[%s] listen_port %d on %s is not used: the devices of %s in this "
                    "gateway listen on %s's port (%d on %s)",
                    other.name, other.runtime.listen_port, other.runtime.listen_host,
                    first.site_name, first.name, where[1], where[0],
                )  # fmt: skip
    for (host, port), hosts in ports.items():
        if len(hosts) > 1:
            raise ConfigError(
                f"listen_port {port} on {host} is given to the hosts of {', '.join(hosts)}: "
                "each site's host in a gateway listens on its own port (its hub device's, "
                "the lowest index)"
            )
    mdns = [f"{ds[0].site_name} ({', '.join(s.name for s in ds if s.runtime.mdns)})"
            for ds in sites.values() if any(s.runtime.mdns for s in ds)]  # fmt: skip
    if len(mdns) > 1:
        raise ConfigError(
            f"mdns is on for the hosts of {', '.join(mdns)}: one site's host of a gateway "
            "at most (the others find their peers through it)"
        )


async def open_device(
    parts: contextlib.AsyncExitStack,
    setup: AgentSetup,
    *,
    bridge: TrioBridge,
    logs: SiteLogs,
    make_paymaster: PaymasterFactory = Paymaster,
    site: SiteNode | None = None,
    hub: HostHub | None = None,
) -> GatewayDevice:
    """Open device ``setup.name``'s parts on ``parts`` (their stops go there, in
    order) and build its agent on its site's log in this gateway (``logs``,
    opened after its lnd answered). Its host runs on ``bridge`` (bootstrapping from
    its row's addresses), or is a view on ``hub``, the libp2p host it shares with
    the gateway's other devices of its site (:func:`open_hub`, which bootstraps
    from the gateway's other hubs). A light device pays and is paid through ``site``
    (the gateway's one client of its site node)."""
    name, identity, device, runtime = setup.name, setup.identity, setup.device, setup.runtime
    runtime.data_dir.mkdir(parents=True, exist_ok=True)
    config = setup.config
    owner_sites = {identity.site_id: identity}
    owner_sites.update({p.membership.site.site_id: p.membership.site for p in setup.peer_sites})
    # The owner's other sites, as their provisioned enrolments make them up.
    peer_logs = {p.membership.site_hash: p.membership for p in setup.peer_sites}
    # The neighbouring sites whose producers it trades energy with (its own name
    # ignored): each is one of ``peer_sites``, as the site file was refused otherwise.
    trading = set(config.energy.trade_sites) - {setup.site_name}
    trade_logs = {
        p.membership.site_hash: p.membership for p in setup.peer_sites if p.name in trading
    }

    def topics(roster: Roster) -> list[Topic]:
        """The site's topic and, since all sites of a setup belong to one owner
        (their devices may share across), the owner's topic: members as this
        agent's log (and the other sites' provisioning) enrol them."""
        rosters = [roster, *(m.roster for m in peer_logs.values())]
        return [site_topic(roster), *([owner_topic(rosters)] if len(rosters) > 1 else [])]

    node: Wallet
    if site is None:
        client = await parts.enter_async_context(LndClient(runtime.lnd))
        watch = NodeWatch(name)  # lnd away is a state of the agent, not a crash
        node = WatchedNode(client, watch, away_wait_s=config.lnd_away_wait_s)
        pubkey = (await node.get_info()).pubkey
    else:  # a light device: its wallet on the site node, whose watch it shares
        node = site.wallet(Party(identity.site_id, device.index))
        watch, pubkey = site.watch, site.pubkey
    intents = await IntentBook.open(runtime.data_dir / f"{name}.intents.db", name=name)
    parts.push_async_callback(intents.close)
    site_log = await logs.of(setup)
    spec = NodeSpec(
        name=name,
        db_path=site_log.path,
        site=identity,
        net=NetConfig(
            listen_host=runtime.listen_host,
            listen_port=runtime.listen_port,
            bootstrap=runtime.bootstrap,
            mdns=runtime.mdns,
        ),
        key=DeviceKey(identity, device.index, setup.signer),
        replica=ReplicaConfig(
            anti_entropy_interval_s=config.anti_entropy_s,
            own_chain_wait_s=config.own_chain_wait_s,
            empty_chain_waits=config.empty_chain_waits,
        ),
        topics=topics,
        provision=list(setup.provision),
        entries_file=setup.entries_file,
        bridge=bridge,
        hub=hub,
    )
    store = site_log.store
    host = await site_log.host_for(parts, spec)
    replica = await site_log.serve(spec, host)
    replica_protocols = host.serving  # the replica's sync; the agent's come next
    author = Author.device(device.index)
    # Its chain back from its peers before its first entry: its log file may be
    # older than its last entry (the site replica's config: its anchor's).
    writer = LogWriter(
        store, setup.signer, author, before_first=lambda: replica.take_own_chain(author)
    )
    agent = DeviceAgent(
        DeviceProfile(
            name=name,
            index=device.index,
            site_id=identity.site_id,
            priority=device.priority,
            policy=device.policy,
            leftover=device.leftover,
            utility_pubkey=runtime.utility_pubkey,
        ),
        AgentParts(
            store=store,
            writer=writer,
            replica=replica,
            peers=host,
            node=node,
            paymaster=make_paymaster(node=node, writer=writer, intents=intents, name=name),
            watch=watch,
        ),
        Metering(setup.tariff, device.meter.source(), setup.timing.model_interval),
        setup.timing.clock(0.0),
        config=config,
        owner_sites=owner_sites,
        peer_logs=peer_logs,
        trade_logs=trade_logs,
    )
    agent.install()
    # Its balance book follows the site's store, which outlives the device: a
    # failed device's book stops hearing of the others' entries.
    parts.callback(agent.book.close)
    feed = SiteFeed(
        name=setup.site_name,
        store=store,
        peer_sites=peer_logs,
        replicator=replica.replicator,
        peer_names={p.membership.site_hash: p.name for p in setup.peer_sites},
    )
    # Entered last, so it stops first: before the store it reads closes.
    dashboard = await parts.enter_async_context(Dashboard(name, (feed,), runtime.dashboard))
    emit(
        "ready",
        name=name,
        peer_id=host.peer_id,
        addrs=list(host.addrs),
        pubkey=pubkey,
        dashboard=dashboard.url,
    )
    return GatewayDevice(setup, agent, site_log, host, pubkey, parts, replica_protocols)


async def open_site_nodes(
    stack: contextlib.AsyncExitStack, setups: Sequence[AgentSetup]
) -> dict[LndEndpoint, SiteNode]:
    """One client (and one :class:`NodeWatch`) per site node the light devices of
    ``setups`` pay through, on ``stack``; a node whose key is not the one the site
    file names is refused before anything runs."""
    sites: dict[LndEndpoint, SiteNode] = {}
    for setup in setups:
        spec = setup.site_node
        if spec is None or setup.runtime.lnd in sites:
            continue
        client = await stack.enter_async_context(LndClient(setup.runtime.lnd))
        watch = NodeWatch(setup.runtime.lnd.name)
        node = WatchedNode(client, watch, away_wait_s=setup.config.lnd_away_wait_s)
        pubkey = (await node.get_info()).pubkey
        if pubkey != spec.pubkey:
            raise ConfigError(
                f"the site node at {setup.runtime.lnd.base_url} is {pubkey[:16]}..., "
                f"the site file's [site_lightning] pubkey is {spec.pubkey[:16]}..."
            )
        site_id = setup.identity.site_id
        sites[setup.runtime.lnd] = SiteNode(
            node,
            pubkey,
            {Party(site_id, i) for i in spec.light},
            name=setup.runtime.lnd.name,
            watch=watch,
        )
    return sites


def open_hub(
    stack: contextlib.AsyncExitStack,
    members: Sequence[AgentSetup],
    bridge: TrioBridge,
    neighbours: Sequence[str] = (),
) -> HostHub:
    """The one libp2p host of the gateway's devices ``members`` (of one site),
    stopped on ``stack`` (after the devices' hosts); the first device's host to
    start starts it. It speaks as their hub device (:func:`hub_device`, the lowest
    index, whatever the order of ``members``): that device's key makes its peer
    id, its row gives the port it listens on. It runs mDNS if any of them does,
    and bootstraps from ``neighbours`` (the gateway's hubs of other sites) and
    every address the devices' rows name but their own (those devices speak
    through it now)."""
    head = hub_device(members)
    ordered = [head, *(s for s in members if s is not head)]
    first = head.runtime
    own = tuple(f"/p2p/{peer_id_of(s.signer, s.identity)}" for s in members)
    rows = (addr for s in members for addr in s.runtime.bootstrap if not addr.endswith(own))
    net = NetConfig(
        listen_host=first.listen_host,
        listen_port=first.listen_port,
        bootstrap=tuple(dict.fromkeys((*rows, *neighbours))),
        mdns=any(s.runtime.mdns for s in members),
    )
    keys = [DeviceKey(s.identity, s.device.index, s.signer) for s in ordered]
    hub = HostHub(net, keys, bridge=bridge, name=f"{head.site_name}/host")
    if len(members) > 1:
        log.info(
            "[%s] the gateway's host of %s speaks as %s (the lowest device index): "
            "peer id %s, listen_port %d on %s",
            head.site_name, ", ".join(s.name for s in ordered), head.name, hub.peer_id,
            first.listen_port, first.listen_host,
        )  # fmt: skip
    stack.push_async_callback(hub.stop)
    return hub


async def run_gateway(
    setups: Sequence[AgentSetup],
    source: CommandSource = commands,
    *,
    make_paymaster: PaymasterFactory = Paymaster,
    bridge: TrioBridge | None = None,
) -> None:
    """Open the devices of ``setups``, serve ``source``'s commands until stopped
    (see the module's contract), then stop everything in order. ``make_paymaster``
    builds each device's paymaster (tests hand one that crashes the process
    mid-payment: :mod:`p2pgrid.testing.crash`). ``bridge``: a running trio guest
    run to put the hosts on (trio allows one per thread: a process that has one
    already, such as a test session, hands it here); by default the gateway
    starts its own and stops it last."""
    check_gateway(setups)
    failures: list[Exception] = []
    devices: list[GatewayDevice] = []
    async with contextlib.AsyncExitStack() as stack:
        commands_in = source()
        aclose = getattr(commands_in, "aclose", None)
        if aclose is not None:
            stack.push_async_callback(aclose)  # closes the stdin pipe last
        logs = SiteLogs(stack, setups)  # each store closed after every device
        logs.claim()  # another process's log files: refused before anything opens
        if bridge is None:
            bridge = TrioBridge()
            await bridge.start()
            stack.push_async_callback(bridge.stop)  # after every host
        sites = await open_site_nodes(stack, setups)  # closed after every device
        hubs: dict[str, HostHub] = {}  # one libp2p host per site of the gateway
        # The devices open site by site, each site's hub device first (its anchor).
        for site_id, members in by_site(setups).items():
            neighbours = [a for hub in hubs.values() for a in hub.addrs]
            hubs[site_id] = open_hub(stack, members, bridge, neighbours)  # stops last of the site
            logs.parts_of(site_id)  # the site's store and replica: after its devices' parts
            for setup in members:
                parts = contextlib.AsyncExitStack()
                stack.push_async_callback(parts.aclose)
                opened = await open_device(
                    parts,
                    setup,
                    bridge=bridge,
                    logs=logs,
                    make_paymaster=make_paymaster,
                    site=sites.get(setup.runtime.lnd) if setup.site_node is not None else None,
                    hub=hubs[site_id],
                )
                devices.append(opened)
        watches = [w for site_log in logs.opened if (w := site_log.entries) is not None]

        def read_entries_again() -> None:  # SIGHUP: every site's entries file, now
            for watch in watches:
                watch.poke()

        if watches:
            stack.enter_context(on_hangup(read_entries_again))  # removed before the devices stop
        service = Service()

        async def fail(device: GatewayDevice, exc: Exception) -> None:
            """Stop ``device`` alone (its run too), reported, its parts closed. A host
            view that runs its site's replica is the site's: it stays, answering its
            peers' sync requests for the gateway's other devices, but no longer for
            the failed device's agent (its protocols withdrawn first)."""
            failures.append(exc)
            device.failed = True
            if device.carries_replica:
                device.host.withdraw(device.host.serving - device.replica_protocols)
                running = [
                    d.name for d in devices if d.site_log is device.site_log and not d.failed
                ]
                log.warning(
                    "[%s] its host view stays up: it runs the replica of %s's log for %s",
                    device.name, device.setup.site_name, ", ".join(running) or "no device",
                )  # fmt: skip
            emit("failed", name=device.name, error=str(exc) or type(exc).__name__)
            if device.run is not None and device.run is not asyncio.current_task():
                device.run.cancel()
                await asyncio.wait([device.run])
            await device.parts.aclose()

        async def run_periods(device: GatewayDevice) -> None:
            device.run = asyncio.current_task()
            try:
                report = await device.agent.run(device.setup.timing.periods)
            except Exception as exc:  # one device's failure (a bug too) stops it alone
                if isinstance(exc, P2PGridError):
                    log.error("[%s] failed, stopping this device: %s", device.name, exc)
                else:
                    log.exception("[%s] failed, stopping this device", device.name)
                await fail(device, exc)  # its siblings go on: the site's parts are the gateway's
                if all(d.failed for d in devices):
                    service.stopping.set()  # nothing left to run
                return
            # Its host's counters too (messages published, RPCs sent): what the
            # scale bench reports as pubsub traffic per interval.
            net = dataclasses.asdict(device.host.stats())
            emit("done", name=device.name, report=dataclasses.asdict(report), net=net)

        async def handle(command: Command) -> None:
            if command["cmd"] == "start":
                # The gateway's own devices' nodes are known here; ``nodes`` names the others.
                nodes = {d.name: d.pubkey for d in devices}
                nodes.update({str(k): str(v) for k, v in dict(command.get("nodes", {})).items()})
                for device in devices:
                    device.agent.clock = device.setup.timing.clock(float(command["at"]))
                    for other, other_pubkey in nodes.items():
                        party = device.setup.parties.get(other)
                        if party is None:
                            raise ConfigError(f"no device named {other!r} among the owner's sites")
                        device.agent.nodes[party] = other_pubkey
                for device in devices:
                    service.spawn(run_periods(device))  # stop and digest are answered meanwhile
            elif command["cmd"] == "digest":
                for device in devices:
                    if not device.failed:
                        emit("digest", name=device.name, digest=device.store.digest().hex())

        await service.serve(commands_in, handle)
    for device in devices:
        if not device.failed:
            emit("stopped", name=device.name)
    if failures:
        raise ExceptionGroup("devices of the gateway failed", failures)


async def run_device(
    setup: AgentSetup,
    source: CommandSource = commands,
    *,
    make_paymaster: PaymasterFactory = Paymaster,
) -> None:
    """A gateway of one: device ``setup.name`` alone in its process."""
    await run_gateway((setup,), source, make_paymaster=make_paymaster)
