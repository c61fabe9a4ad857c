"""Replication of the log over REAL py-libp2p hosts (TCP on 127.0.0.1, Noise, mplex,
GossipSub): ten agents, each a LogStore on its own SQLite file, a PeerHost and a
NetReplica, all in this process on one shared TrioBridge (trio allows one guest
run per thread). Waits are on events (NetReplica.wait_until) under deadlines.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from p2pgrid.identity import Role
from p2pgrid.ledger import (
    Author,
    Enrol,
    Entry,
    LogStore,
    LogWriter,
    MeterReading,
    RejectReason,
    Revoke,
)
from p2pgrid.net import DeviceKey, NetConfig, PeerHost, Topic, TrioBridge
from p2pgrid.poll import wait_until
from p2pgrid.replication import NetReplica, ReplicaConfig, log_net_topic
from tests.ledger.ledger_factory import T0_MS, Chain, Site

pytestmark = pytest.mark.slow

AGENTS = 10
#: Deadline for every replica to reach the reference digest.
CONVERGE_S = 45.0
#: Deadline for a host to see the hub on the log topic.
JOIN_S = 20.0
#: Every agent dials the hub (agent 0) and its predecessor; hellos spread the rest.
BOOTSTRAP = {i: sorted({0, i - 1} - {i}) for i in range(AGENTS + 1)}


@dataclasses.dataclass
class Agent:
    index: int
    path: Path
    store: LogStore
    host: PeerHost
    replica: NetReplica
    writer: LogWriter

    @property
    def name(self) -> str:
        return self.store.name


@dataclasses.dataclass
class Cluster:
    """The agents of one test; every one is stopped (replica, host, store) at the end."""

    site: Site
    bridge: TrioBridge
    topic: Topic
    tmp_path: Path
    stack: AsyncExitStack
    agents: dict[int, Agent] = dataclasses.field(default_factory=dict)
    written: list[Entry] = dataclasses.field(default_factory=list)

    async def start(
        self,
        index: int,
        config: ReplicaConfig,
        *,
        offline_writes: int = 0,
        provision: Sequence[Entry] = (),
        net: NetConfig | None = None,
    ) -> Agent:
        """Open (or reopen) agent ``index``'s store, ingest ``provision`` (owner's
        entries beyond the genesis), write offline, then go online."""
        path = self.tmp_path / f"agent-{index}.sqlite"
        store = await self.site.open(path, f"agent-{index}")
        self.stack.push_async_callback(store.close)
        await store.ingest_many([e.raw for e in provision])
        author = Author.device(index)
        writer = LogWriter(store, self.site.device(index), author)
        for _ in range(offline_writes):  # never announced: only anti-entropy spreads them
            self.written.append(await _append(writer))
        bootstrap = tuple(
            addr
            for peer in BOOTSTRAP.get(index, [0])
            if peer in self.agents and self.agents[peer].host.peer_id
            for addr in self.agents[peer].host.addrs
        )
        topic = log_net_topic(store.roster)  # who may speak: as this replica's log enrols
        host = PeerHost(
            dataclasses.replace(net or NetConfig(), bootstrap=bootstrap),
            DeviceKey(self.site.identity, index, self.site.device(index)),
            [topic],
            bridge=self.bridge,
            name=f"agent-{index}",
        )
        await host.start()
        self.stack.push_async_callback(host.stop)
        replica = NetReplica(store, host, config, topic=topic)
        await replica.start()
        self.stack.push_async_callback(replica.stop)
        agent = Agent(index, path, store, host, replica, writer)
        self.agents[index] = agent
        return agent

    async def stop(self, index: int) -> None:
        """Take an agent off the network and close its database (in that order)."""
        agent = self.agents.pop(index)
        await agent.replica.stop()
        await agent.host.stop()
        await agent.store.close()

    async def joined_hub(self) -> None:
        hub = self.agents[0].host
        for agent in self.agents.values():
            if agent.index != 0:
                await agent.host.wait_for_peer(hub.peer_id, self.topic, timeout_s=JOIN_S)
                await hub.wait_for_peer(agent.host.peer_id, self.topic, timeout_s=JOIN_S)

    async def write(self, indexes: Iterable[int], per_agent: int) -> None:
        """Each listed agent appends and announces ``per_agent`` entries, concurrently."""

        async def one(agent: Agent) -> None:
            for _ in range(per_agent):
                entry = await _append(agent.writer)
                self.written.append(entry)
                await agent.replica.publish([entry])

        async with asyncio.TaskGroup() as tg:
            for index in indexes:
                tg.create_task(one(self.agents[index]))

    async def reference_digest(self) -> bytes:
        """The digest of a log holding exactly the entries written (in a fresh store)."""
        ordered = sorted(self.written, key=lambda e: (e.author, e.seq))
        async with await self.site.open(self.tmp_path / "reference.sqlite") as ref:
            await ref.ingest_many([e.raw for e in ordered])
            assert ref.heads().total == len(self.written) + len(self.site.genesis)
            return ref.digest()

    async def converged(self) -> None:
        """Wait until every running replica holds exactly the entries written."""
        digest = await self.reference_digest()

        async def one(agent: Agent) -> None:
            await agent.replica.wait_until(lambda: agent.store.digest() == digest)

        try:
            async with asyncio.timeout(CONVERGE_S), asyncio.TaskGroup() as tg:
                for agent in self.agents.values():
                    tg.create_task(one(agent))
        except TimeoutError:
            lagging = {
                a.name: a.store.heads().total
                for a in self.agents.values()
                if a.store.digest() != digest
            }
            pytest.fail(f"of {len(self.written)} entries, after {CONVERGE_S}s: {lagging}")
        assert {a.store.digest() for a in self.agents.values()} == {digest}


async def _append(writer: LogWriter) -> Entry:
    seq = writer.store.next_position(writer.author)[0]
    ts = T0_MS + 60_000 * seq
    return await writer.append(MeterReading(ts, 60, 5, 50), period=1, timestamp_ms=ts)


@pytest.fixture
async def cluster(site: Site, bridge: TrioBridge, tmp_path: Path) -> AsyncIterator[Cluster]:
    topic = log_net_topic(site.membership.roster)  # its name; each host has its store's
    async with AsyncExitStack() as stack:
        yield Cluster(site, bridge, topic, tmp_path, stack)


def _config(index: int, *, gossip_loss: float = 0.0) -> ReplicaConfig:
    return ReplicaConfig(
        anti_entropy_interval_s=1.5,
        peers_per_round=1,
        max_concurrent_rounds=2,
        gossip_loss=gossip_loss,
        seed=index,
    )


async def test_ten_agents_converge_despite_lost_gossip(cluster: Cluster) -> None:
    for i in range(AGENTS):
        await cluster.start(i, _config(i, gossip_loss=0.3))
    await cluster.joined_hub()
    await cluster.write(range(AGENTS), per_agent=12)
    await cluster.converged()
    stats = [a.replica.stats() for a in cluster.agents.values()]
    assert sum(s.gossip_dropped for s in stats) > 0  # the loss really happened...
    assert sum(s.gossip_appended for s in stats) > 0  # ...gossip carried some...
    assert sum(s.pulled_appended for s in stats) > 0  # ...and anti-entropy the rest


async def test_restarted_agents_and_a_late_joiner_converge(cluster: Cluster) -> None:
    for i in range(AGENTS):
        await cluster.start(i, _config(i))
    await cluster.joined_hub()
    await cluster.write(range(AGENTS), per_agent=5)
    await cluster.converged()
    # Partition: agents 7-9 go down (their files stay); the others keep writing.
    down = [7, 8, 9]
    held_when_down = {i: cluster.agents[i].store.heads().total for i in down}
    for i in down:
        await cluster.stop(i)
    await cluster.write(range(7), per_agent=10)
    await cluster.converged()
    # Heal: they come back on the same SQLite files, having written while offline;
    # a fresh agent joins too.
    for i in down:
        agent = await cluster.start(i, _config(i), offline_writes=3)
        assert agent.store.heads().total == held_when_down[i] + 3
    await cluster.start(AGENTS, _config(AGENTS))
    await cluster.converged()
    assert len(cluster.agents) == AGENTS + 1
    late = cluster.agents[AGENTS].store.heads().total - len(cluster.site.genesis)
    assert late == len(cluster.written) == 50 + 70 + 9
    assert all(
        a.replica.stats().pulled_appended > 0 for i, a in cluster.agents.items() if i in down
    )


async def _count(what: str, probe: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return probe()

    await wait_until(holds, timeout_s=JOIN_S, what=what)


async def test_a_revoked_device_is_cut_on_every_replica(cluster: Cluster) -> None:
    """Device 3's key is stolen: the owner revokes it after its seq 3. Entries 4 and
    5, already spread, are dropped everywhere; entry 6, signed afterwards, is
    refused by every host (the revoked key may not speak) and every log."""
    for i in range(4):
        await cluster.start(i, _config(i))
    await cluster.joined_hub()
    stolen = cluster.agents[3]
    for _ in range(5):
        entry = await _append(stolen.writer)
        await stolen.replica.publish([entry])
        if entry.seq <= 3:
            cluster.written.append(entry)
    await cluster.write([1], per_agent=2)
    target = len(cluster.site.genesis) + len(cluster.written) + 2  # + entries 4 and 5
    await asyncio.gather(
        *(
            a.replica.wait_until(lambda a=a: a.store.heads().total == target)
            for a in cluster.agents.values()
        )
    )
    revoke = cluster.site.chain(Author.owner()).next(
        Revoke(Role.DEVICE, 3, 3, "key stolen"), period=1
    )
    hub = cluster.agents[0]
    await hub.store.ingest(revoke.raw)
    await hub.replica.publish([revoke])
    cluster.written.append(revoke)
    await cluster.converged()  # 4 and 5 gone everywhere, the thief's own replica too
    # The thief signs on with its own chain: its host is no longer a member anywhere.
    thief = Chain(cluster.site, Author.device(3))
    for _ in range(6):
        thief.next(MeterReading(T0_MS, 60, 5, 50))
    sixth = thief.entries[5]
    await stolen.replica.publish([sixth])
    for agent in (cluster.agents[i] for i in range(3)):
        await _count(
            f"{agent.name} to refuse the revoked host",
            lambda agent=agent: agent.host.stats().rejected["not_member"] >= 1,
        )
        report = await agent.store.ingest(sixth.raw)  # and the log, if it came another way
        assert report.results[0].reason is RejectReason.REVOKED
    await cluster.converged()


async def test_an_unenrolled_device_is_refused_until_the_owner_enrols_it(
    cluster: Cluster,
) -> None:
    """Device 70 has a key but no enrolment: hosts refuse its hello and its
    announcements. Once the owner's enrolment reaches their logs (through any
    member), the same device is admitted, with no restart and no server."""
    for i in range(3):
        await cluster.start(i, _config(i))
    await cluster.joined_hub()
    site = cluster.site
    enrol = site.chain(Author.owner()).next(
        Enrol(Role.DEVICE, 70, site.device(70).pubkey, "ev_charger", 0), period=0
    )
    newcomer = await cluster.start(70, _config(70), provision=[enrol])  # it has its own enrolment
    hub = cluster.agents[0]
    await _count(
        "the hub to refuse the unenrolled device's hello",
        lambda: hub.host.stats().rejected_hellos["not_member"] >= 1,
    )
    assert newcomer.host.peer_id not in {p.peer_id for p in hub.host.peers()}
    early = await _append(newcomer.writer)
    await newcomer.replica.publish([early])
    await _count(
        "the hub to refuse the unenrolled device's announcement",
        lambda: hub.host.stats().rejected["not_member"] >= 1,
    )
    assert Author.device(70) not in hub.store.heads()
    # The owner's enrolment reaches the site through a member (the hub).
    await hub.store.ingest(enrol.raw)
    await hub.replica.publish([enrol])
    cluster.written += [enrol, early]
    later = await _append(newcomer.writer)
    await newcomer.replica.publish([later])
    cluster.written.append(later)
    await cluster.converged()


#: A dead peer is retried this many times in a row (past 1,025: the old overflow).
DEAD_PEER_FAILURES = 1_100


async def test_a_dead_peer_does_not_stop_anti_entropy_with_live_peers(cluster: Cluster) -> None:
    # Agent 0 loses every announcement, so only anti-entropy can bring it entries; its
    # retries are short so that >1,100 failures against the dead peer take seconds.
    fast_retry = dataclasses.replace(
        _config(0, gossip_loss=1.0), retry_min_s=1e-4, retry_max_s=1e-3
    )
    a0 = await cluster.start(0, fast_retry)
    await cluster.start(1, _config(1))
    dead = await cluster.start(2, _config(2))
    await cluster.joined_hub()
    await cluster.converged()
    # Agent 2's host stays connected but its replica refuses every request: a dead peer.
    await dead.replica.stop()
    del cluster.agents[2]  # still stopped by the exit stack; not expected to converge
    peer = dead.host.peer_id
    a0.replica.request_sync(peer)
    async with asyncio.timeout(CONVERGE_S * 4):
        await a0.replica.wait_until(lambda: a0.replica.failures(peer) > DEAD_PEER_FAILURES)
    assert a0.replica.state.value == "running"
    await cluster.write([1], per_agent=5)
    await cluster.converged()
    # Agent 0 dropped every announcement, so the 5 entries it now holds came by
    # anti-entropy. (Not `pulled_appended >= 5`: a round that stored entries and then
    # failed on a later range counts as failed, its entries uncounted; seen once.)
    stats = a0.replica.stats()
    assert stats.gossip_appended == 0
    assert stats.gossip_dropped == stats.gossip_received >= 5
    assert stats.rounds_crashed == 0


#: No heartbeat within a test (no mesh repair, no IHAVE gossip) and no periodic
#: anti-entropy: an entry reaches a peer only by an announcement or a push.
QUIET_NET = {"heartbeat_interval_s": 3600, "mesh_degree": 1, "mesh_degree_low": 1,
             "mesh_degree_high": 1}  # fmt: skip
QUIET_REPLICA = ReplicaConfig(anti_entropy_interval_s=3600.0)


@pytest.mark.parametrize("flood", [True, False], ids=["flood", "mesh-only"])
async def test_a_pushed_entry_reaches_peers_outside_the_mesh_without_a_heartbeat(
    cluster: Cluster, flood: bool
) -> None:
    """A payment-like entry announced and pushed (as a device does with its
    payment) is in every replica without a heartbeat or an anti-entropy round,
    though the author's gossipsub mesh holds fewer peers than the site: with
    flood publishing the announcement reaches them all and nothing is pushed;
    without it the push goes to exactly the peers outside the mesh."""
    net = NetConfig(flood_publish=flood, **QUIET_NET)  # type: ignore[arg-type]
    for i in range(5):
        await cluster.start(i, QUIET_REPLICA, net=net)
    await cluster.joined_hub()
    author = cluster.agents[4]
    peers = {a.host.peer_id for a in cluster.agents.values() if a is not author}
    for peer in peers:  # connected, and subscribed to the log topic as the author sees it
        await author.host.wait_for_peer(peer, cluster.topic, timeout_s=CONVERGE_S)
    mesh = author.host.mesh_peers(author.replica.topic)
    assert len(mesh) < len(peers)  # the premise: the mesh does not hold the site

    entry = await _append(author.writer)
    cluster.written.append(entry)
    await author.replica.publish([entry])
    pushed = await author.replica.push([entry])
    assert pushed == (0 if flood else len(peers - mesh))
    await cluster.converged()
    for agent in cluster.agents.values():
        if agent is not author:
            stats = agent.replica.stats()
            assert stats.pulled_appended == 0
            assert stats.gossip_appended + stats.push_appended == 1
