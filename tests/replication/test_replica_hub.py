"""Replication over two HostHubs of three devices each (real py-libp2p hosts, one
shared bridge): each device keeps its own store and replica, its host is a view
on its hub. Announcements reach the hub's other devices by local delivery and
the other hub's by gossip; entries written offline spread by anti-entropy, whose
sync requests name their device (over a stream, or a call inside a hub)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from p2pgrid.ledger import Author, LogStore, LogWriter
from p2pgrid.net import DeviceKey, HostHub, NetConfig, PeerHost, TrioBridge
from p2pgrid.replication import NetReplica, ReplicaConfig, log_net_topic
from tests.ledger.ledger_factory import Site
from tests.replication.test_replica_net import _append

pytestmark = pytest.mark.slow

#: Deadline for every replica to reach the reference digest.
CONVERGE_S = 45.0
HUBS = ((0, 1, 2), (3, 4, 5))


async def test_devices_of_two_hubs_converge_by_local_delivery_gossip_and_sync(
    site: Site, bridge: TrioBridge, tmp_path: Path
) -> None:
    written = []
    stores: dict[int, LogStore] = {}
    replicas: dict[int, NetReplica] = {}
    async with AsyncExitStack() as stack:
        bootstrap: tuple[str, ...] = ()
        for indices in HUBS:
            keys = [DeviceKey(site.identity, i, site.device(i)) for i in indices]
            hub = HostHub(NetConfig(bootstrap=bootstrap), keys, bridge=bridge)
            stack.push_async_callback(hub.stop)
            for key in keys:
                i = key.device_index
                store = await site.open(tmp_path / f"d{i}.sqlite", f"d{i}")
                stack.push_async_callback(store.close)
                writer = LogWriter(store, site.device(i), Author.device(i))
                written.append(await _append(writer))  # offline: only a sync spreads it
                topic = log_net_topic(store.roster)
                host = PeerHost(NetConfig(), key, [topic], hub=hub, name=f"d{i}")
                await host.start()
                stack.push_async_callback(host.stop)
                config = ReplicaConfig(anti_entropy_interval_s=1.0, peers_per_round=2, seed=i)
                replica = NetReplica(store, host, config, topic=topic)
                await replica.start()
                stack.push_async_callback(replica.stop)
                stores[i], replicas[i] = store, replica
            bootstrap = hub.addrs
        for i, replica in replicas.items():  # announced: local delivery and gossip
            entry = await _append(LogWriter(stores[i], site.device(i), Author.device(i)))
            written.append(entry)
            await replica.publish([entry])
        async with await site.open(tmp_path / "reference.sqlite") as ref:
            await ref.ingest_many([e.raw for e in sorted(written, key=lambda e: (e.author, e.seq))])
            digest = ref.digest()
        try:
            async with asyncio.timeout(CONVERGE_S), asyncio.TaskGroup() as tg:
                for i, replica in replicas.items():
                    store = stores[i]
                    tg.create_task(replica.wait_until(lambda s=store: s.digest() == digest))
        except TimeoutError:
            lagging = {i: s.heads().total for i, s in stores.items() if s.digest() != digest}
            pytest.fail(f"after {CONVERGE_S}s: {lagging}")
        stats = {i: r.stats() for i, r in replicas.items()}
        # Both paths carried entries (which one carries an entry first is a race).
        assert sum(s.gossip_appended for s in stats.values()) > 0
        assert sum(s.pulled_appended for s in stats.values()) > 0
