"""One device agent as an OS process: ``python -m p2pgrid.agent --scenario S --runtime R --name N``.

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
from pathlib import Path
from typing import Any

from p2pgrid.agent.config import AgentConfig
from p2pgrid.agent.device import AgentParts, DeviceAgent, DeviceProfile, Metering
from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.dashboard import Dashboard, SiteFeed
from p2pgrid.identity import Roster
from p2pgrid.jsonlines import commands, emit
from p2pgrid.ledger import Author, LogWriter
from p2pgrid.lightning import LndClient, NodeWatch, WatchedNode
from p2pgrid.market import Party
from p2pgrid.net import DeviceKey, NetConfig, Topic, owner_topic, site_topic
from p2pgrid.provision import provisioned_membership
from p2pgrid.replication import NodeSpec, ReplicaConfig, open_node_parts
from p2pgrid.runtime import Runtime
from p2pgrid.scenario import load_scenario
from p2pgrid.service import Service, run_process


async def run_device(scenario_path: Path, runtime_path: Path, name: str) -> None:
    scenario = load_scenario(scenario_path)
    runtime = Runtime.load(runtime_path)
    site, device = scenario.site_of(name)
    identity = site.identity
    signer = site.device_signer(device.index)
    runtime.data_dir.mkdir(parents=True, exist_ok=True)
    config = AgentConfig()  # the project's tuning
    owner_sites = {s.identity.site_id: s.identity for s in scenario.sites}
    # The owner's other sites, as their provisioned enrolments make them up.
    peer_logs = {
        s.identity.site_hash: provisioned_membership(s, runtime.provision.get(s.name, []))
        for s in scenario.sites
        if s != site
    }

    def topics(roster: Roster) -> list[Topic]:
        """The site's topic and, since all sites of a scenario belong to one owner
        (their devices may share across), the owner's topic: members as this
        agent's log (and the other sites' provisioning) enrol them."""
        rosters = [roster, *(m.roster for m in peer_logs.values())]
        return [site_topic(roster), *([owner_topic(rosters)] if len(rosters) > 1 else [])]

    async with contextlib.AsyncExitStack() as parts:
        commands_in = commands()
        parts.push_async_callback(commands_in.aclose)  # closes the stdin pipe last
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
                provision=[bytes.fromhex(h) for h in runtime.provision.get(site.name, [])],
            ),
        )
        store, host, replica = log_node.store, log_node.host, log_node.replica
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
                paymaster=Paymaster(node=node, writer=writer, intents=intents, name=name),
                watch=watch,
            ),
            Metering(scenario.tariff, device.meter.source(), scenario.model_interval),
            scenario.clock(0.0),
            config=config,
            owner_sites=owner_sites,
            peer_logs=peer_logs,
        )
        agent.install()
        feed = SiteFeed(
            name=site.name,
            store=store,
            peer_sites=peer_logs,
            replicator=replica.replicator,
            peer_names={s.identity.site_hash: s.name for s in scenario.sites if s != site},
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
            report = await agent.run(scenario.periods)
            emit("done", name=name, report=dataclasses.asdict(report))

        async def handle(command: dict[str, Any]) -> None:
            if command["cmd"] == "start":
                agent.clock = scenario.clock(float(command["at"]))
                for other, other_pubkey in dict(command.get("nodes", {})).items():
                    other_site, other_device = scenario.site_of(str(other))
                    party = Party(other_site.identity.site_id, other_device.index)
                    agent.nodes[party] = str(other_pubkey)
                service.spawn(run_periods())  # stop and digest are answered meanwhile
            elif command["cmd"] == "digest":
                emit("digest", name=name, digest=store.digest().hex())

        await service.serve(commands_in, handle)
    emit("stopped", name=name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m p2pgrid.agent", description=__doc__)
    parser.add_argument("--scenario", type=Path, required=True)
    parser.add_argument("--runtime", type=Path, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    run_process(run_device(args.scenario, args.runtime, args.name))
