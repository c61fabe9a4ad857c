"""HostHub: one libp2p host that speaks for several devices of one site.

A gateway's devices share one hub: one :class:`~p2pgrid.net.node.TrioNode`
(one peer id, one port, one gossipsub router, one validator, one misbehaviour
book), and each device gets its own :class:`~p2pgrid.net.host.PeerHost` on it
(``PeerHost(..., hub=hub)``), the same API an agent of its own host uses: it
seals with its device's key, keeps its own subscriptions, handlers, pacing and
nonces. A :class:`PeerHost` made without a hub makes a private hub of one.

What the hub adds to a host of one device (wire format: docs/protocol-net.md):

- its hello proves every device (:mod:`p2pgrid.net.devices`), and a peer's hello
  is read the same way: :meth:`peers` lists one :class:`PeerRef` per device;
- a request names its device (a target record) and is dispatched to that
  device's handler; an unknown device gets an error answer with the reason;
- a device's publication reaches the hub's other devices on the topic (py-libp2p
  hands a host's own publications to its own subscribers after its own
  validator), never itself; a request between two devices of the hub is a call
  through the same validator, with no stream;
- misbehaviour and bans fall on a peer id: all the devices behind it.

The hub starts with its first device's host (and that device's topics) and adds
each next device's topics as it starts; it stops when its owner stops it (a
private hub: with its host), after every device's host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from p2pgrid.errors import ConfigError
from p2pgrid.identity import Signer, SiteIdentity
from p2pgrid.net.bridge import TrioBridge
from p2pgrid.net.config import NetConfig
from p2pgrid.net.devices import (
    KIND_TARGET,
    DeviceId,
    DeviceProof,
    address,
    decode_target,
    encode_error,
    host_of,
)
from p2pgrid.net.envelope import KIND_ERROR, MAX_STREAM_ENVELOPE_BYTES, Envelope, Record, seal
from p2pgrid.net.errors import BridgeClosed, FrameError, NetClosed
from p2pgrid.net.membership import Topic
from p2pgrid.net.misbehaviour import Misbehaviour
from p2pgrid.net.node import PeerRef, Reply, TrioNode
from p2pgrid.net.validator import EnvelopeValidator

if TYPE_CHECKING:
    from p2pgrid.net.host import PeerHost

log = logging.getLogger(__name__)

#: Domain of the libp2p host key derived from the member key (stable peer id).
HOST_KEY_DOMAIN = b"p2pgrid/libp2p-host-key/v2"


@dataclass(frozen=True)
class DeviceKey:
    """Who a host speaks for: a member of a site and its signing key. The index
    is a device's index, or ``OWNER_NET_INDEX`` / ``UTILITY_NET_INDEX``."""

    site: SiteIdentity
    device_index: int
    signer: Signer = field(repr=False)


def host_key_seed(signer: Signer, site: SiteIdentity) -> bytes:
    """The seed of the Ed25519 libp2p host key of ``site``'s member whose key is
    ``signer``. The site is in it: a utility serves several sites with one key, one
    host each, and two hosts with one peer id would take each other's connections.
    A hub's host key is its first device's."""
    return hashlib.sha256(HOST_KEY_DOMAIN + signer.secret + site.site_hash).digest()


def peer_id_of(signer: Signer, site: SiteIdentity) -> str:
    """The libp2p peer id of ``site``'s host speaking with ``signer``, known before
    it starts: what a deployment writes into its peers' ``bootstrap`` addresses."""
    return str(ID.from_pubkey(create_new_key_pair(host_key_seed(signer, site)).public_key))


