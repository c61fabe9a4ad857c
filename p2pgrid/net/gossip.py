"""py-libp2p's GossipSub as p2pgrid runs it: fewer RPCs per message, and counters.

Measured with ``bench/net_latency.py`` (10 agent processes, 1 message/s each, on
two shared cores, see docs/performance.md): py-libp2p 0.8.1 answers *every*
message it receives with an IDONTWANT control RPC to each of its mesh peers, and
puts its signed peer record (an ed25519-signed envelope the receiver checks) in
every RPC. For p2pgrid's small envelopes (a few hundred bytes) that doubles the
RPCs on the wire and adds a signature check to each. When the machine is busy,
an agent that needs more CPU than it gets falls behind without bound: its
32-slot outbound queues fill (priority control RPCs first, so messages are the
ones dropped) and the rest arrives tens of seconds late.

:class:`Gossip` changes three things, all optional parts of gossipsub:

- it sends IDONTWANT only for messages of at least ``idontwant_min_bytes``
  (go-libp2p's ``IDontWantMessageThreshold``, 1 KiB: the same rule);
- it puts its signed peer record only in the first RPC to each peer of a
  connection (``sender_record_once``), not in every one;
- it sends the messages it publishes itself to every peer subscribed to the
  topic, not only to its mesh (``flood_publish``: gossipsub v1.1's flood
  publishing, go-libp2p's default). py-libp2p 0.8.1 sends them to the mesh only
  (D peers), so with more subscribers than the mesh holds the others hear of a
  message only through a mesh peer's relay or the IHAVE of a later heartbeat
  (1 s apart). Relays still go to the mesh only: a message costs its author
  one RPC per subscriber, and the network as much as before.

It also counts what leaves (see :class:`GossipCounters`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2

#: Smallest message that is worth an IDONTWANT to every mesh peer (go-libp2p's
#: default threshold).
IDONTWANT_MIN_BYTES = 1024


@dataclass
class GossipCounters:
    """What one host's gossipsub router sent (cumulative)."""

    #: RPCs handed to peers' outbound queues (messages and control).
    rpcs_queued: int = 0
    #: RPCs a full outbound queue (32 slots per peer in py-libp2p) dropped.
    rpcs_dropped: int = 0
    #: Messages forwarded or published to mesh peers (one per peer).
    messages_sent: int = 0
    idontwant_sent: int = 0
    #: RPCs that carried this host's signed peer record.
    sender_records: int = 0
    #: Messages too small for an IDONTWANT (none was sent for them).
    idontwant_skipped: int = 0


class Gossip(GossipSub):
    """GossipSub that sends IDONTWANT only for large messages and counts its RPCs."""

    def __init__(
        self,
        *args: Any,
        idontwant_min_bytes: int = IDONTWANT_MIN_BYTES,
        sender_record_once: bool = True,
        flood_publish: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.idontwant_min_bytes = idontwant_min_bytes
        self.sender_record_once = sender_record_once
        self.flood_publish = flood_publish
        self.counters = GossipCounters()
        # Peers that got our signed peer record since they (last) connected.
        self._record_sent: set[ID] = set()
        # Whether the message publish() is forwarding is large enough for an
        # IDONTWANT. py-libp2p calls _emit_idontwant_for_message from publish()
        # before its first await, so no other message can come in between.
        self._idontwant_due = True

    def mesh_size(self, topic: str) -> int:
        """How many peers this host forwards ``topic``'s messages to."""
        return len(self.mesh.get(topic, ()))

    def first_hop(self, topic: str) -> frozenset[ID]:
        """The peers a message this host publishes on ``topic`` goes to at once: its
        mesh, or with ``flood_publish`` every gossipsub peer subscribed to the topic."""
        peers = set(self.mesh.get(topic, ()))
        if self.flood_publish:
            peers.update(self._subscribers(topic))
        return frozenset(peers)

    def _subscribers(self, topic: str) -> Iterator[ID]:
        if self.pubsub is None:
            return
        for peer in self.pubsub.peer_topics.get(topic, ()):
            if peer in self.peer_protocol:  # speaks gossipsub (or floodsub) with us
                yield peer

    def _get_peers_to_send(
        self,
        topic_ids: Iterable[str],
        msg_forwarder: ID,
        origin: ID,
        msg_id: bytes | None = None,
    ) -> Iterable[ID]:
        topics = list(topic_ids)
        peers = set(super()._get_peers_to_send(topics, msg_forwarder, origin, msg_id))
        own = self.pubsub is not None and origin == self.pubsub.my_id
        if not (self.flood_publish and own):
            return peers  # a relay: the mesh, as gossipsub has it
        for topic in topics:
            peers.update(self._subscribers(topic))
        peers.discard(origin)
        if msg_id is not None:  # a peer that said IDONTWANT still does not get it
            peers = {p for p in peers if msg_id not in self.dont_send_message_ids.get(p, ())}
        return peers

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        self._idontwant_due = len(pubsub_msg.data) >= self.idontwant_min_bytes
        await super().publish(msg_forwarder, pubsub_msg)

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        if not self._idontwant_due:
            self.counters.idontwant_skipped += 1
            return
        await super()._emit_idontwant_for_message(msg_id, topic_ids)

    async def emit_idontwant(self, msg_ids: list[bytes], to_peer: ID) -> None:
        self.counters.idontwant_sent += 1
        await super().emit_idontwant(msg_ids, to_peer)

    def send_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, priority: bool = False) -> None:
        if self.sender_record_once and rpc.HasField("senderRecord"):
            if peer_id in self._record_sent:
                rpc = _without_sender_record(rpc)  # the same RPC object goes to other peers
            else:
                self._record_sent.add(peer_id)
        self.counters.rpcs_queued += 1
        self.counters.sender_records += rpc.HasField("senderRecord")
        self.counters.messages_sent += len(rpc.publish)
        super().send_rpc(peer_id, rpc, priority)

    def remove_peer(self, peer_id: ID) -> None:
        self._record_sent.discard(peer_id)
        super().remove_peer(peer_id)

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        self.counters.rpcs_dropped += 1
        super()._handle_dropped_rpc(peer_id, rpc, reason)


def _without_sender_record(rpc: rpc_pb2.RPC) -> rpc_pb2.RPC:
    copy = rpc_pb2.RPC()
    copy.CopyFrom(rpc)
    copy.ClearField("senderRecord")
    return copy
