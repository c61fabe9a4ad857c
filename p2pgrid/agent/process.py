"""One device agent as an OS process: ``python -m p2pgrid.agent --scenario S --runtime R --name N``
(the launcher's child) or ``p2pgrid agent run --config site.toml --device N`` (a deployed
host, which also watches the owner's entries file while it runs and reads it again on
SIGHUP: :mod:`p2pgrid.replication.entries_watch`). Both build one typed
:class:`AgentSetup` (from the scenario and runtime files here, from the site file in
:mod:`p2pgrid.config.setups`) and run :func:`run_device` on it; the deployed host's
commands are one ``start`` at the file's ``clock.start``, then none.

It opens its lnd client, its payment intents (``<name>.intents.db``) and its
node's parts (its own SQLite log, libp2p host and replica:
:func:`p2pgrid.replication.open_node_parts`), serves its dashboard over its
replica (:mod:`p2pgrid.dashboard`), prints ``{"event": "ready", "addrs": [...],
"pubkey": <its lnd node>, "dashboard": url}`` and waits for ``{"cmd": "start",
"at": <epoch s of interval 0>, "nodes": {<device name>: <lnd pubkey>}}`` (the
Lightning node of every device, where shares and sales are paid). It then runs every period
of the scenario, prints ``{"event": "done", "report": ...}``, and keeps serving
its replica (answering ``{"cmd": "digest"}``, also while it runs) until
``{"cmd": "stop"}``, end of input, SIGTERM or SIGINT, at any moment
(:class:`p2pgrid.service.Service`: input first, then the run in flight). Parts
stop in order: dashboard, replica, host, the database, the intents, then the lnd client.
Errors end it with one line on stderr and the exit codes of
:mod:`p2pgrid.service` (2: bad files, 3: lnd unreachable), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from p2pgrid.agent.config import AgentConfig
from p2pgrid.agent.device import AgentParts, DeviceAgent, DeviceProfile, Metering
from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.billing import FlatTariff
from p2pgrid.dashboard import Dashboard, SiteFeed
from p2pgrid.errors import ConfigError
from p2pgrid.identity import Roster, Signer, SiteIdentity
from p2pgrid.jsonlines import commands, emit
from p2pgrid.ledger import Author, LogWriter, Membership
from p2pgrid.lightning import LndClient, NodeWatch, WatchedNode
from p2pgrid.market import Party
from p2pgrid.net import DeviceKey, NetConfig, Topic, owner_topic, site_topic
from p2pgrid.provision import provisioned_membership
from p2pgrid.replication import NodeSpec, ReplicaConfig, open_node_parts
from p2pgrid.runtime import Runtime
from p2pgrid.scenario import DeviceSpec, Scenario, Timing, load_scenario
from p2pgrid.service import Command, Service, on_hangup, run_process

#: Where the commands come from: stdin's JSON lines (the launcher's child) or a
#: fixed start (``p2pgrid agent run``). Called inside the running loop.
CommandSource = Callable[[], AsyncIterator[Command]]


@dataclasses.dataclass(frozen=True)
class PeerSite:
    """Another site of the same owner, as its provisioned enrolments make it up."""

    name: str
    membership: Membership


@dataclasses.dataclass(frozen=True)
class AgentSetup:
    """Everything one device agent process is built from (typed, validated once).

    Built from a scenario and a runtime file (:func:`setup_from_scenario`, the
    launcher's children) or from a site file (:mod:`p2pgrid.config`, ``p2pgrid
    agent run``); :func:`run_device` assembles the agent the same way for both.
    """

    site_name: str
    identity: SiteIdentity
    device: DeviceSpec
    signer: Signer
    timing: Timing
    tariff: FlatTariff
    runtime: Runtime
    #: The owner's signed entries of this site (enrolments, allocations).
    provision: tuple[bytes, ...]
    peer_sites: tuple[PeerSite, ...] = ()
    #: Every device of the owner by name, for the ``nodes`` of ``start``.
    parties: Mapping[str, Party] = dataclasses.field(default_factory=dict)
    #: The agent's tuning (the project's defaults unless a site file's ``[agent]`` sets them).
    config: AgentConfig = dataclasses.field(default_factory=AgentConfig)
    #: The owner's entries file ``provision`` was read from: watched while the agent
    #: runs, and read again on SIGHUP (None: the launcher's fixed provisioning).
    entries_file: Path | None = None

    @property
    def name(self) -> str:
        return self.device.name


def setup_from_scenario(scenario: Scenario, runtime: Runtime, name: str) -> AgentSetup:
    """The setup of device ``name`` of a launcher's run (demo keys from the scenario)."""
    site, device = scenario.site_of(name)
    return AgentSetup(
        site_name=site.name,
        identity=site.identity,
        device=device,
        signer=site.device_signer(device.index),
        timing=scenario.timing,
        tariff=scenario.tariff,
        runtime=runtime,
        provision=tuple(bytes.fromhex(h) for h in runtime.provision.get(site.name, [])),
        peer_sites=tuple(
            PeerSite(s.name, provisioned_membership(s, runtime.provision.get(s.name, [])))
            for s in scenario.sites
            if s != site
        ),
        parties={
            d.name: Party(s.identity.site_id, d.index) for s in scenario.sites for d in s.devices
        },
        config=scenario.agent,
    )