class HostHub:
    """One libp2p host for the devices ``devices`` (all of one site; the first
    one's key makes the peer id and signs the hello)."""

    def __init__(
        self,
        config: NetConfig,
        devices: Sequence[DeviceKey],
        *,
        bridge: TrioBridge | None = None,
        name: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (seconds since the epoch) stamps every envelope the hub's devices
        seal and is what the replay window of the envelopes it receives is read
        against (a test shares a clock it moves between hubs)."""
        if not devices:
            raise ConfigError("a host hub speaks for at least one device")
        first = devices[0]
        self.keys: dict[DeviceId, DeviceKey] = {}
        for key in devices:
            device = (key.site.site_id, key.device_index)
            if key.site.site_id != first.site.site_id:
                raise ConfigError(f"a host hub speaks for one site: {device} is of another")
            if device in self.keys:
                raise ConfigError(f"a host hub speaks for each device once: {device} twice")
            self.keys[device] = key
        self.config = config
        self.first = first
        self.name = name or f"{first.site.site_id}/hub"
        self._seed = host_key_seed(first.signer, first.site)
        self._id = ID.from_pubkey(create_new_key_pair(self._seed).public_key)
        self.peer_id = str(self._id)
        self.clock = clock
        self.validator = EnvelopeValidator(replay_window_s=config.replay_window_s, clock=clock)
        self.misbehaviour = Misbehaviour(
            threshold=config.misbehaviour_threshold, ban_s=config.ban_s
        )
        self._bridge = bridge
        self._owns_bridge = bridge is None
        self._node: TrioNode | None = None
        self._views: dict[DeviceId, PeerHost] = {}
        self._epoch = secrets.randbits(32)
        self._hello_seq = 0
        self._starting = asyncio.Lock()
        self.state = "new"
        self.listen_addrs: tuple[str, ...] = ()

    @property
    def peer_bytes(self) -> bytes:
        return self._id.to_bytes()

    @property
    def several(self) -> bool:
        """Whether the hub speaks for several devices (its devices are then
        addressed as ``<peer id>/<site>/<index>``, by others and by each other)."""
        return len(self.keys) > 1

    @property
    def addrs(self) -> tuple[str, ...]:
        return tuple(f"{addr}/p2p/{self.peer_id}" for addr in self.listen_addrs)

    def address(self, device: DeviceId) -> str:
        """How this hub's ``device`` is addressed."""
        return address(self.peer_id, device if self.several else None)

    def running(self) -> tuple[TrioBridge, TrioNode]:
        if self.state != "running" or self._bridge is None or self._node is None:
            raise NetClosed(f"{self.name}: host is {self.state}")
        return self._bridge, self._node

    # -- lifecycle ---------------------------------------------------------------

    async def attach(self, view: PeerHost, topics: Sequence[Topic]) -> None:
        """Serve ``view``'s device from now on; starts the host with the first one."""
        device = (view.device.site.site_id, view.device.device_index)
        if self.keys.get(device) != view.device:
            raise ConfigError(f"{self.name}: {device} is not one of this hub's devices")
        async with self._starting:  # one attach at a time: a device's second host waits, refused
            if device in self._views:
                raise ConfigError(f"{self.name}: {device} has a running host already")
            if self.state == "new":
                await self._start(topics)
            bridge, node = self.running()
            await bridge.run(node.add_topics, list(topics))
            ref = self._ref(device)
            for other in self._views.values():
                other._on_peer(True, ref)
            self._views[device] = view

    def detach(self, view: PeerHost) -> None:
        device = (view.device.site.site_id, view.device.device_index)
        if self._views.get(device) is not view:
            return
        del self._views[device]
        ref = self._ref(device)
        for other in self._views.values():
            other._on_peer(False, ref)

    async def _start(self, topics: Sequence[Topic]) -> None:
        self.state = "starting"
        if self._bridge is None:
            self._bridge = TrioBridge()
            await self._bridge.start()
        own = self._id.to_bytes()
        proofs = tuple(
            DeviceProof.make(key.signer, device[0], device[1], own)
            for device, key in list(self.keys.items())[1:]
        )
        self._node = TrioNode(
            config=self.config,
            host_key_seed=self._seed,
            topics=list(topics),
            validator=self.validator,
            misbehaviour=self.misbehaviour,
            sealer=self._seal_hello,
            events=self,
            bridge=self._bridge,
            name=self.name,
            devices=proofs,
        )
        try:
            self.listen_addrs = await self._bridge.start_service(self._node.serve)
        except BaseException:
            self.state = "stopped"
            if self._owns_bridge:
                await self._bridge.stop()
            raise
        self.state = "running"
        log.info(
            "%s: listening on %s for %d devices", self.name, ", ".join(self.addrs), len(self.keys)
        )

    async def stop(self) -> None:
        """Stop libp2p (and a bridge of its own). Idempotent; the devices' hosts stop first."""
        if self.state in ("stopped", "new"):
            self.state = "stopped"
            return
        self.state = "stopped"
        if self._node is not None and self._bridge is not None and self._bridge.running:
            with contextlib.suppress(BridgeClosed):
                await self._bridge.run(self._node.stop)
        if self._owns_bridge and self._bridge is not None:
            await self._bridge.stop()

    # -- sealing -----------------------------------------------------------------

    def _seal_hello(self, context: str, records: Sequence[Record], max_bytes: int) -> bytes:
        self._hello_seq += 1
        return seal_as(
            self.first,
            self._id.to_bytes(),
            self._epoch,
            self._hello_seq,
            context,
            records,
            max_bytes,
            clock=self.clock,
        )

    def error(self, context: str, reason: str) -> bytes:
        """An error answer (one record of kind 0x0002), signed by the first device."""
        record = Record(KIND_ERROR, encode_error(reason))
        return seal_as(
            self.first,
            self._id.to_bytes(),
            self._epoch,
            1,
            context,
            [record],
            MAX_STREAM_ENVELOPE_BYTES,
            clock=self.clock,
        )

    # -- peers -------------------------------------------------------------------

    def _ref(self, device: DeviceId) -> PeerRef:
        return PeerRef(self.address(device), device[0], device[1], self.listen_addrs, self.peer_id)

    def peers(self, exclude: DeviceId) -> tuple[PeerRef, ...]:
        """Remote devices, then the hub's other running devices."""
        remote = self._node.peers() if self._node is not None else ()
        local = tuple(self._ref(d) for d in self._views if d != exclude)
        return (*remote, *local)

    def address_of(self, peer_id: bytes, device: DeviceId) -> str:
        """The address of ``device`` behind the peer ``peer_id`` (this hub too)."""
        if peer_id == self._id.to_bytes():
            return self.address(device)
        if self._node is None:
            return str(ID(peer_id))
        return self._node.address_of(peer_id, *device)

    def is_own(self, host_id: str) -> bool:
        return host_id == self.peer_id

    def report_misbehaviour(self, peer: str, reason: str, *, scored: bool = True) -> None:
        """Count ``reason`` against the peer behind address ``peer`` (a ban falls on
        the peer id: every device behind it). A device of this hub is logged only."""
        host_id = host_of(peer)
        if self.is_own(host_id):
            log.warning("%s: device %s of this host misbehaved: %s", self.name, peer, reason)
            return
        log.info("%s: peer %s misbehaved: %s", self.name, peer, reason)
        if self.misbehaviour.record(host_id, reason, scored=scored):
            log.warning("%s: banned peer %s (last: %s)", self.name, host_id, reason)
            if self._node is not None and self._bridge is not None and self._bridge.running:
                self._bridge.to_trio(self._node.drop_peer, host_id)

    # -- NodeEvents (called on the loop by the trio side) ------------------------

    def on_delivery(self, topic: str, envelope: Envelope) -> None:
        sender = (envelope.site_id, envelope.device_index)
        own = envelope.peer_id == self._id.to_bytes()
        peer = self.address_of(envelope.peer_id, sender)
        for device, view in list(self._views.items()):
            if own and device == sender:
                continue  # its own publication, handed back by py-libp2p
            if topic in view.topics:
                view._deliver(topic, envelope, peer)

    def on_peer(self, joined: bool, peer: PeerRef) -> None:
        for view in list(self._views.values()):
            view._on_peer(joined, peer)

    def on_crash(self, error: BaseException) -> None:
        if self.state != "running":
            return
        self.state = "crashed"
        log.error("%s: the libp2p host crashed (%r); stop and restart the agent", self.name, error)
        for view in list(self._views.values()):
            view._crashed()

    def on_request(self, protocol: str, envelope: Envelope, peer_id: str, reply: Reply) -> None:
        sender = self.address_of(
            ID.from_base58(peer_id).to_bytes(), (envelope.site_id, envelope.device_index)
        )
        self.dispatch(protocol, envelope, sender, reply)

    def dispatch(self, protocol: str, envelope: Envelope, sender: str, reply: Reply) -> None:
        """Hand a validated request to the device it names (or the hub's one device)."""
        records = envelope.records
        target: DeviceId | None = None
        if len(records) == 2 and records[0].kind == KIND_TARGET:
            try:
                target = decode_target(records[0].data)
            except FrameError as exc:
                self.report_misbehaviour(sender, f"{protocol}:malformed")
                log.info("%s: a %s request from %s: %s", self.name, protocol, sender, exc)
                reply(None)
                return
        context = response_context(protocol, envelope.body + envelope.signature)
        if target is None:
            if self.several:
                log.info(
                    "%s: refused a %s request from %s that names no device (%d served here)",
                    self.name,
                    protocol,
                    sender,
                    len(self.keys),
                )
                reply(None)
                return
            target = next(iter(self.keys))
        view = self._views.get(target)
        if view is None:
            why = "not served here" if target not in self.keys else "not running"
            reply(self.error(context, f"device {target[0]}/{target[1]} is {why}"))
            return
        view._serve(
            protocol, envelope, records[-1], sender, reply, context, named=len(records) == 2
        )


def seal_as(
    key: DeviceKey,
    peer_id: bytes,
    epoch: int,
    seq: int,
    context: str,
    records: Sequence[Record],
    max_bytes: int,
    *,
    clock: Callable[[], float],
) -> bytes:
    """An envelope of ``key``'s device, sent from the host ``peer_id``, now (by ``clock``)."""
    return seal(
        key.signer,
        context,
        site_id=key.site.site_id,
        device_index=key.device_index,
        peer_id=peer_id,
        epoch=epoch,
        seq=seq,
        timestamp_ms=int(clock() * 1000),
        records=records,
        max_bytes=max_bytes,
    )


def response_context(protocol: str, request_frame: bytes) -> str:
    """The context of the answer to the request ``request_frame`` (unique per request)."""
    return f"{protocol}#response/{hashlib.sha256(request_frame).hexdigest()[:32]}"
