"""One store, one replica, two hosts: a site gateway's devices over REAL py-libp2p hosts.

Devices 0 and 1 of a gateway share one LogStore (one SQLite file) and one
NetReplica, which runs on device 0's host and answers sync requests on device
1's host too (:meth:`NetReplica.serve_on`); each writes with its own LogWriter.
A peer (device 2, its own store) that asks device 1's host gets the
whole shared log, and what it pushes there lands in the shared store; the
shared replica never syncs with its own other host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from p2pgrid.agent.gateway import SiteLog
from p2pgrid.ledger import (
    Author,
    Entry,
    LedgerError,
    LogStore,
    LogWriter,
    MeterReading,
    Replicator,
)
from p2pgrid.net import DeviceKey, HostHub, NetConfig, PeerHost, TrioBridge
from p2pgrid.replication import (
    HostTransport,
    NetReplica,
    NodeSpec,
    ReplicaConfig,
    log_net_topic,
)
from tests.ledger.ledger_factory import T0_MS, Site

JOIN_S = 20.0
#: Long enough that no periodic round runs during the test: every sync is asked for.
QUIET = ReplicaConfig(anti_entropy_interval_s=3600.0, seed=1)


async def _append(writer: LogWriter) -> Entry:
    seq = writer.store.next_position(writer.author)[0]
    ts = T0_MS + 60_000 * seq
    return await writer.append(MeterReading(ts, 60, 5, 50), period=1, timestamp_ms=ts)


@pytest.fixture
async def parts() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def _host(
    parts: AsyncExitStack, site: Site, bridge: TrioBridge, store: LogStore, index: int, boot: str
) -> PeerHost:
    host = PeerHost(
        NetConfig(bootstrap=(boot,) if boot else ()),
        DeviceKey(site.identity, index, site.device(index)),
        [log_net_topic(store.roster)],
        bridge=bridge,
        name=f"dev{index}",
    )
    await host.start()
    parts.push_async_callback(host.stop)
    return host


async def test_a_peer_gets_the_shared_log_from_either_host(
    site: Site, bridge: TrioBridge, tmp_path: Path, parts: AsyncExitStack
) -> None:
    shared = await site.open(tmp_path / "site.gateway.db", "gateway")
    parts.push_async_callback(shared.close)
    host0 = await _host(parts, site, bridge, shared, 0, "")
    host1 = await _host(parts, site, bridge, shared, 1, host0.addrs[0])
    replica = NetReplica(shared, host0, QUIET, topic=log_net_topic(shared.roster))
    await replica.start()
    parts.push_async_callback(replica.stop)
    replica.serve_on(host1)
    writers = [LogWriter(shared, site.device(i), Author.device(i)) for i in (0, 1)]
    for writer in writers:
        for _ in range(3):
            await _append(writer)

    # The peer: its own store and host, and the sync protocol driven by hand
    # (no replica of its own: what it holds came through the calls below).
    peer_store = await site.open(tmp_path / "peer.db", "peer")
    parts.push_async_callback(peer_store.close)
    peer_host = await _host(parts, site, bridge, peer_store, 2, host1.addrs[0])
    topic = log_net_topic(shared.roster)
    peer = Replicator(peer_store, HostTransport(peer_host, topic.name, request_timeout_s=JOIN_S))
    await peer_host.wait_for_peer(host1.peer_id, topic, timeout_s=JOIN_S)

    # Device 1's host answers from the shared store: both devices' entries.
    report = await peer.sync_with(host1.peer_id)
    assert report.appended == 6
    assert peer_store.digest() == shared.digest()
    # A push to device 1's host lands in the shared store, as one to device 0's would.
    mine = await _append(LogWriter(peer_store, site.device(2), Author.device(2)))
    pushed = await peer.push(host1.peer_id, [mine])
    assert pushed.appended == 1
    assert shared.heads()[Author.device(2)].seq == mine.seq
    assert replica.stats().requests_served >= 2  # counted by the one replica
    # The shared replica's pushes never go to its own other host.
    await host0.wait_for_peer(host1.peer_id, topic, timeout_s=JOIN_S)
    await host0.wait_for_peer(peer_host.peer_id, topic, timeout_s=JOIN_S)
    assert await replica.push([mine], [host1.peer_id]) == 0


async def test_serve_on_needs_a_running_replica(
    site: Site, bridge: TrioBridge, tmp_path: Path, parts: AsyncExitStack
) -> None:
    shared = await site.open(tmp_path / "site.gateway.db", "gateway")
    parts.push_async_callback(shared.close)
    host0 = await _host(parts, site, bridge, shared, 0, "")
    replica = NetReplica(shared, host0, QUIET, topic=log_net_topic(shared.roster))
    with pytest.raises(LedgerError, match="serve_on called in state new"):
        replica.serve_on(host0)


async def test_a_hubs_devices_answer_from_the_shared_store_and_are_never_synced_with(
    site: Site, bridge: TrioBridge, tmp_path: Path, parts: AsyncExitStack
) -> None:
    """A gateway's way: devices 0 and 1 are views on one HostHub (one peer id),
    one store, the replica on device 0's view (the anchor) and :class:`SiteLog`
    serving it on device 1's view. A peer that asks device 1's address gets the
    shared log; the replica counts neither of its hub's devices as a peer."""
    shared, hub, site_log, specs = await _gateway_of_two(site, bridge, tmp_path, parts)
    hosts = []
    for spec in specs:
        host = await site_log.host_for(parts, spec)  # the anchor's: the site's parts
        replica = await site_log.serve(spec, host)
        hosts.append(host)
    assert site_log.anchor == "d0"
    writers = [LogWriter(shared, site.device(i), Author.device(i)) for i in (0, 1)]
    for writer in writers:
        await _append(writer)

    peer_store = await site.open(tmp_path / "peer.db", "peer")
    parts.push_async_callback(peer_store.close)
    peer_host = await _host(parts, site, bridge, peer_store, 2, hub.addrs[0])
    topic = log_net_topic(shared.roster)
    peer = Replicator(peer_store, HostTransport(peer_host, topic.name, request_timeout_s=JOIN_S))
    await peer_host.wait_for_peer(hosts[1].address, topic, timeout_s=JOIN_S)
    report = await peer.sync_with(hosts[1].address)  # device 1's address, not the anchor's
    assert report.appended == 2
    assert peer_store.digest() == shared.digest()
    own = {h.address for h in hosts}
    assert own.isdisjoint(replica.periodic_peers())
    assert await replica.push([], [hosts[1].address]) == 0


