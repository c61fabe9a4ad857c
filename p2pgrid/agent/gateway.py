"""A site gateway: one OS process that runs the agents of one or more devices.

``p2pgrid agent run --config site.toml --device A --device B`` (or ``--all``)
runs a gateway of those devices; ``--device A`` alone (and the test program
:mod:`p2pgrid.testing.crash`) is a gateway of one (:func:`run_device`).

What the devices of a gateway share: the process (one interpreter, one import
of libp2p), the asyncio loop, one :class:`~p2pgrid.net.TrioBridge`, and one
libp2p host per site (:func:`open_hub`, a :class:`~p2pgrid.net.HostHub`: one
peer id and port, the first device's; its hello proves every device of the
gateway of that site, requests name their device, docs/protocol-net.md
sections 6-7). What each device keeps for itself, exactly as in a process of
its own: its key and log author (its :class:`~p2pgrid.ledger.LogWriter`), its
replica of the site log (its own SQLite file), its
:class:`~p2pgrid.net.PeerHost` (a view on the hub that signs with its key), its
lnd client, its payment intents (``<name>.intents.db``), its budget, forecast,
decisions and dashboard. Light devices (no lnd of their own, ``lightning =
"site"``) share the gateway's one client of their site node
(:func:`open_site_nodes`), each through its own
:class:`~p2pgrid.agent.sitewallet.SiteWallet`. Devices of one gateway reach
each other through their hub, over the same messages as any peer (a request
between them is a call, not a stream); a site can be split across gateways, or
across a gateway and single agents, with no change. Each hub bootstraps from
the hubs of the gateway's other sites opened before it.

Not shared (yet): one replica store per site (each device's replica serves the
sync on its own); see docs/architecture.md, "Gateways".

Lifecycle: the bridge starts first; the devices open in the order given (a
device that cannot open, a bad key file or an lnd that does not answer, fails
the whole gateway with the exit codes of :mod:`p2pgrid.service`: nothing has
run yet); each prints its ``ready`` line. ``start`` starts every device's run
(``nodes``: the Lightning node of each device; those of the gateway's own
devices are known without it); ``digest`` is answered by every running device.
Every line names its device, as a single agent's does.

One device's failure while running (an error out of its run: a fatal one, a
corrupt log, or a bug) stops that device alone: an ERROR log line, a ``{"event":
"failed", "name": ..., "error": ...}`` line, its parts closed in order; the
other devices go on trading. Once every device has failed the gateway stops;
otherwise it stops when told to (``stop``, end of input, SIGTERM, SIGINT), and
then ends with the first failure's exit code, so neither an operator nor a
supervisor misses it. Expected conditions (a peer or lnd away, a refused
payment) never reach this level: the agent handles them itself.

Stop order: the command input, the devices' runs, then each device's parts in
the reverse order of opening (dashboard, replica, host, database, intents, lnd
client), each site's libp2p host after its devices' parts, then the site nodes'
clients, then the bridge, last the command pipe.
A deployed gateway watches each device's copy of the owner's entries file and
reads them all again on SIGHUP (:mod:`p2pgrid.replication.entries_watch`), as a
single agent does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence

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
from p2pgrid.ledger import Author, LogStore, LogWriter
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
from p2pgrid.replication import EntriesWatch, NodeSpec, ReplicaConfig, open_node_parts
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
    store: LogStore
    host: PeerHost
    #: Its lnd node: where the site's devices pay it.
    pubkey: str
    #: Its own parts, closed when it fails or when the gateway stops.
    parts: contextlib.AsyncExitStack
    #: The watch of the owner's entries file (None: run without one).
    entries: EntriesWatch | None = None
    failed: bool = False

    @property
    def name(self) -> str:
        return self.setup.name


def check_gateway(setups: Sequence[AgentSetup]) -> None:
    """Refuse a gateway that cannot run: no device, a device twice, two devices on
    one port, two mDNS responders in one process (py-libp2p's discovery is one
    per process)."""
    if not setups:
        raise ConfigError("a gateway runs at least one device")
    names = [s.name for s in setups]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"a gateway runs each device once: {', '.join(twice)} given twice")
    ports: dict[tuple[str, int], list[str]] = {}
    for s in setups:
        if s.runtime.listen_port:
            ports.setdefault((s.runtime.listen_host, s.runtime.listen_port), []).append(s.name)
    for (host, port), names_on in ports.items():
        if len(names_on) > 1:
            raise ConfigError(
                f"listen_port {port} on {host} is given to {', '.join(names_on)}: "
                "each device of a gateway listens on its own port"
            )
    mdns = [s.name for s in setups if s.runtime.mdns]
    if len(mdns) > 1:
        raise ConfigError(
            f"mdns is on for {', '.join(mdns)}: one device of a gateway at most "
            "(the others find their peers through it)"
        )


async def open_device(
    parts: contextlib.AsyncExitStack,
    setup: AgentSetup,
    *,
    bridge: TrioBridge,
    neighbours: Sequence[str] = (),
    make_paymaster: PaymasterFactory = Paymaster,
    site: SiteNode | None = None,
    hub: HostHub | None = None,
) -> GatewayDevice:
    """Open device ``setup.name``'s parts on ``parts`` (their stops go there, in
    order) and build its agent. Its host runs on ``bridge`` and bootstraps from
    ``neighbours`` too (the hosts of the gateway's other devices), or is a view
    on ``hub``, the libp2p host it shares with the gateway's other devices of its
    site (:func:`open_hubs`). A light device pays and is paid through ``site``
    (the gateway's one client of its site node)."""
    name, identity, device, runtime = setup.name, setup.identity, setup.device, setup.runtime
    runtime.data_dir.mkdir(parents=True, exist_ok=True)
    config = setup.config
    owner_sites = {identity.site_id: identity}
    owner_sites.update({p.membership.site.site_id: p.membership.site for p in setup.peer_sites})
    # The owner's other sites, as their provisioned enrolments make them up.
    peer_logs = {p.membership.site_hash: p.membership for p in setup.peer_sites}
    # The neighbouring sites whose producers it trades energy with (its own name ignored).
    trading = set(config.energy.trade_sites) - {setup.site_name}
    unknown = trading - {p.name for p in setup.peer_sites}
    if unknown:
        raise ConfigError(f"energy.trade_sites: no other site named {', '.join(sorted(unknown))}")
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
    bootstrap = (*runtime.bootstrap, *(a for a in neighbours if a not in runtime.bootstrap))
    log_node = await open_node_parts(
        parts,
        NodeSpec(
            name=name,
            db_path=runtime.data_dir / f"{name}.db",
            site=identity,
            net=NetConfig(
                listen_host=runtime.listen_host,
                listen_port=runtime.listen_port,
                bootstrap=bootstrap,
                mdns=runtime.mdns,
            ),
            key=DeviceKey(identity, device.index, setup.signer),
            replica=ReplicaConfig(anti_entropy_interval_s=config.anti_entropy_s),
            topics=topics,
            provision=list(setup.provision),
            entries_file=setup.entries_file,
            bridge=bridge,
            hub=hub,
        ),
    )
    store, host, replica = log_node.store, log_node.host, log_node.replica
    writer = LogWriter(store, setup.signer, Author.device(device.index))
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
    return GatewayDevice(setup, agent, store, host, pubkey, parts, log_node.entries)


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
    stopped on ``stack`` (after the devices' hosts); its first device's host starts
    it. It listens where the first device would (its port, its peer id), runs
    mDNS if any of them does, and bootstraps from ``neighbours`` (the gateway's
    hubs of other sites) and every address the devices' rows name but their own
    (those devices speak through it now)."""
    first = members[0].runtime
    own = tuple(f"/p2p/{peer_id_of(s.signer, s.identity)}" for s in members)
    rows = (addr for s in members for addr in s.runtime.bootstrap if not addr.endswith(own))
    net = NetConfig(
        listen_host=first.listen_host,
        listen_port=first.listen_port,
        bootstrap=tuple(dict.fromkeys((*rows, *neighbours))),
        mdns=any(s.runtime.mdns for s in members),
    )
    keys = [DeviceKey(s.identity, s.device.index, s.signer) for s in members]
    hub = HostHub(net, keys, bridge=bridge, name=f"{members[0].site_name}/host")
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
        if bridge is None:
            bridge = TrioBridge()
            await bridge.start()
            stack.push_async_callback(bridge.stop)  # after every host
        sites = await open_site_nodes(stack, setups)  # closed after every device
        hubs: dict[str, HostHub] = {}  # one libp2p host per site of the gateway
        for setup in setups:
            neighbours = [a for hub in hubs.values() for a in hub.addrs]
            site_id = setup.identity.site_id
            if site_id not in hubs:  # stopped after its devices' parts, pushed below
                members = [s for s in setups if s.identity.site_id == site_id]
                hubs[site_id] = open_hub(stack, members, bridge, neighbours)
            hub = hubs[site_id]
            parts = contextlib.AsyncExitStack()
            stack.push_async_callback(parts.aclose)
            opened = await open_device(
                parts,
                setup,
                bridge=bridge,
                neighbours=neighbours,
                make_paymaster=make_paymaster,
                site=sites.get(setup.runtime.lnd) if setup.site_node is not None else None,
                hub=hub,
            )
            devices.append(opened)

        def read_entries_again() -> None:  # SIGHUP: every running device's entries file, now
            for device in devices:
                if device.entries is not None and not device.failed:
                    device.entries.poke()

        if any(d.entries is not None for d in devices):
            stack.enter_context(on_hangup(read_entries_again))  # removed before the devices stop
        service = Service()

        async def run_periods(device: GatewayDevice) -> None:
            try:
                report = await device.agent.run(device.setup.timing.periods)
            except Exception as exc:  # one device's failure (a bug too) stops it alone
                if isinstance(exc, P2PGridError):
                    log.error("[%s] failed, stopping this device: %s", device.name, exc)
                else:
                    log.exception("[%s] failed, stopping this device", device.name)
                failures.append(exc)
                device.failed = True
                emit("failed", name=device.name, error=str(exc) or type(exc).__name__)
                await device.parts.aclose()
                if all(d.failed for d in devices):
                    service.stopping.set()  # nothing left to run
                return
            emit("done", name=device.name, report=dataclasses.asdict(report))

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
