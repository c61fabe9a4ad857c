"""The peer-to-peer layer: libp2p hosts bridged into asyncio, signed site membership."""

from p2pgrid.net.bridge import TrioBridge
from p2pgrid.net.config import NetConfig
from p2pgrid.net.envelope import MAX_ENVELOPE_BYTES
from p2pgrid.net.errors import (
    BridgeClosed,
    DeviceAbsent,
    EnvelopeError,
    FrameError,
    MalformedMessage,
    NetClosed,
    PeerMisbehaved,
    PeerUnreachable,
    RequestRejected,
    WrongKind,
)
from p2pgrid.net.host import (
    DeviceKey,
    EventStream,
    HostHub,
    NetStats,
    PeerHost,
    Subscription,
    peer_id_of,
)
from p2pgrid.net.membership import Membership, Topic, owner_topic, site_topic
from p2pgrid.net.messages import Delivery, PeerEvent, PeerJoined, PeerLeft, PeerRef, WireMessage
from p2pgrid.net.misbehaviour import Misbehaviour
from p2pgrid.net.validator import Reason

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "BridgeClosed",
    "Delivery",
    "DeviceAbsent",
    "DeviceKey",
    "EnvelopeError",
    "EventStream",
    "FrameError",
    "HostHub",
    "MalformedMessage",
    "Membership",
    "Misbehaviour",
    "NetClosed",
    "NetConfig",
    "NetStats",
    "PeerEvent",
    "PeerHost",
    "PeerJoined",
    "PeerLeft",
    "PeerMisbehaved",
    "PeerRef",
    "PeerUnreachable",
    "Reason",
    "RequestRejected",
    "Subscription",
    "Topic",
    "TrioBridge",
    "WireMessage",
    "WrongKind",
    "owner_topic",
    "peer_id_of",
    "site_topic",
]