async def test_a_hubs_later_device_is_never_the_anchors_peer_even_before_it_is_served(
    site: Site, bridge: TrioBridge, tmp_path: Path, parts: AsyncExitStack
) -> None:
    """The hub announces device 1 to the anchor's view as device 1's host
    attaches, before :class:`SiteLog` serves the replica on it: the replica knew
    its address from its start, so it never syncs with it (nor counts it as a
    peer) in between, and a sync it is asked for is not run."""
    _, _, site_log, specs = await _gateway_of_two(site, bridge, tmp_path, parts)
    anchor = await site_log.host_for(parts, specs[0])
    replica = await site_log.serve(specs[0], anchor)
    later = await site_log.host_for(parts, specs[1])  # joined: the anchor's view is told
    assert later.address in {p.peer_id for p in anchor.peers()}
    assert later.address not in replica.periodic_peers()
    replica.request_sync(later.address)
    await site_log.serve(specs[1], later)
    assert replica.failures(later.address) == 0
    assert replica.stats().rounds == 0  # nothing was run with it (QUIET: no periodic round)


async def _gateway_of_two(
    site: Site, bridge: TrioBridge, tmp_path: Path, parts: AsyncExitStack
) -> tuple[LogStore, HostHub, SiteLog, list[NodeSpec]]:
    """A gateway's parts for devices 0 and 1 of ``site``: the shared store, one
    HostHub, the SiteLog and each device's spec on the hub (no host started)."""
    shared = await site.open(tmp_path / "site.gateway.db", "gateway")
    parts.push_async_callback(shared.close)
    keys = [DeviceKey(site.identity, i, site.device(i)) for i in (0, 1)]
    hub = HostHub(NetConfig(), keys, bridge=bridge, name="hub")
    parts.push_async_callback(hub.stop)
    # The site's parts (the anchor's view, the replica) close before the hub and the store.
    site_parts = await parts.enter_async_context(AsyncExitStack())
    site_log = SiteLog(tmp_path / "site.gateway.db", shared, ("d0", "d1"), site_parts)
    specs = [
        NodeSpec(
            name=f"d{key.device_index}",
            db_path=site_log.path,
            site=site.identity,
            net=hub.config,
            key=key,
            replica=QUIET,
            bridge=bridge,
            hub=hub,
        )
        for key in keys
    ]
    return shared, hub, site_log, specs
