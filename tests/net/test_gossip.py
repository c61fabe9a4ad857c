"""p2pgrid's gossipsub tuning on real hosts in this process (p2pgrid.net.gossip)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.host.exceptions import StreamFailure
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.pubsub.pb.rpc_pb2 import RPC

from p2pgrid.net import PeerHost, Subscription, Topic, TrioBridge
from p2pgrid.net.gossip import IDONTWANT_MIN_BYTES
from p2pgrid.net.node import TrioNode
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
    # The hub relays left's messages to right: without first-hop records (right
    # may have connected to left, whose records would then tag it).
    hub = await make_host(0, first_hop_claims=False)
    left = await make_host(1, bootstrap=hub.addrs, first_hop_claims=False)
    right = await make_host(2, bootstrap=hub.addrs, first_hop_claims=False)
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


async def connected(host: PeerHost, others: list[PeerHost], topic: Topic) -> None:
    for other in others:
        await host.wait_for_peer(other.peer_id, topic, timeout_s=WAIT_S)


async def test_relays_skip_the_peers_the_author_sent_its_message_to(
    make_host: MakeHost, topic: Topic
) -> None:
    """First-hop records: three members connected to each other relay nothing to
    each other (each got the author's copy), where py-libp2p relays to the mesh."""
    x = await make_host(0)
    y = await make_host(1, bootstrap=x.addrs)
    z = await make_host(2, bootstrap=x.addrs + y.addrs)
    for host, others in ((x, [y, z]), (y, [x, z]), (z, [x, y])):
        await connected(host, others, topic)
        await mesh_of(host, 2)  # the premise: each would relay to the other one
    assert z.first_hop_peers(topic) == {x.peer_id, y.peer_id}
    subs = [x.subscribe(topic), y.subscribe(topic)]

    await z.publish(topic, Note(5, "invoice"))
    for sub in subs:
        assert (await take(sub)).n == 5  # the record is not delivered: only the Note
    for relay in (x, y):
        stats = relay.stats()
        assert stats.relays_skipped == 1  # to the other one (never to the author)
        assert stats.messages_sent == 0


async def test_a_member_not_connected_to_the_author_still_gets_the_relay(
    make_host: MakeHost, topic: Topic
) -> None:
    """left - hub - right, left and right not connected: left's record tags the hub
    only, so the hub relays to right as before."""
    line = {"target_peers": 1}  # no peer exchange dial: left and right stay apart
    hub = await make_host(0, **line)
    left = await make_host(1, bootstrap=hub.addrs, **line)
    right = await make_host(2, bootstrap=hub.addrs, **line)
    await connected(hub, [left, right], topic)
    await connected(left, [hub], topic)
    assert left.first_hop_peers(topic) == {hub.peer_id}
    sub = right.subscribe(topic)

    await left.publish(topic, Note(6, "payment"))
    assert (await take(sub)).n == 6
    stats = hub.stats()
    assert stats.relays_skipped == 0
    assert stats.messages_sent == 1


async def test_an_own_copy_a_full_queue_dropped_is_named_in_an_ihave_to_that_peer(
    make_host: MakeHost, topic: Topic, bridge: TrioBridge
) -> None:
    """A tagged peer gets no relay, so when the author's own copy to it is dropped
    (a full outbound queue) the author names it in an IHAVE at the next heartbeat."""
    author = await make_host(0)
    peer = await make_host(1, bootstrap=author.addrs)
    await connected(author, [peer], topic)
    sub = peer.subscribe(topic)
    await author.publish(topic, Note(7, "invoice"))
    await take(sub)
    node = author._node
    assert node is not None
    gossip = node.gossipsub
    (message,) = gossip.mcache.msgs.values()
    before = author.stats()

    async def drop() -> None:  # what py-libp2p does when the peer's 32-slot queue is full
        gossip._handle_dropped_rpc(ID.from_base58(peer.peer_id), RPC(publish=[message]), "full")

    await bridge.run(drop)

    async def gossiped() -> bool:
        return author.stats().own_drops_gossiped == 1

    await wait_until(gossiped, timeout_s=WAIT_S, what="an IHAVE of the dropped copy")
    assert author.stats().ihave_sent == before.ihave_sent + 1


async def test_a_restarted_peer_is_grafted_back_at_once_despite_an_old_backoff(
    make_host: MakeHost, topic: Topic, bridge: TrioBridge
) -> None:
    """A peer that pruned us (its heartbeat does when its mesh is over D_high) and
    then restarts with the same peer id is taken back into our mesh when it
    reconnects, not refused for the rest of the backoff it asked for (60 s)."""
    hub = await make_host(0)
    peer = await make_host(1, bootstrap=hub.addrs)
    await connected(hub, [peer], topic)
    hub_id, peer_id = ID.from_base58(hub.peer_id), ID.from_base58(peer.peer_id)
    hub_node, peer_node = hub._node, peer._node
    assert hub_node is not None
    assert peer_node is not None

    async def prune() -> None:  # what the peer's heartbeat sends when its mesh is too big
        await peer_node.gossipsub.emit_prune(topic.name, hub_id, False, False)

    await bridge.run(prune)

    async def backed_off() -> bool:
        return peer_id in hub_node.gossipsub.back_off.get(topic.name, {})

    await wait_until(backed_off, timeout_s=WAIT_S, what="the hub's backoff for the peer")
    await peer.stop()

    async def gone() -> bool:
        return peer_id not in hub_node.pubsub.peers

    await wait_until(gone, timeout_s=WAIT_S, what="the hub noticing the peer left")
    restarted = await make_host(1, bootstrap=hub.addrs)
    assert restarted.peer_id == peer.peer_id

    async def meshed() -> bool:
        return restarted.peer_id in hub.mesh_peers(topic)

    await wait_until(meshed, timeout_s=WAIT_S, what="the restarted peer in the hub's mesh")
    assert hub.stats().backoffs_forgiven == 1
    sub = restarted.subscribe(topic)
    await hub.publish(topic, Note(8, "after restart"))
    assert (await take(sub)).n == 8

    # A peer that lies: it prunes again and reconnects to dodge the backoff. Once
    # per backoff period only: this time the backoff outlives its departure.
    peer_node = restarted._node
    assert peer_node is not None
    await bridge.run(prune)
    await wait_until(backed_off, timeout_s=WAIT_S, what="the hub's second backoff")
    await restarted.stop()
    await wait_until(gone, timeout_s=WAIT_S, what="the hub noticing the peer left again")
    assert peer_id in hub_node.gossipsub.back_off[topic.name]
    assert hub.stats().backoffs_forgiven == 1


async def test_a_peer_the_heartbeat_prunes_is_backed_off_here_too(
    make_host: MakeHost, topic: Topic
) -> None:
    """The heartbeat that prunes a mesh over D_high records a backoff for the pruned
    peer (as go-libp2p does), so the next heartbeat, its mesh under D_low, does not
    GRAFT it back at once: the pruned peer would refuse that GRAFT and penalise it
    as a flood (a GRAFT within 10 s of a PRUNE)."""
    hub = await make_host(0, mesh_degree=1, mesh_degree_low=1, mesh_degree_high=1)
    leaves = [await make_host(i, bootstrap=hub.addrs) for i in (1, 2)]
    await connected(hub, leaves, topic)
    hub_node = hub._node
    assert hub_node is not None
    leaf_nodes = [leaf._node for leaf in leaves]
    hub_id = ID.from_base58(hub.peer_id)

    async def pruned() -> list[PeerHost] | None:  # the leaves the hub sent a PRUNE
        return [
            leaf
            for leaf, node in zip(leaves, leaf_nodes, strict=True)
            if node is not None and hub_id in node.gossipsub.back_off.get(topic.name, {})
        ] or None

    # Both leaves GRAFT the hub (their meshes are empty); its heartbeat prunes one.
    (leaf,) = await wait_until(pruned, timeout_s=WAIT_S, what="a PRUNE from the hub")
    assert ID.from_base58(leaf.peer_id) in hub_node.gossipsub.back_off.get(topic.name, {})
    assert leaf.peer_id not in hub.mesh_peers(topic)


def _failing_pubsub_opens(node: TrioNode, failures: list[Exception]) -> list[ID]:
    """Make ``node``'s pubsub stream opens raise ``failures`` one after the other (as
    py-libp2p's ``BasicHost.new_stream`` does when a negotiation times out), then
    open as usual; returns the peers whose opens failed."""
    real = node.host.new_stream
    failed: list[ID] = []

    async def new_stream(peer_id: ID, protocol_ids: Sequence[TProtocol]) -> INetStream:
        if failures and any("meshsub" in p for p in protocol_ids):
            failed.append(peer_id)
            raise failures.pop(0)
        return await real(peer_id, protocol_ids)

    node.host.new_stream = new_stream  # type: ignore[method-assign]
    return failed


def _stream_failure(cause: str) -> StreamFailure:
    try:
        raise StreamFailure("failed to open a stream") from MultiselectClientError(cause)
    except StreamFailure as exc:
        return exc


async def test_a_pubsub_stream_whose_negotiation_timed_out_is_opened_again(
    make_host: MakeHost, topic: Topic
) -> None:
    """py-libp2p 0.8.1 gave up on a pubsub stream whose negotiation timed out (a
    starved start) although the peer stayed connected: neither side then sent the
    other anything on the topic (one had no stream, the other no subscription on
    record). It is opened again while the peer stays connected."""
    left = await make_host(0)
    assert left._node is not None
    failed = _failing_pubsub_opens(
        left._node, [_stream_failure("response timed out after 30s, protocols tried: [...]")]
    )
    right = await make_host(1, bootstrap=left.addrs)
    await connected(left, [right], topic)
    await connected(right, [left], topic)
    assert [str(peer) for peer in failed] == [right.peer_id]
    assert left.stats().stream_open_retries == 1
    left_sub, right_sub = left.subscribe(topic), right.subscribe(topic)
    await left.publish(topic, Note(1, "left to right"))
    assert (await take(right_sub)).n == 1
    await right.publish(topic, Note(2, "right to left"))
    assert (await take(left_sub)).n == 2


async def test_a_peer_that_refuses_gossipsub_is_not_asked_again(
    make_host: MakeHost, topic: Topic, bridge: TrioBridge
) -> None:
    left = await make_host(0)
    right = await make_host(1, bootstrap=left.addrs)
    await connected(left, [right], topic)
    node = left._node
    assert node is not None
    refusal = _stream_failure("protocols not supported: tried [...], timeout=30s")
    timeout = _stream_failure("response timed out after 30s, protocols tried: [...]")
    _failing_pubsub_opens(node, [refusal, timeout])
    peer = ID.from_base58(right.peer_id)
    del node.pubsub.peers[peer]  # so that a new open is tried (no retry task is started)

    async def open_once() -> type[Exception]:
        try:
            await node.pubsub._handle_new_peer(peer)
        except Exception as exc:  # noqa: BLE001 - the test reads its type
            return type(exc)
        raise AssertionError("the injected failure did not happen")

    assert await bridge.run(open_once) is StreamFailure  # final: not retried
    assert left.stats().stream_open_retries == 0
    assert await bridge.run(open_once) is SwarmException  # the retry loop's kind
    assert left.stats().stream_open_retries == 1
