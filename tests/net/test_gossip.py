"""p2pgrid's gossipsub tuning on real hosts in this process (p2pgrid.net.gossip)."""

from __future__ import annotations

import asyncio

from p2pgrid.net import PeerHost, Subscription, Topic
from p2pgrid.net.gossip import IDONTWANT_MIN_BYTES
from p2pgrid.poll import wait_until
from tests.net.conftest import MakeHost, Note

WAIT_S = 10.0


async def mesh_of(host: PeerHost, size: int) -> None:
    async def formed() -> bool:
        return host.stats().mesh_peers >= size

    await wait_until(formed, timeout_s=WAIT_S, what=f"{host.name}'s mesh of {size}")


async def take(sub: Subscription) -> Note:
    async with asyncio.timeout(WAIT_S):
        return (await sub.get()).decode(Note)


async def test_idontwant_only_for_large_messages_and_one_sender_record_per_peer(
    make_host: MakeHost, topic: Topic
) -> None:
    hub = await make_host(0)
    left = await make_host(1, bootstrap=hub.addrs)
    right = await make_host(2, bootstrap=hub.addrs)
    await mesh_of(hub, 2)
    await mesh_of(left, 1)
    sub = right.subscribe(topic)

    for n in range(10):  # one envelope each (a burst would be batched into a large one)
        await left.publish(topic, Note(n, "x" * 100))
        assert (await take(sub)).n == n
    stats = hub.stats()
    assert stats.idontwant_sent == 0  # py-libp2p alone sends one per message and mesh peer
    assert stats.rpcs_queued >= 10
    # py-libp2p alone puts the signed record in every RPC; here only in the first to a peer.
    assert 1 <= stats.sender_records <= 2
    assert stats.rpcs_dropped == 0

    await left.publish(topic, Note(99, "x" * IDONTWANT_MIN_BYTES))
    assert (await take(sub)).n == 99
    assert hub.stats().idontwant_sent >= 1  # large messages still get them


#: No heartbeat within a test: neither mesh repair nor IHAVE gossip can carry a message.
NO_HEARTBEAT = {"heartbeat_interval_s": 3600, "mesh_degree": 1, "mesh_degree_low": 1,
                "mesh_degree_high": 1, "target_peers": 1}  # fmt: skip


async def test_own_messages_reach_every_subscriber_at_once_not_only_the_mesh(
    make_host: MakeHost, topic: Topic
) -> None:
    """Flood publishing: the author's message goes to every peer subscribed to the
    topic, so one outside its mesh needs no relay and no heartbeat's gossip."""
    hub = await make_host(0, **NO_HEARTBEAT)
    leaves = [await make_host(i, bootstrap=hub.addrs, **NO_HEARTBEAT) for i in (1, 2, 3)]
    subs = [leaf.subscribe(topic) for leaf in leaves]
    for leaf in leaves:
        await hub.wait_for_peer(leaf.peer_id, topic, timeout_s=WAIT_S)
    ids = {leaf.peer_id for leaf in leaves}
    # The premise: the mesh (built at the heartbeat) holds fewer than the subscribers.
    assert len(hub.mesh_peers(topic)) < len(ids)
    assert hub.first_hop_peers(topic) == ids

    await hub.publish(topic, Note(7, "payment"))
    for sub in subs:
        assert (await take(sub)).n == 7  # leaves are connected to the hub alone: no relay


async def test_without_flood_publishing_the_first_hop_is_the_mesh(
    make_host: MakeHost, topic: Topic
) -> None:
    hub = await make_host(0, flood_publish=False, **NO_HEARTBEAT)
    leaves = [await make_host(i, bootstrap=hub.addrs, **NO_HEARTBEAT) for i in (1, 2)]
    for leaf in leaves:
        await hub.wait_for_peer(leaf.peer_id, topic, timeout_s=WAIT_S)
    assert hub.first_hop_peers(topic) == hub.mesh_peers(topic)
    assert len(hub.first_hop_peers(topic)) < len(leaves)
