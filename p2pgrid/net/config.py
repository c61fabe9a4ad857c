"""The typed, frozen configuration of one agent's peer-to-peer host."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from p2pgrid.net.envelope import MAX_ENVELOPE_BYTES
from p2pgrid.net.gossip import IDONTWANT_MIN_BYTES
from p2pgrid.net.misbehaviour import BAN_S, MISBEHAVIOUR_THRESHOLD
from p2pgrid.net.validator import REPLAY_WINDOW_S


@dataclass(frozen=True)
class NetConfig:
    """How a :class:`~p2pgrid.net.host.PeerHost` listens, finds peers and paces."""

    #: Interface to listen on; advertised as is, so not ``0.0.0.0`` across hosts.
    listen_host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one.
    listen_port: int = 0
    #: Multiaddrs with ``/p2p/<peer id>`` dialled at start and redialled forever.
    bootstrap: tuple[str, ...] = ()
    #: Also find peers by mDNS on the LAN (zeroconf).
    mdns: bool = False
    #: Stream multiplexer offered first. Mplex measured 3-5 ms vs yamux 22-82 ms
    #: (yamux sends a window update per frame in py-libp2p 0.8.1).
    muxer: Literal["mplex", "yamux"] = "mplex"
    #: Gossipsub heartbeat (py-libp2p's default is 120 s).
    heartbeat_interval_s: int = 1
    mesh_degree: int = 6
    mesh_degree_low: int = 4
    #: A mesh above this is pruned to ``mesh_degree`` at the heartbeat. Each
    #: message is sent once per mesh peer, so this bounds the CPU an agent spends
    #: per message once peer exchange connects it to ``target_peers`` peers.
    mesh_degree_high: int = 8
    #: Send gossipsub IDONTWANTs only for messages of at least this many bytes
    #: (go-libp2p's rule; py-libp2p sends one per message to every mesh peer,
    #: which doubles the RPCs of small messages: see p2pgrid.net.gossip).
    idontwant_min_bytes: int = IDONTWANT_MIN_BYTES
    #: Put the host's signed peer record only in the first gossipsub RPC to a
    #: peer (py-libp2p puts it in every RPC, and checks its signature in each).
    sender_record_once: bool = True
    #: Send the messages this host publishes to every peer subscribed to the topic,
    #: not only to its mesh (gossipsub v1.1 flood publishing): with more peers than
    #: the mesh holds, the others need not wait for a relay or a heartbeat's gossip.
    flood_publish: bool = True
    #: Put in each envelope this host publishes the tags of the peers it sends it
    #: to at once, and relay no message to the peers its author tagged: with flood
    #: publishing, members connected to each other relay nothing to each other
    #: (p2pgrid.net.gossip; docs/protocol-net.md sections 1 and 4).
    first_hop_claims: bool = True
    #: Dial learned peers until this many are connected (bootstrap peers always).
    target_peers: int = 12
    #: Outgoing dials in flight at once (bootstrap peers first). Fewer (2) was
    #: measured at the start of a starved fleet: its mesh completed later, with
    #: more of its connections among the measured messages, and lost no less
    #: (docs/performance.md, "The start's dials, measured").
    max_concurrent_dials: int = 8
    #: Tries of a hello exchange on one connection: a failed one (over 5 s, a
    #: stream refused) is tried again after ~1 s, doubling to 8 s, while the
    #: connection lasts and the peer has not joined by a hello of its own.
    hello_tries: int = 6
    #: Redial back-off: first delay, cap, and how often a learned peer is retried.
    reconnect_min_s: float = 0.25
    reconnect_max_s: float = 10.0
    reconnect_attempts: int = 12
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES
    replay_window_s: float = REPLAY_WINDOW_S
    #: Pacing per topic: envelopes per second and burst; records published while
    #: no token is free are batched into the next envelope.
    envelopes_per_s: float = 20.0
    envelope_burst: int = 5
    #: ``publish`` waits while this many records are pending on a topic.
    max_pending_records: int = 2000
    #: Deliveries buffered per subscriber before they are dropped (and counted).
    subscriber_queue: int = 4096
    #: Check membership, signatures and replays on topics. Off only for
    #: adversarial tests (a forger must not reject its own forgeries).
    enforce_membership: bool = True
    #: Misbehaviour events (within 10 min) that get a peer disconnected and banned.
    misbehaviour_threshold: int = MISBEHAVIOUR_THRESHOLD
    #: How long a banned peer is refused (no connection, hello, stream or dial).
    ban_s: float = BAN_S
