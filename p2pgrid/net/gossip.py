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

And it tells the relays whom its own message already reached
(``first_hop_claims``): a host that publishes puts in the envelope a net-layer
record of kind :data:`KIND_FIRST_HOP`, the tags (:func:`peer_tag`) of the
peers it sends the message to at once (with flood publishing every connected
subscriber); a host that relays the message sends it to none of the tagged
peers. With flood publishing a site whose members are all connected to each
other then relays nothing (each of them got the author's copy), and a member
not connected to the author still gets every relay it got before (it is not
tagged). py-libp2p, like every gossipsub router, relays to its whole mesh:
~5 copies per member, ~50 for one entry among 11 members (docs/performance.md).
Receivers that do not know the record ignore it (net-layer kinds are not
delivered to applications, docs/protocol-net.md section 4). A tagged peer
whose copy the author's full outbound queue dropped is named in an IHAVE from
the author at the next heartbeat, since no relay brings it.

It forgives a departed peer its prune backoff, once per backoff period
(:meth:`Gossip.remove_peer`): py-libp2p keeps ``back_off[topic][peer]`` when a
peer disconnects, so an agent restarted with the same peer id within 60 s of
having pruned us (its heartbeat does when its mesh is over D_high) had its
GRAFT refused, the backoff renewed for 60 s more and a PRUNE sent back: it
stayed out of our mesh for a minute or more and heard our relays only through
the IHAVE gossip of a heartbeat (docs/protocol-net.md, docs/reliability.md).
py-libp2p already drops the peer's score and GRAFT-flood record on disconnect.
And a peer its heartbeat prunes is backed off here too (:meth:`Gossip.mesh_heartbeat`,
as go-libp2p does): py-libp2p recorded none, so a heartbeat whose mesh fell
under D_low could GRAFT the peer it had just pruned, which that peer refuses
and penalises as a GRAFT flood (within 10 s of a PRUNE).

It also counts what leaves (see :class:`GossipCounters`).

:class:`SitePubsub` (py-libp2p's ``Pubsub``) opens its pubsub stream to a newly
connected peer again when the first open fails in protocol negotiation.
py-libp2p 0.8.1 retries the open, while the peer stays connected, only when it
fails with ``SwarmException`` or ``StreamClosed``; a multistream negotiation
that times out or whose read fails (a host starved of CPU at its start) raises
``StreamFailure``, which it treats as final: the peer stayed connected but was
never registered, for the life of the connection. Each side sends its
subscriptions on the stream it opens, so the pair was half registered: the side
whose open failed knew the peer's subscriptions but never sent it anything
(not in ``peers``: every message skipped, and queued for it in vain), and the
peer had it in ``peers`` with no subscription on record (never in its mesh,
never flood-published to). Each message between the two had to find a third
member that relays it, or waited for anti-entropy.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from libp2p.host.exceptions import StreamFailure
from libp2p.network.exceptions import SwarmException
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from p2pgrid.net.envelope import parse
from p2pgrid.net.errors import EnvelopeError

#: Smallest message that is worth an IDONTWANT to every mesh peer (go-libp2p's
#: default threshold).
IDONTWANT_MIN_BYTES = 1024
#: Net-layer record kind of an envelope published on a topic: the tags of the
#: peers its author's host sent it to at once (docs/protocol-net.md section 4).
KIND_FIRST_HOP = 0x0005
#: Bytes of a peer's tag: the first bytes of SHA-256 of its binary peer id.
TAG_BYTES = 8
#: Most tags in one first-hop record (a host with more peers tags these only:
#: the others get the relays, as without the record).
MAX_FIRST_HOP_TAGS = 64
#: What a first-hop record can add to an envelope (record head and tags).
FIRST_HOP_RECORD_BYTES = 6 + TAG_BYTES * MAX_FIRST_HOP_TAGS


def peer_tag(peer_id: bytes) -> bytes:
    """The tag of a peer in a first-hop record: SHA-256(binary peer id)[:8]."""
    return hashlib.sha256(peer_id).digest()[:TAG_BYTES]


def encode_first_hop(tags: Iterable[bytes]) -> bytes:
    """A first-hop record's data: the tags, concatenated (sorted, at most 64)."""
    return b"".join(sorted(tags)[:MAX_FIRST_HOP_TAGS])


def decode_first_hop(data: bytes) -> frozenset[bytes]:
    """The tags of a first-hop record; empty if malformed (then nobody is skipped)."""
    if len(data) % TAG_BYTES or len(data) > TAG_BYTES * MAX_FIRST_HOP_TAGS:
        return frozenset()
    return frozenset(data[i : i + TAG_BYTES] for i in range(0, len(data), TAG_BYTES))


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
    #: RPCs that carried an IHAVE (heartbeat gossip).
    ihave_sent: int = 0
    #: Relayed copies not sent: the message's author had sent it to the peer
    #: (its first-hop record tags the peer).
    relays_skipped: int = 0
    #: Own messages whose copy a full queue dropped: named in an IHAVE to that
    #: peer at the next heartbeat (the relays skip it: it was tagged).
    own_drops_gossiped: int = 0
    #: Departed peers whose prune backoff was forgotten (the first departure of
    #: a peer in a backoff period; see :meth:`Gossip.remove_peer`).
    backoffs_forgiven: int = 0
    #: Pubsub stream opens to a connected peer that failed in negotiation and are
    #: tried again (see :class:`SitePubsub`).
    stream_open_retries: int = 0


class Gossip(GossipSub):
    """GossipSub that sends IDONTWANT only for large messages and counts its RPCs."""

    def __init__(
        self,
        *args: Any,
        idontwant_min_bytes: int = IDONTWANT_MIN_BYTES,
        sender_record_once: bool = True,
        flood_publish: bool = True,
        first_hop_claims: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.idontwant_min_bytes = idontwant_min_bytes
        self.sender_record_once = sender_record_once
        self.flood_publish = flood_publish
        self.first_hop_claims = first_hop_claims
        # The first-hop tags of the message publish() is forwarding (set and used
        # before its first await, like _idontwant_due).
        self._tagged: frozenset[bytes] = frozenset()
        self._tags: dict[ID, bytes] = {}
        # Own messages a full queue dropped: peer -> (message id, topic).
        self._own_dropped: dict[ID, set[tuple[bytes, str]]] = {}
        self.counters = GossipCounters()
        # When each departed peer's backoff was last forgiven (monotonic seconds).
        self._forgiven_at: dict[ID, float] = {}
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

    def tag(self, peer: ID) -> bytes:
        tag = self._tags.get(peer)
        if tag is None:
            tag = self._tags[peer] = peer_tag(peer.to_bytes())
        return tag

    def first_hop_record(self, topic: str) -> bytes | None:
        """The data of the first-hop record for a message this host publishes on
        ``topic`` now (None: ``first_hop_claims`` off, or no peer to tag)."""
        if not self.first_hop_claims:
            return None
        peers = self.first_hop(topic)
        return encode_first_hop(self.tag(p) for p in peers) if peers else None

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
        if self.flood_publish and own:
            for topic in topics:
                peers.update(self._subscribers(topic))
            peers.discard(origin)
        elif self._tagged:  # a relay: the mesh, less the peers the author sent it to
            relayed = {p for p in peers if self.tag(p) not in self._tagged}
            self.counters.relays_skipped += len(peers) - len(relayed)
            peers = relayed
        if msg_id is not None:  # a peer that said IDONTWANT still does not get it
            peers = {p for p in peers if msg_id not in self.dont_send_message_ids.get(p, ())}
        return peers

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        self._idontwant_due = len(pubsub_msg.data) >= self.idontwant_min_bytes
        own = self.pubsub is not None and ID(pubsub_msg.from_id) == self.pubsub.my_id
        self._tagged = frozenset() if own else first_hop_tags(pubsub_msg.data)
        try:
            await super().publish(msg_forwarder, pubsub_msg)
        finally:
            self._tagged = frozenset()

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        if not self._idontwant_due:
            self.counters.idontwant_skipped += 1
            return
        await super()._emit_idontwant_for_message(msg_id, topic_ids)

    def mesh_heartbeat(self) -> Any:
        """py-libp2p's mesh maintenance, and a backoff (``prune_back_off``) for each
        peer it prunes, before the PRUNE leaves: the heartbeats that follow do not
        GRAFT it again within the backoff the PRUNE announces (go-libp2p's
        ``prunePeer``)."""
        peers_to_graft, peers_to_prune = super().mesh_heartbeat()
        for peer, topics in peers_to_prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
        return peers_to_graft, peers_to_prune

    def gossip_heartbeat(self) -> Any:
        """py-libp2p's IHAVEs of this heartbeat, and to each peer whose copy of an own
        message a full queue dropped, an IHAVE naming it (no relay brings it: the
        first-hop record tagged the peer)."""
        peers_to_gossip = super().gossip_heartbeat()
        own_dropped, self._own_dropped = self._own_dropped, {}
        for peer, dropped in own_dropped.items():
            for msg_id, topic in dropped:
                if msg_id in self.mcache.msgs:
                    ids = peers_to_gossip[peer].setdefault(topic, [])
                    if msg_id not in ids:
                        ids.append(msg_id)
                    self.counters.own_drops_gossiped += 1
        return peers_to_gossip

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
        if rpc.HasField("control") and rpc.control.ihave:
            self.counters.ihave_sent += 1
        super().send_rpc(peer_id, rpc, priority)

    def remove_peer(self, peer_id: ID) -> None:
        """Forget a disconnected peer, and its prune backoff if it was not forgiven
        one in the last backoff period.

        A peer that comes back (a restarted process with the same key) starts
        with no memory of having pruned us, and GRAFTs at once. Forgiving it
        once per ``prune_back_off`` bounds what a peer that lies gains by
        reconnecting: one mesh entry per backoff period more than the backoff
        alone allows (each paid with a new connection and handshake); a GRAFT
        in between is refused and penalised as before.
        """
        self._record_sent.discard(peer_id)
        self._tags.pop(peer_id, None)
        self._own_dropped.pop(peer_id, None)
        super().remove_peer(peer_id)
        self._forgive_backoff(peer_id)

    def _forgive_backoff(self, peer_id: ID) -> None:
        now = time.monotonic()
        period = float(self.prune_back_off)
        for peer, at in list(self._forgiven_at.items()):  # a few entries: departures
            if now - at >= period:
                del self._forgiven_at[peer]
        if peer_id in self._forgiven_at:
            return  # forgiven within this period: the backoff stands
        backed_off = [t for t, peers in self.back_off.items() if peer_id in peers]
        for topic in backed_off:
            del self.back_off[topic][peer_id]
        if backed_off:
            self._forgiven_at[peer_id] = now
            self.counters.backoffs_forgiven += 1

    def _handle_dropped_rpc(self, peer_id: ID, rpc: rpc_pb2.RPC, reason: str) -> None:
        self.counters.rpcs_dropped += 1
        if self.pubsub is not None:
            me = self.pubsub.my_id.to_bytes()
            for msg in rpc.publish:
                if msg.from_id == me and msg.topicIDs:  # tagged, so no relay brings it
                    key = (self.pubsub.get_message_id(msg), msg.topicIDs[0])
                    self._own_dropped.setdefault(peer_id, set()).add(key)
        super()._handle_dropped_rpc(peer_id, rpc, reason)


class SitePubsub(Pubsub):
    """py-libp2p's ``Pubsub`` whose failed stream opens to a connected peer are
    tried again, whatever the failure (see the module's docstring)."""

    async def _handle_new_peer(self, peer_id: ID) -> None:
        try:
            await super()._handle_new_peer(peer_id)
        except StreamFailure as exc:
            if refused_every_protocol(exc):
                raise  # it does not speak gossipsub: final, as in py-libp2p
            # A negotiation that timed out, or whose read or write failed: the
            # retry loop (_handle_new_peer_with_retry) tries again, with its capped
            # back-off (0.5 s doubling to 10 s), while the peer stays connected, as
            # it does for a SwarmException.
            if isinstance(self.router, Gossip):
                self.router.counters.stream_open_retries += 1
            raise SwarmException(f"pubsub stream to {peer_id} failed: {exc}") from exc


def refused_every_protocol(exc: StreamFailure) -> bool:
    """Whether a stream open failed because the peer answered "na" to every
    protocol offered (py-libp2p 0.8.1's ``MultiselectClient.select_one_of``
    says so in its message; nothing else tells it from a timeout)."""
    return str(exc.__cause__).startswith("protocols not supported")


def first_hop_tags(data: bytes) -> frozenset[bytes]:
    """The tags of the first-hop record of the envelope ``data`` (a validated
    message's); empty if it has none, or if it is not an envelope."""
    try:
        envelope = parse(data)
    except EnvelopeError:
        return frozenset()
    for record in envelope.records:
        if record.kind == KIND_FIRST_HOP:
            return decode_first_hop(record.data)
    return frozenset()


def _without_sender_record(rpc: rpc_pb2.RPC) -> rpc_pb2.RPC:
    copy = rpc_pb2.RPC()
    copy.CopyFrom(rpc)
    copy.ClearField("senderRecord")
    return copy