#: Builds the agent's paymaster from :class:`Paymaster`'s keyword arguments.
PaymasterFactory = Callable[..., Paymaster]


async def run_device(
    setup: AgentSetup,
    source: CommandSource = commands,
    *,
    make_paymaster: PaymasterFactory = Paymaster,
) -> None:
    """Assemble device ``setup.name``'s agent, serve ``source``'s commands until
    stopped (see the module's contract), then stop its parts in order.
    ``make_paymaster`` builds its paymaster (tests hand it one that crashes the
    process mid-payment: :mod:`p2pgrid.testing.crash`)."""
    name, identity, device, runtime = setup.name, setup.identity, setup.device, setup.runtime
    signer = setup.signer
    timing = setup.timing
    runtime.data_dir.mkdir(parents=True, exist_ok=True)
    config = setup.config
    owner_sites = {identity.site_id: identity}
    owner_sites.update({p.membership.site.site_id: p.membership.site for p in setup.peer_sites})
    # The owner's other sites, as their provisioned enrolments make them up.
    peer_logs = {p.membership.site_hash: p.membership for p in setup.peer_sites}

    def topics(roster: Roster) -> list[Topic]:
        """The site's topic and, since all sites of a setup belong to one owner
        (their devices may share across), the owner's topic: members as this
        agent's log (and the other sites' provisioning) enrol them."""
        rosters = [roster, *(m.roster for m in peer_logs.values())]
        return [site_topic(roster), *([owner_topic(rosters)] if len(rosters) > 1 else [])]

    async with contextlib.AsyncExitStack() as parts:
        commands_in = source()
        aclose = getattr(commands_in, "aclose", None)
        if aclose is not None:
            parts.push_async_callback(aclose)  # closes the stdin pipe last
        client = await parts.enter_async_context(LndClient(runtime.lnd))
        watch = NodeWatch(name)  # lnd away is a state of the agent, not a crash
        node = WatchedNode(client, watch)
        pubkey = (await node.get_info()).pubkey
        intents = await IntentBook.open(runtime.data_dir / f"{name}.intents.db", name=name)
        parts.push_async_callback(intents.close)
        log_node = await open_node_parts(
            parts,
            NodeSpec(
                name=name,
                db_path=runtime.data_dir / f"{name}.db",
                site=identity,
                net=NetConfig(
                    listen_host=runtime.listen_host,
                    listen_port=runtime.listen_port,
                    bootstrap=runtime.bootstrap,
                    mdns=runtime.mdns,
                ),
                key=DeviceKey(identity, device.index, signer),
                replica=ReplicaConfig(anti_entropy_interval_s=config.anti_entropy_s),
                topics=topics,
                provision=list(setup.provision),
                entries_file=setup.entries_file,
            ),
        )
        store, host, replica = log_node.store, log_node.host, log_node.replica
        if log_node.entries is not None:
            parts.enter_context(on_hangup(log_node.entries.poke))
        writer = LogWriter(store, signer, Author.device(device.index))
        agent = DeviceAgent(
            DeviceProfile(
                name=name,
                index=device.index,
                site_id=identity.site_id,
                priority=device.priority,
                policy=device.policy,
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
            Metering(setup.tariff, device.meter.source(), timing.model_interval),
            timing.clock(0.0),
            config=config,
            owner_sites=owner_sites,
            peer_logs=peer_logs,
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
        service = Service()

        async def run_periods() -> None:
            report = await agent.run(timing.periods)
            emit("done", name=name, report=dataclasses.asdict(report))

        async def handle(command: Command) -> None:
            if command["cmd"] == "start":
                agent.clock = timing.clock(float(command["at"]))
                for other, other_pubkey in dict(command.get("nodes", {})).items():
                    party = setup.parties.get(str(other))
                    if party is None:
                        raise ConfigError(f"no device named {other!r} among the owner's sites")
                    agent.nodes[party] = str(other_pubkey)
                service.spawn(run_periods())  # stop and digest are answered meanwhile
            elif command["cmd"] == "digest":
                emit("digest", name=name, digest=store.digest().hex())

        await service.serve(commands_in, handle)
    emit("stopped", name=name)


def argument_parser(prog: str = "python -m p2pgrid.agent") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--scenario", type=Path, required=True)
    parser.add_argument("--runtime", type=Path, required=True)
    parser.add_argument("--name", required=True)
    return parser


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("libp2p").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    args = argument_parser().parse_args(argv)
    setup_logging()
    run_process(run_from_files(args.scenario, args.runtime, args.name))


async def run_from_files(
    scenario_path: Path,
    runtime_path: Path,
    name: str,
    *,
    make_paymaster: PaymasterFactory = Paymaster,
) -> None:
    """The launcher's child: device ``name`` of a scenario and a runtime file."""
    scenario = load_scenario(scenario_path)
    setup = setup_from_scenario(scenario, Runtime.load(runtime_path), name)
    await run_device(setup, make_paymaster=make_paymaster)
