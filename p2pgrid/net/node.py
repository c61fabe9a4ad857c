"""The trio side of one host: py-libp2p, gossipsub, validators, hellos, direct streams.

Everything here runs in the :class:`~p2pgrid.net.bridge.TrioBridge`'s trio run
and reports to the asyncio side only through :class:`NodeEvents` callbacks,
scheduled with ``bridge.to_asyncio``. Nothing in here awaits asyncio.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.discovery.events.peerDiscovery import peerDiscovery
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12
from libp2p.pubsub.pb import rpc_pb2
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from p2pgrid.backoff import Backoff
from p2pgrid.identity import Roster
from p2pgrid.net.bridge import TrioBridge
from p2pgrid.net.config import NetConfig
from p2pgrid.net.devices import (
    KIND_DEVICES,
    KIND_TARGET,
    DeviceId,
    DeviceProof,
    address,
    decode_devices,
    encode_devices,
    host_of,
)
from p2pgrid.net.discovery import Redialer, parse_peer_addr
from p2pgrid.net.envelope import (
    KIND_HELLO,
    MAX_ENVELOPE_BYTES,
    MAX_STREAM_ENVELOPE_BYTES,
    Envelope,
    Record,
    parse,
)
from p2pgrid.net.errors import BridgeClosed, EnvelopeError, FrameError, RequestRefused
from p2pgrid.net.frames import (
    PEER_ERRORS,
    STREAM_ERRORS,
    Hello,
    close_stream,
    read_frame,
    write_frame,
)
from p2pgrid.net.gossip import Gossip, SitePubsub
from p2pgrid.net.membership import PROTOCOL_PREFIX, Membership, Topic
from p2pgrid.net.misbehaviour import Misbehaviour
from p2pgrid.net.muxer import muxer_options
from p2pgrid.net.validator import EnvelopeValidator, Reason

log = logging.getLogger(__name__)

HELLO_PROTOCOL = f"{PROTOCOL_PREFIX}/hello"
#: A hello exchange (open stream, both frames) must finish within this.
HELLO_TIMEOUT_S = 5.0
#: A hello exchange that failed (too slow, a stream refused) is tried again after
#: these delays while the connection lasts and the peer has not joined by its own
#: hello, ``NetConfig.hello_tries`` times in all: at a busy start (agents given a
#: few % of a core) many exchanges take longer than HELLO_TIMEOUT_S, and a peer
#: whose exchanges all failed stayed connected but unlisted (no log sync with it,
#: no trade) until it reconnected.
HELLO_BACKOFF = Backoff(initial_s=1.0, max_s=8.0)
#: A request's frame must arrive within this after the stream opens.
STREAM_READ_TIMEOUT_S = 10.0
#: The asyncio handler of a request must answer within this.
HANDLER_TIMEOUT_S = 30.0
#: How many known peers a hello passes on.
HELLO_KNOWN_PEERS = 32
#: How long the host's advertised addresses are reused once read (see :class:`CachedAddrs`).
ADDRS_CACHE_S = 1.0


#: The answer frame of a refused request: empty (a real answer is a signed envelope).
REFUSAL = b""


@dataclass(frozen=True)
class PeerRef:
    """A device a connected peer proved in its signed hello.

    ``peer_id`` is the address to send the device requests at: the host's
    libp2p peer id when the host speaks for this device alone, else
    ``<peer id>/<site id>/<device index>`` (:mod:`p2pgrid.net.devices`).
    ``host_id`` is the libp2p peer id in either case (what a ban falls on).
    """

    peer_id: str
    site_id: str
    device_index: int
    addrs: tuple[str, ...]
    host_id: str = ""

    def __post_init__(self) -> None:
        if not self.host_id:
            object.__setattr__(self, "host_id", host_of(self.peer_id))


@dataclass(frozen=True)
class _Hello:
    """What a joined peer's accepted hello says, kept to be read again when this
    node's membership changes: its signing device, the other devices it lists
    (with their proofs) and its listen addresses."""

    first: DeviceId
    proofs: tuple[DeviceProof, ...]
    listen_addrs: tuple[str, ...]


Reply = Callable[[bytes | None], None]
Sealer = Callable[[str, Sequence[Record], int], bytes]


class NodeEvents(Protocol):
    """What the trio node reports to the asyncio host (called on the loop)."""

    def on_delivery(self, topic: str, envelope: Envelope) -> None: ...
    def on_peer(self, joined: bool, peer: PeerRef) -> None: ...
    def on_request(self, protocol: str, envelope: Envelope, peer_id: str, reply: Reply) -> None: ...
    def on_crash(self, error: BaseException) -> None: ...


class _Notifee(INotifee):
    def __init__(self, node: TrioNode) -> None:
        self._node = node

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._node.peer_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._node.peer_disconnected(conn.muxed_conn.peer_id)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


class CachedAddrs:
    """``host.get_addrs`` read at most once per ``ttl_s`` seconds.

    py-libp2p 0.8.1 attaches the host's signed peer record to every gossipsub
    publish RPC (each message published or forwarded) and, to know whether its
    cached record is still current, rebuilds the advertised multiaddrs from the
    listening sockets each time: ~5 % of an agent's CPU in a profile at 50
    messages/s (docs/performance.md). A TCP host's addresses do not change while
    it listens; an empty answer (not listening yet) is not kept.
    """

    def __init__(
        self,
        read: Callable[[], list[multiaddr.Multiaddr]],
        ttl_s: float = ADDRS_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._clock = clock
        self._addrs: list[multiaddr.Multiaddr] = []
        self._until = 0.0

    def __call__(self) -> list[multiaddr.Multiaddr]:
        now = self._clock()
        if not self._addrs or now >= self._until:
            self._addrs = self._read()
            self._until = now + self._ttl_s
        return list(self._addrs)


async def retry_while_wanted(
    attempt: Callable[[], Awaitable[bool]],
    wanted: Callable[[], bool],
    *,
    backoff: Backoff,
    tries: int,
    rng: random.Random,
) -> int:
    """Run ``attempt`` until it succeeds, at most ``tries`` times, waiting
    ``backoff``'s delay after each failure and giving up once ``wanted()`` is false
    (checked after each wait). Returns the failed attempts."""
    fails = 0
    while not await attempt():
        fails += 1
        if fails >= tries:
            return fails
        await trio.sleep(backoff.delay(fails, rng))  # a back-off timer
        if not wanted():
            return fails
    return fails


class TrioNode:
    """A py-libp2p host with gossipsub, p2pgrid validators, hellos and direct streams."""

    def __init__(
        self,
        *,
        config: NetConfig,
        host_key_seed: bytes,
        topics: Sequence[Topic],
        validator: EnvelopeValidator,
        misbehaviour: Misbehaviour,
        sealer: Sealer,
        events: NodeEvents,
        bridge: TrioBridge,
        name: str,
        devices: tuple[DeviceProof, ...] = (),
    ) -> None:
        self._config = config
        #: The host's other devices, proved in its hello (none: a host of one device).
        self._devices = devices
        self._topics = {topic.name: topic for topic in topics}
        self._members = Membership.union(topic.members for topic in topics)
        self._validator = validator
        self._misbehaviour = misbehaviour
        self._seal = sealer
        self._events = events
        self._bridge = bridge
        self.name = name
        key_pair = create_new_key_pair(host_key_seed)
        # Noise only. py-libp2p 0.8.1's default also accepts /plaintext/2.0.0 (and
        # secio): a dialer choosing plaintext claims any peer id unauthenticated,
        # which would void the hello's and the streams' peer-id binding.
        noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
        self.host = new_host(
            key_pair=key_pair,
            muxer_opt=muxer_options(config.muxer),
            sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
            enable_mDNS=config.mdns,
        )
        self.peer_id: ID = self.host.get_id()
        self.host.get_addrs = CachedAddrs(self.host.get_addrs)  # type: ignore[method-assign]
        self.gossipsub = Gossip(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
            idontwant_min_bytes=config.idontwant_min_bytes,
            sender_record_once=config.sender_record_once,
            flood_publish=config.flood_publish,
            first_hop_claims=config.first_hop_claims,
            degree=config.mesh_degree,
            degree_low=config.mesh_degree_low,
            degree_high=config.mesh_degree_high,
            heartbeat_interval=config.heartbeat_interval_s,
            # Defaults that lose or leak on a small mesh (see docs/protocol-net.md):
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            # Every peer of a one-machine test shares 127.0.0.1.
            eclipse_protection_enabled=False,
        )
        self.pubsub = SitePubsub(self.host, self.gossipsub, strict_signing=True)
        # py-libp2p 0.8.1 starts its pubsub seqno counter at int(time.time()) and adds
        # one per publish. Our peer id is stable (derived from the device key), so a
        # restarted agent that published faster than 1/s before would reuse seqnos
        # (from_id, seqno) that peers still hold in their 120 s seen-cache: its first
        # messages would be dropped as duplicates. Start from nanoseconds like go-libp2p.
        self.pubsub.counter = time.time_ns()
        self.host.get_network().register_notifee(_Notifee(self))
        self.host.set_stream_handler(TProtocol(HELLO_PROTOCOL), self._serve_hello)
        self._redialer = Redialer(
            self.host,
            config,
            name=name,
            is_connected=self._is_connected,
            is_banned=lambda peer: misbehaviour.banned(str(peer)),
        )
        #: Each joined peer's devices (one, or those its hello proved).
        self._peers: dict[ID, tuple[PeerRef, ...]] = {}
        #: Each joined peer's hello, read again when a roster of this node changes.
        self._hellos: dict[ID, _Hello] = {}
        #: Each connected peer's latest hello refused only because its signing device
        #: is not a member here (yet): checked again, as a fresh hello, on a change.
        self._refused: dict[ID, bytes] = {}
        self._watched: list[Roster] = []  # the rosters whose changes re-read the hellos
        self._recheck_due = False
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._finished = trio.Event()
        self.listen_addrs: tuple[str, ...] = ()
        #: Connections opened so far, both ways (several to one peer count apart),
        #: and hello exchanges that failed (each try).
        self.connections_opened = 0
        self.hello_failures = 0
        self._rng = random.Random()

    @property
    def dial_failures(self) -> int:
        """Failed dials of wanted peers so far (trio side; read as a snapshot)."""
        return self._redialer.dial_failures

    @property
    def dials(self) -> int:
        """Dials of wanted peers started so far (trio side; read as a snapshot)."""
        return self._redialer.dials

    # -- lifecycle ---------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the host until :meth:`stop`; reports its listen addresses once serving."""
        listen = multiaddr.Multiaddr(
            f"/ip4/{self._config.listen_host}/tcp/{self._config.listen_port}"
        )
        serving = False
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with (
                    self.host.run([listen]),
                    background_trio_service(self.pubsub),
                    background_trio_service(self.gossipsub),
                ):
                    await self.pubsub.wait_until_ready()
                    subscriptions = []
                    for name in self._topics:
                        if self._config.enforce_membership:
                            self.pubsub.set_topic_validator(
                                name, self._topic_validator(name), is_async_validator=False
                            )
                        subscriptions.append((name, await self.pubsub.subscribe(name)))
                    self.listen_addrs = tuple(
                        str(addr).split("/p2p/")[0] for addr in self.host.get_addrs()
                    )
                    self._watch_rosters()
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        for name, sub in subscriptions:
                            nursery.start_soon(self._read_topic, name, sub)
                        nursery.start_soon(self._redialer.run)
                        for addr in self._config.bootstrap:
                            self._redialer.want(parse_peer_addr(addr), bootstrap=True)
                        if self._config.mdns:
                            peerDiscovery.register_peer_discovered_handler(self._on_mdns)
                        task_status.started(self.listen_addrs)
                        serving = True
                        await trio.sleep_forever()
        except Exception as exc:
            if not serving:
                raise  # the start fails with it
            # A py-libp2p task died (seen: mplex writing to a reset socket). The
            # host is gone; the bridge and any other host on it live on.
            log.exception("%s: the libp2p host crashed", self.name)
            self._bridge.to_asyncio(self._events.on_crash, exc)
        finally:
            for roster in self._watched:
                roster.unwatch(self._membership_changed)
            self._watched.clear()
            if self._config.mdns:
                peerDiscovery.unregister_peer_discovered_handler(self._on_mdns)
            self._nursery = None
            self._finished.set()

    async def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()
            await self._finished.wait()

    # -- topics ------------------------------------------------------------------

    def _topic_validator(self, topic: str) -> Callable[[ID, rpc_pb2.Message], bool]:
        members = self._topics[topic].members
        max_bytes = self._config.max_envelope_bytes

        def validate(forwarder: ID, msg: rpc_pb2.Message) -> bool:
            verdict = self._validator.check(
                msg.data,
                context=topic,
                members=members,
                sender_peer_id=msg.from_id,
                max_bytes=max_bytes,
            )
            if isinstance(verdict, Reason):
                log.info(
                    "%s: rejected a message on %s from %s via %s: %s",
                    self.name,
                    topic,
                    _b58(msg.from_id),
                    forwarder,
                    verdict,
                )
                # Counted against the peer only when it is the author and sent it
                # to us itself (a forwarder relays what others signed), and only
                # for what no honest clock or duplicate path explains.
                if verdict in LYING_REASONS and msg.from_id == forwarder.to_bytes():
                    self.punish(forwarder, f"{topic}:{verdict}")
                return False
            return True

        return validate

    async def _read_topic(self, topic: str, subscription: Any) -> None:
        while True:
            msg = await subscription.get()
            try:
                envelope = parse(msg.data, max_bytes=self._config.max_envelope_bytes)
            except EnvelopeError:
                continue  # only reachable with enforce_membership off
            self._bridge.to_asyncio(self._events.on_delivery, topic, envelope)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.pubsub.publish(topic, data)

    async def wait_subscribed(self, peer_id: str, topic: str, timeout_s: float) -> None:
        """Wait until ``peer_id`` announced ``topic`` to us; ``trio.TooSlowError`` if not."""
        await self.pubsub.wait_for_subscription(ID.from_base58(peer_id), topic, timeout_s)

    async def add_topics(self, topics: Sequence[Topic]) -> None:
        """Join ``topics`` too (another device of a hub started with topics of its own);
        a topic joined already keeps its first membership."""
        new = [t for t in topics if t.name not in self._topics]
        if not new:
            return
        for topic in new:
            self._topics[topic.name] = topic
        self._members = Membership.union(topic.members for topic in self._topics.values())
        for topic in new:
            if self._config.enforce_membership:
                self.pubsub.set_topic_validator(
                    topic.name, self._topic_validator(topic.name), is_async_validator=False
                )
            sub = await self.pubsub.subscribe(topic.name)
            if self._nursery is not None:
                self._nursery.start_soon(self._read_topic, topic.name, sub)
        if self._nursery is not None:  # serving: the new rosters are watched too
            self._watch_rosters()
            self._membership_changed()

    # -- peers -------------------------------------------------------------------

    def address_of(self, peer_id: bytes | ID, site_id: str, device_index: int) -> str:
        """How the asyncio side names device ``(site_id, device_index)`` of peer
        ``peer_id``: the peer id, unless its hello listed several devices (even if
        only one of them is a member here: the peer still wants a target)."""
        pid = peer_id if isinstance(peer_id, ID) else ID(peer_id)
        refs = self._peers.get(pid, ())
        if not refs:
            return str(pid)
        host_id = refs[0].host_id  # str(pid), kept since its hello: no base58 per delivery
        if refs[0].peer_id != host_id:
            return address(host_id, (site_id, device_index))
        return host_id

    def _is_connected(self, peer_id: ID) -> bool:
        return bool(self.host.get_network().connections.get(peer_id))

    def peer_connected(self, peer_id: ID) -> None:
        self.connections_opened += 1
        if self._misbehaviour.banned(str(peer_id)):
            log.info("%s: refused banned peer %s", self.name, peer_id)
            self.drop_peer(str(peer_id))
            return
        self._redialer.connected(peer_id)
        if self._nursery is not None:
            self._nursery.start_soon(self._say_hello, peer_id)

    def punish(self, peer_id: ID, reason: str, *, scored: bool = True) -> None:
        """Count ``reason`` against the peer; drop it if that got it banned."""
        log.info("%s: peer %s misbehaved: %s", self.name, peer_id, reason)
        if self._misbehaviour.record(str(peer_id), reason, scored=scored):
            log.warning("%s: banned peer %s (last: %s)", self.name, peer_id, reason)
            self.drop_peer(str(peer_id))

    def drop_peer(self, peer_id: str) -> None:
        """Forget and disconnect a (banned) peer."""
        pid = ID.from_base58(peer_id)
        self._redialer.forget(pid)
        if self._nursery is not None:
            self._nursery.start_soon(self._disconnect, pid)

    async def _disconnect(self, peer_id: ID) -> None:
        with trio.move_on_after(HELLO_TIMEOUT_S):
            with contextlib.suppress(*PEER_ERRORS, RuntimeError):
                await self.host.disconnect(peer_id)

    def peer_disconnected(self, peer_id: ID) -> None:
        if self._is_connected(peer_id):
            return
        self._redialer.lost(peer_id)
        self._hellos.pop(peer_id, None)
        self._refused.pop(peer_id, None)
        refs = self._peers.pop(peer_id, ())
        if refs:
            log.info("%s: peer %s left", self.name, peer_id)
        for ref in refs:
            self._bridge.to_asyncio(self._events.on_peer, False, ref)

    def _on_mdns(self, info: PeerInfo) -> None:
        """Called on zeroconf's thread: hand the peer over to trio."""
        self._bridge.to_trio(self._redialer.want, info)

    def _hello_bytes(self, exclude: ID) -> bytes:
        known = tuple(
            f"{addr}/p2p/{pid}"
            for pid, refs in list(self._peers.items())[:HELLO_KNOWN_PEERS]
            if pid != exclude
            for addr in refs[0].addrs[:1]
        )
        hello = Hello(listen_addrs=self.listen_addrs, known_peers=known)
        records = [Record(KIND_HELLO, hello.encode())]
        if self._devices:
            records.append(Record(KIND_DEVICES, encode_devices(self._devices)))
        return self._seal(HELLO_PROTOCOL, records, MAX_ENVELOPE_BYTES)

    async def _say_hello(self, peer_id: ID) -> None:
        """Exchange hellos with a peer; tried again (``HELLO_BACKOFF``, up to
        ``hello_tries`` times) while it stays connected and has not joined by a
        hello of its own."""
        tries = self._config.hello_tries
        fails = await retry_while_wanted(
            lambda: self._hello_once(peer_id),
            lambda: self._is_connected(peer_id) and peer_id not in self._hellos,
            backoff=HELLO_BACKOFF,
            tries=tries,
            rng=self._rng,
        )
        if fails >= tries:
            log.info("%s: no hello with %s after %d tries", self.name, peer_id, fails)

    async def _hello_once(self, peer_id: ID) -> bool:
        """One hello exchange: False if it failed or took over ``HELLO_TIMEOUT_S``."""
        with trio.move_on_after(HELLO_TIMEOUT_S):
            try:
                stream = await self.host.new_stream(peer_id, [TProtocol(HELLO_PROTOCOL)])
                try:
                    await write_frame(stream, self._hello_bytes(peer_id))
                    data = await read_frame(stream, MAX_ENVELOPE_BYTES)
                finally:
                    await close_stream(stream)
            except STREAM_ERRORS as exc:
                log.debug("%s: hello to %s failed: %s", self.name, peer_id, exc)
            else:
                self._accept_hello(peer_id, data)
                return True
        self.hello_failures += 1
        return False

    async def _serve_hello(self, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        with trio.move_on_after(HELLO_TIMEOUT_S):
            try:
                data = await read_frame(stream, MAX_ENVELOPE_BYTES)
                await write_frame(stream, self._hello_bytes(peer_id))
                await close_stream(stream)
            except STREAM_ERRORS as exc:
                log.debug("%s: hello from %s failed: %s", self.name, peer_id, exc)
                return
            self._accept_hello(peer_id, data)

    def _accept_hello(self, peer_id: ID, data: bytes, *, again: bool = False) -> None:
        """Check a peer's hello and list the devices it proves. One refused only
        because its signing device is not a member here is kept (the latest, while
        the connection lasts) and checked ``again`` on a change of membership: not
        counted again if still refused so, a fresh exchange if it is stale by then."""
        self._refused.pop(peer_id, None)  # the latest hello replaces a refused one
        if self._misbehaviour.banned(str(peer_id)):
            return
        verdict = self._validator.check(
            data,
            context=HELLO_PROTOCOL,
            members=self._members,
            sender_peer_id=peer_id.to_bytes(),
            hello=True,
        )
        if isinstance(verdict, Reason):
            if verdict is Reason.NOT_MEMBER:
                if self._is_connected(peer_id):
                    self._refused[peer_id] = data
                if again:
                    return  # counted when it came
            elif again and verdict is Reason.STALE:
                if self._nursery is not None:  # its hello is too old now: ask again
                    self._nursery.start_soon(self._say_hello, peer_id)
                return
            log.info("%s: rejected the hello of %s: %s", self.name, peer_id, verdict)
            self.punish(peer_id, f"hello:{verdict}", scored=verdict in LYING_REASONS)
            return
        try:
            kinds = [r.kind for r in verdict.records]
            if kinds not in ([KIND_HELLO], [KIND_HELLO, KIND_DEVICES]):
                raise FrameError("a hello is a record of kind 0x0001, then at most one of 0x0003")
            hello = Hello.decode(verdict.records[0].data)
            addrs = [_listen_addr(a) for a in hello.listen_addrs]
            proofs = decode_devices(verdict.records[1].data) if len(kinds) == 2 else ()
        except FrameError as exc:
            log.info("%s: malformed hello from %s: %s", self.name, peer_id, exc)
            self.punish(peer_id, "hello:malformed")
            return
        said = _Hello((verdict.site_id, verdict.device_index), proofs, hello.listen_addrs)
        devices = self._proved_devices(peer_id, said)
        if devices is None:
            return
        self._redialer.want(PeerInfo(peer_id, addrs))
        for known in hello.known_peers:
            try:
                self._redialer.want(parse_peer_addr(known))
            except (ValueError, multiaddr.exceptions.Error, *PEER_ERRORS) as exc:
                log.debug("%s: ignoring known peer %r: %s", self.name, known, exc)
        if not self._is_connected(peer_id):
            return
        self._hellos[peer_id] = said
        self._list(peer_id, said, devices)

    def _list(self, peer_id: ID, said: _Hello, devices: Sequence[DeviceId]) -> None:
        """List ``devices`` as the peer's devices: each new one joins, each listed
        before and not now leaves (a later hello without it, a revocation here)."""
        several = bool(said.proofs)  # it wants a target, even if one device is a member here
        refs = tuple(
            PeerRef(
                peer_id=address(str(peer_id), device if several else None),
                site_id=device[0],
                device_index=device[1],
                addrs=said.listen_addrs,
                host_id=str(peer_id),
            )
            for device in devices
        )
        before = {(r.site_id, r.device_index): r for r in self._peers.get(peer_id, ())}
        if refs:
            self._peers[peer_id] = refs
        else:
            self._peers.pop(peer_id, None)
        for ref in refs:
            if before.pop((ref.site_id, ref.device_index), None) is not None:
                continue
            log.info(
                "%s: peer %s joined (site %s device %d)",
                self.name,
                peer_id,
                ref.site_id,
                ref.device_index,
            )
            self._bridge.to_asyncio(self._events.on_peer, True, ref)
        for ref in before.values():
            log.info(
                "%s: peer %s no longer speaks for site %s device %d here",
                self.name,
                peer_id,
                ref.site_id,
                ref.device_index,
            )
            self._bridge.to_asyncio(self._events.on_peer, False, ref)

    # -- membership changes ---------------------------------------------------------

    def _watch_rosters(self) -> None:
        for roster in self._members.rosters:
            if roster not in self._watched:
                roster.watch(self._membership_changed)
                self._watched.append(roster)

    def _membership_changed(self) -> None:
        """A roster of this node changed (called where it changed, the asyncio
        side: only schedules :meth:`_recheck_peers`, once for many changes)."""
        if self._recheck_due:
            return
        self._recheck_due = True
        try:
            self._bridge.to_trio(self._recheck_peers)
        except BridgeClosed:
            self._recheck_due = False  # stopping: no peer to list any more

    def _recheck_peers(self) -> None:
        """Read each joined peer's hello again against the membership now: a device
        it listed that became a member joins, one no longer a member leaves; a
        hello whose signer is no longer a member, or with a proof that does not
        verify now that its device is a member, is refused as a whole, as it would
        be now: the peer is no longer listed. Then check each hello refused for a
        non-member signer again, as a fresh hello: one that passes now joins
        (docs/protocol-net.md, section 6)."""
        self._recheck_due = False
        for peer_id, said in list(self._hellos.items()):
            devices = None
            if self._members.device_pubkey(*said.first) is not None:
                devices = self._proved_devices(peer_id, said, again=True)
            if devices is None:
                del self._hellos[peer_id]
            self._list(peer_id, said, devices or ())
        for peer_id, data in list(self._refused.items()):
            self._accept_hello(peer_id, data, again=True)

    def _proved_devices(
        self, peer_id: ID, said: _Hello, *, again: bool = False
    ) -> list[DeviceId] | None:
        """The devices a hello proves: its signer, then each other device of its
        site that is a member here and signed the binding to ``peer_id``. None (the
        hello refused, counted) if it lists a device of another site, a device
        twice, or a proof that does not verify; a device that is not a member
        here (not enrolled yet, revoked) is left out and counted, unscored (not
        counted ``again``, when the hello is read again)."""
        devices: list[DeviceId] = [said.first]
        for proof in said.proofs:
            device = (proof.site_id, proof.device_index)
            reason = ""
            if proof.site_id != said.first[0]:
                reason = "foreign_device"
            elif device in devices:
                reason = "malformed"
            else:
                pubkey = self._members.device_pubkey(*device)
                if pubkey is None:
                    if not again:
                        log.info("%s: %s speaks for non-member %s", self.name, peer_id, device)
                        self.punish(peer_id, "hello:not_member_device", scored=False)
                    continue
                if not proof.verify(pubkey, peer_id.to_bytes()):
                    reason = "bad_device_proof"
            if reason:
                log.info("%s: refused the hello of %s: %s %s", self.name, peer_id, reason, device)
                tally = Reason.BAD_SIGNATURE if reason == "bad_device_proof" else Reason.MALFORMED
                self._validator.rejected_hellos[tally] += 1
                self.punish(peer_id, f"hello:{reason}")
                return None
            devices.append(device)
        return devices

    def peers(self) -> tuple[PeerRef, ...]:
        return tuple(ref for refs in self._peers.values() for ref in refs)

    # -- direct streams ----------------------------------------------------------

    def handle(self, protocol: str) -> None:
        async def serve(stream: INetStream) -> None:
            await self._serve_request(protocol, stream)

        self.host.set_stream_handler(TProtocol(protocol), serve)

    async def request(self, peer_id: str, protocol: str, frame: bytes, timeout_s: float) -> bytes:
        """Send one frame on a new stream and return the answer frame.

        Raises ``trio.TooSlowError`` after ``timeout_s``, :class:`RequestRefused`
        if the peer closed without answering, or a py-libp2p error.
        """
        with trio.fail_after(timeout_s):
            stream = await self.host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
            try:
                await write_frame(stream, frame)
                try:
                    answer = await read_frame(stream, MAX_STREAM_ENVELOPE_BYTES)
                except FrameError as exc:
                    raise RequestRefused(str(exc)) from exc
                if answer == REFUSAL:
                    raise RequestRefused("the peer refused the request")
                return answer
            finally:
                with trio.move_on_after(1):
                    await close_stream(stream)

    async def _serve_request(self, protocol: str, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id
        if self._misbehaviour.banned(str(peer_id)):
            with trio.move_on_after(1):
                with contextlib.suppress(*PEER_ERRORS):
                    await stream.reset()
            return
        try:
            with trio.fail_after(STREAM_READ_TIMEOUT_S):
                data = await read_frame(stream, MAX_STREAM_ENVELOPE_BYTES)
            verdict = self._validator.check(
                data,
                context=protocol,
                members=self._members,
                sender_peer_id=peer_id.to_bytes(),
                max_bytes=MAX_STREAM_ENVELOPE_BYTES,
            )
            if not isinstance(verdict, Reason) and not _request_shape(verdict):
                verdict = Reason.MALFORMED  # one record, after at most one target
            if isinstance(verdict, Reason):
                log.info(
                    "%s: rejected a %s request from %s: %s", self.name, protocol, peer_id, verdict
                )
                self.punish(peer_id, f"{protocol}:{verdict}", scored=verdict in LYING_REASONS)
                await write_frame(stream, REFUSAL)
                await close_stream(stream)
                return
            send, receive = trio.open_memory_channel[bytes | None](1)
            token = trio.lowlevel.current_trio_token()

            def deliver(answer: bytes | None) -> None:
                with contextlib.suppress(
                    trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
                ):
                    send.send_nowait(answer)

            def reply(answer: bytes | None) -> None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(deliver, answer)

            self._bridge.to_asyncio(self._events.on_request, protocol, verdict, str(peer_id), reply)
            with trio.fail_after(HANDLER_TIMEOUT_S):
                answer = await receive.receive()
            await write_frame(stream, REFUSAL if answer is None else answer)
            await close_stream(stream)
        except (*STREAM_ERRORS, trio.TooSlowError) as exc:  # type: ignore[misc]  # starred tuple
            log.info("%s: %s request from %s failed: %s", self.name, protocol, peer_id, exc)
            with trio.move_on_after(1):
                with contextlib.suppress(*PEER_ERRORS):
                    await stream.reset()


#: Rejections that no honest peer causes (they score towards a ban). The others
#: (``not_member``: a peer of another site that does not know; ``stale``: a clock;
#: ``replay``: a second path) are counted for hellos and requests but never ban.
LYING_REASONS = frozenset(
    {Reason.TOO_LARGE, Reason.MALFORMED, Reason.BAD_SIGNATURE, Reason.PEER_MISMATCH}
)


def _request_shape(envelope: Envelope) -> bool:
    """A request is one application record, after at most one target record."""
    kinds = [r.kind for r in envelope.records]
    return len(kinds) == 1 or (len(kinds) == 2 and kinds[0] == KIND_TARGET)


def _listen_addr(addr: str) -> multiaddr.Multiaddr:
    """A hello's listen address; :class:`FrameError` if it is not a plain multiaddr."""
    try:
        parsed = multiaddr.Multiaddr(addr)
    except (multiaddr.exceptions.Error, ValueError, TypeError) as exc:
        raise FrameError(f"listen address {addr[:80]!r} does not parse: {exc}") from exc
    protocols = [p.name for p in parsed.protocols()]
    if not protocols or "p2p" in protocols:
        raise FrameError(f"listen address {addr[:80]!r} is empty or names a peer id")
    return parsed


def _b58(peer_id: bytes) -> str:
    try:
        return str(ID(peer_id))
    except ValueError:
        return peer_id.hex()
