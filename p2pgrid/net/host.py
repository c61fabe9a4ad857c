"""PeerHost: the asyncio face of one device on a libp2p host.

Agents use only this: ``start``/``stop``, ``publish`` (paced, batched, signed),
``subscribe`` (async iterator of :class:`Delivery`), ``request``/``handle``
(one signed frame each way over a direct stream), ``peers`` and ``events``
(:class:`PeerJoined` / :class:`PeerLeft`). libp2p and trio stay behind
:class:`~p2pgrid.net.node.TrioNode` and the :class:`TrioBridge`.

A host speaks for one device; several devices of a gateway share one libp2p
host, a :class:`~p2pgrid.net.hub.HostHub`, each through a :class:`PeerHost` of
its own (``hub=``). Without a hub, a host makes a private hub of one. Peers are
named by address (:mod:`p2pgrid.net.devices`): the peer id of a host of one
device, ``<peer id>/<site>/<index>`` for a device of a host of several.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio
from libp2p.peer.id import ID

from p2pgrid.errors import ConfigError, ReportableError, TimeoutExpired
from p2pgrid.net.bridge import TrioBridge
from p2pgrid.net.config import NetConfig
from p2pgrid.net.devices import (
    KIND_TARGET,
    DeviceId,
    decode_error,
    encode_target,
    host_of,
    parse_address,
)
from p2pgrid.net.envelope import (
    FIRST_APP_KIND,
    KIND_ERROR,
    MAX_STREAM_ENVELOPE_BYTES,
    Envelope,
    Record,
    overhead,
)
from p2pgrid.net.errors import (
    BridgeClosed,
    DeviceAbsent,
    EnvelopeError,
    MalformedMessage,
    NetClosed,
    PeerMisbehaved,
    PeerUnreachable,
    RequestRefused,
    RequestRejected,
)
from p2pgrid.net.frames import PEER_ERRORS
from p2pgrid.net.gossip import FIRST_HOP_RECORD_BYTES, KIND_FIRST_HOP
from p2pgrid.net.hub import (
    DeviceKey,
    HostHub,
    host_key_seed,
    peer_id_of,
    response_context,
    seal_as,
)
from p2pgrid.net.membership import Membership, Topic
from p2pgrid.net.messages import Delivery, PeerEvent, PeerJoined, PeerLeft, WireMessage
from p2pgrid.net.node import LYING_REASONS, PeerRef, Reply, TrioNode
from p2pgrid.net.pacing import TokenBucket, TopicPacer
from p2pgrid.net.validator import Reason

__all__ = [
    "DeviceKey",
    "EventStream",
    "HostHub",
    "NetStats",
    "PeerHost",
    "Subscription",
    "host_key_seed",
    "peer_id_of",
]

log = logging.getLogger(__name__)

#: Default deadline of a request/response round trip.
REQUEST_TIMEOUT_S = 10.0
#: Extra time the asyncio side allows past a trio-side deadline.
BRIDGE_SLACK_S = 1.0
#: How long ``stop`` lets pending publishes drain.
DRAIN_TIMEOUT_S = 5.0


@dataclass
class NetStats:
    """Counters of one host (a snapshot from :meth:`PeerHost.stats`)."""

    published_records: int = 0
    published_envelopes: int = 0
    delivered_records: int = 0
    #: Deliveries a slow subscriber's full queue dropped.
    subscriber_drops: int = 0
    #: Envelopes known lost: holes in a sender's per-topic sequence numbers.
    sequence_gaps: int = 0
    accepted: int = 0
    #: Rejected topic messages and requests, by reason (each message once).
    rejected: dict[str, int] = field(default_factory=dict)
    #: Rejected hellos (a non-member or forger announcing itself), by reason.
    rejected_hellos: dict[str, int] = field(default_factory=dict)
    peers: int = 0
    #: Dials of wanted peers (bootstrap, learned) that failed (the peer down, unreachable).
    dial_failures: int = 0
    #: Dials of wanted peers started, connections opened (dialled or accepted),
    #: peers connected now, and hello exchanges that failed (each try).
    dials: int = 0
    connections_opened: int = 0
    connected: int = 0
    hello_failures: int = 0
    #: What each peer did wrong: peer id -> reason -> count (see net/misbehaviour.py).
    misbehaviour: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Peers banned now, and bans so far.
    banned: tuple[str, ...] = ()
    bans: int = 0
    #: Gossipsub mesh peers, summed over this host's topics (whom each message goes to).
    mesh_peers: int = 0
    #: Gossipsub RPCs queued to peers, and those py-libp2p's full 32-slot queues dropped.
    rpcs_queued: int = 0
    rpcs_dropped: int = 0
    idontwant_sent: int = 0
    #: Gossipsub RPCs that carried this host's signed peer record.
    sender_records: int = 0
    #: Message copies queued to peers (one per peer and message), and RPCs that
    #: carried an IHAVE (heartbeat gossip).
    messages_sent: int = 0
    ihave_sent: int = 0
    #: Relayed copies not sent because the author had sent the message to the
    #: peer (its first-hop record), and own messages a full queue dropped that
    #: were named in an IHAVE to that peer instead (``NetConfig.first_hop_claims``).
    relays_skipped: int = 0
    own_drops_gossiped: int = 0
    #: Departed peers whose prune backoff was forgotten, so that the restarted
    #: peer is grafted back at once (once per backoff period and peer).
    backoffs_forgiven: int = 0
    #: Pubsub stream opens to a connected peer that failed in negotiation (a
    #: starved start) and were tried again.
    stream_open_retries: int = 0


class Subscription:
    """Deliveries of one topic; iterate with ``async for``; ends when closed or stopped."""

    def __init__(self, host: PeerHost, topic: str, maxsize: int) -> None:
        self._host = host
        self.topic = topic
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue(maxsize)
        self._closed = False

    def _offer(self, delivery: Delivery | None) -> bool:
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            return False
        return True

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._host._subscriptions[self.topic].discard(self)
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        item = await self._queue.get()
        if item is None:
            self._closed = True
            raise StopAsyncIteration
        return item

    async def get(self) -> Delivery:
        """The next delivery; raises :class:`NetClosed` if the subscription ended."""
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise NetClosed("subscription closed") from None

    def pending(self) -> int:
        """Deliveries received and not yet taken."""
        return self._queue.qsize()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventStream:
    """:class:`PeerJoined` / :class:`PeerLeft` events; iterate with ``async for``."""

    def __init__(self, host: PeerHost, maxsize: int) -> None:
        self._host = host
        self._queue: asyncio.Queue[PeerEvent | None] = asyncio.Queue(maxsize)
        host._event_queues.add(self._queue)

    def close(self) -> None:
        self._host._event_queues.discard(self._queue)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[PeerEvent]:
        return self

    async def __anext__(self) -> PeerEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event


RequestHandler = Callable[[Delivery], Awaitable[WireMessage]]


class PeerHost:
    """One device's peer-to-peer host, usable from asyncio: on a libp2p host of its
    own, or on a gateway's :class:`HostHub` shared with the gateway's other devices."""

    def __init__(
        self,
        config: NetConfig,
        device: DeviceKey,
        topics: Sequence[Topic],
        *,
        bridge: TrioBridge | None = None,
        name: str | None = None,
        hub: HostHub | None = None,
    ) -> None:
        if not topics:
            raise ConfigError("a PeerHost needs at least one topic")
        self.config = config
        self.device = device
        self.device_id: DeviceId = (device.site.site_id, device.device_index)
        self.topics = {topic.name: topic for topic in topics}
        self.name = name or f"{device.site.site_id}/{device.device_index}"
        self._members = Membership.union(topic.members for topic in topics)
        self._owns_hub = hub is None
        self.hub = (
            hub if hub is not None else HostHub(config, [device], bridge=bridge, name=self.name)
        )
        self._validator = self.hub.validator
        self.misbehaviour = self.hub.misbehaviour
        self._epoch = secrets.randbits(32)
        self._seq: dict[str, int] = {}
        self._last_seq: dict[tuple[str, str, int, int], int] = {}
        self._subscriptions: dict[str, set[Subscription]] = {name: set() for name in self.topics}
        self._event_queues: set[asyncio.Queue[PeerEvent | None]] = set()
        self._handlers: dict[str, RequestHandler] = {}
        self._pacers: dict[str, TopicPacer] = {}
        self._stats = NetStats()
        self._runner: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._loops: list[asyncio.Task[None]] = []
        #: Request handlers in flight, and the protocol each answers.
        self._answering: dict[asyncio.Task[None], str] = {}
        self._stop_requested = asyncio.Event()
        self._state = "new"
        #: The libp2p peer id this device speaks from (its hub's), known before start.
        self.peer_id = self.hub.peer_id

    # -- lifecycle ---------------------------------------------------------------

    @property
    def address(self) -> str:
        """How peers (and the hub's other devices) address this device."""
        return self.hub.address(self.device_id)

    @property
    def listen_addrs(self) -> tuple[str, ...]:
        return self.hub.listen_addrs

    @property
    def addrs(self) -> tuple[str, ...]:
        """Listen multiaddrs ending in ``/p2p/<peer id>`` (for others' bootstrap lists)."""
        return self.hub.addrs

    @property
    def _node(self) -> TrioNode | None:
        return self.hub._node

    async def start(self) -> None:
        """Listen (the hub's first device), subscribe; returns once the host serves."""
        if self._state != "new":
            raise ConfigError(f"{self.name}: start called in state {self._state}")
        self._state = "starting"
        try:
            await self.hub.attach(self, list(self.topics.values()))
        except BaseException:
            self._state = "stopped"
            if self._owns_hub:
                await self.hub.stop()
            raise
        room = self.config.max_envelope_bytes - overhead(len(self.hub.peer_bytes))
        if self.config.first_hop_claims:
            room -= FIRST_HOP_RECORD_BYTES
        for topic in self.topics:
            bucket = TokenBucket(self.config.envelopes_per_s, self.config.envelope_burst)
            self._pacers[topic] = TopicPacer(
                room_bytes=room, max_pending=self.config.max_pending_records, bucket=bucket
            )
        ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(ready), name=f"net-host-{self.name}")
        await ready.wait()
        self._state = "running"
        log.info("%s: listening on %s", self.name, ", ".join(self.addrs))

    async def _run(self, ready: asyncio.Event) -> None:
        """Owns the host's asyncio tasks (one flush loop per topic, request handlers)."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            for topic, pacer in self._pacers.items():
                self._loops.append(tasks.create_task(self._flush_loop(topic, pacer)))
            ready.set()
            await self._stop_requested.wait()
            for task in (*self._loops, *self._answering):  # an answer now would go nowhere
                task.cancel()

    async def stop(self) -> None:
        """Stop input, drain pending publishes, leave the hub (a hub of its own: stop
        libp2p), end iterators. Idempotent."""
        if self._state in ("stopping", "stopped", "new"):
            self._state = "stopped" if self._state == "new" else self._state
            return
        self._state = "stopping"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                for pacer in self._pacers.values():
                    await pacer.drained()
        self._stop_requested.set()
        if self._runner is not None:
            await self._runner
        self.hub.detach(self)
        if self._owns_hub:
            await self.hub.stop()
        self._end_iterators()
        self._state = "stopped"
        log.info("%s: stopped", self.name)

    def _end_iterators(self) -> None:
        for subs in self._subscriptions.values():
            for sub in list(subs):
                sub.close()
        for queue in self._event_queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    async def __aenter__(self) -> PeerHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _running_node(self) -> tuple[TrioBridge, TrioNode]:
        if self._state != "running":
            raise NetClosed(f"{self.name}: host is {self._state}")
        return self.hub.running()

    # -- sealing -----------------------------------------------------------------

    def _seal_context(
        self, context: str, records: Sequence[Record], max_bytes: int, *, one_shot: bool = False
    ) -> bytes:
        """Seal for ``context``; ``one_shot`` contexts (a response's, unique per request)
        always use seq 1 and are not remembered, so answering does not grow memory."""
        if one_shot:
            seq = 1
        else:
            seq = self._seq.get(context, 0) + 1
            self._seq[context] = seq
        return seal_as(
            self.device,
            self.hub.peer_bytes,
            self._epoch,
            seq,
            context,
            records,
            max_bytes,
            clock=self.hub.clock,
        )

    def seal(self, topic: str, messages: Sequence[WireMessage]) -> bytes:
        """Sign ``messages`` as one envelope for ``topic`` now (see :meth:`publish_bytes`)."""
        return self._seal_context(
            topic, [_record(m) for m in messages], self.config.max_envelope_bytes
        )

    # -- publish / subscribe -----------------------------------------------------

    def _topic(self, topic: Topic | str) -> str:
        name = topic if isinstance(topic, str) else topic.name
        if name not in self.topics:
            raise ConfigError(f"{self.name}: {name} is not one of this host's topics")
        return name

    async def publish(self, topic: Topic | str, message: WireMessage) -> None:
        """Queue ``message`` for ``topic``; it leaves signed, paced and batched.

        Waits only while the topic's queue is full (back-pressure). Raises
        :class:`EnvelopeError` if the message can never fit an envelope.
        """
        self._running_node()
        record = _record(message)
        pacer = self._pacers[self._topic(topic)]
        if not pacer.fits(record):
            raise EnvelopeError(
                f"a {type(message).__name__} of {len(record.data)} bytes exceeds the "
                f"{self.config.max_envelope_bytes}-byte envelope; send it over a stream"
            )
        await pacer.put(record)
        self._stats.published_records += 1

    async def flush(self) -> None:
        """Wait until every message published so far was handed to libp2p."""
        for pacer in self._pacers.values():
            await pacer.drained()

    async def publish_bytes(self, topic: str, data: bytes) -> None:
        """Publish already sealed bytes as they are (relays, tools, adversarial tests)."""
        bridge, node = self._running_node()
        await bridge.run(node.publish, topic, data)

    async def _flush_loop(self, topic: str, pacer: TopicPacer) -> None:
        while True:
            records = await pacer.next_batch()
            try:
                bridge, node = self.hub.running()
                # The peers libp2p sends it to at once (same thread, just before):
                # relays skip them (p2pgrid.net.gossip, first-hop records).
                first_hop = node.gossipsub.first_hop_record(topic)
                if first_hop is not None:
                    records = [*records, Record(KIND_FIRST_HOP, first_hop)]
                data = self._seal_context(topic, records, self.config.max_envelope_bytes)
                await bridge.run(node.publish, topic, data)
            except (BridgeClosed, NetClosed):
                return
            except PEER_ERRORS as exc:
                log.warning("%s: publish on %s failed: %s", self.name, topic, exc)
            self._stats.published_envelopes += 1
            pacer.sent()

    def subscribe(self, topic: Topic | str) -> Subscription:
        """Deliveries on ``topic`` from other members (the hub's other devices
        too), from now on."""
        name = self._topic(topic)
        sub = Subscription(self, name, self.config.subscriber_queue)
        if self._state in ("stopping", "stopped"):
            sub.close()
        else:
            self._subscriptions[name].add(sub)
        return sub

    # -- from the hub (called on the loop) ---------------------------------------

    def _deliver(self, topic: str, envelope: Envelope, peer: str) -> None:
        """An accepted envelope on ``topic`` from the device at address ``peer``."""
        self._count_gaps(topic, envelope)
        for record in envelope.records:
            if record.kind < FIRST_APP_KIND:
                continue
            delivery = Delivery(
                topic=topic,
                site_id=envelope.site_id,
                device_index=envelope.device_index,
                peer_id=peer,
                kind=record.kind,
                data=record.data,
                sent_at_ms=envelope.timestamp_ms,
                on_malformed=self._reporter(peer),
            )
            self._stats.delivered_records += 1
            for sub in self._subscriptions.get(topic, ()):
                if not sub._offer(delivery):
                    self._stats.subscriber_drops += 1

    def _count_gaps(self, topic: str, envelope: Envelope) -> None:
        key = (topic, envelope.site_id, envelope.device_index, envelope.epoch)
        last = self._last_seq.get(key)
        if last is None or envelope.seq > last:
            if last is not None:
                self._stats.sequence_gaps += envelope.seq - last - 1
            self._last_seq[key] = envelope.seq
        elif self._stats.sequence_gaps > 0:
            self._stats.sequence_gaps -= 1  # a late arrival filled a hole

    def _on_peer(self, joined: bool, peer: PeerRef) -> None:
        event: PeerEvent = PeerJoined(peer) if joined else PeerLeft(peer)
        for queue in self._event_queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    def _crashed(self) -> None:
        """The libp2p host died: end subscriptions and event streams; calls now fail."""
        if self._state != "running":
            return
        self._state = "crashed"
        self._end_iterators()

    def _serve(
        self,
        protocol: str,
        envelope: Envelope,
        record: Record,
        peer: str,
        reply: Reply,
        context: str,
        *,
        named: bool,
    ) -> None:
        """Answer a validated request for this device (``named``: it named the device,
        so a refusal may say why)."""
        handler = self._handlers.get(protocol)
        if handler is None or self._tasks is None or self._state != "running":
            why = f"device {self.device_id[0]}/{self.device_id[1]} does not serve {protocol}"
            reply(self.hub.error(context, why) if named else None)
            return
        task = self._tasks.create_task(
            self._answer(handler, protocol, envelope, record, peer, reply, context)
        )
        self._answering[task] = protocol
        task.add_done_callback(self._answered)

    async def _answer(
        self,
        handler: RequestHandler,
        protocol: str,
        envelope: Envelope,
        record: Record,
        peer: str,
        reply: Reply,
        context: str,
    ) -> None:
        request = Delivery(
            topic=protocol,
            site_id=envelope.site_id,
            device_index=envelope.device_index,
            peer_id=peer,
            kind=record.kind,
            data=record.data,
            sent_at_ms=envelope.timestamp_ms,
            on_malformed=self._reporter(peer),
        )
        try:
            answer = await handler(request)
            data = self._seal_context(
                context, [_record(answer)], MAX_STREAM_ENVELOPE_BYTES, one_shot=True
            )
        except asyncio.CancelledError:  # stopped or withdrawn: no answer, at once
            reply(None)
            raise
        except PeerMisbehaved as exc:
            if not isinstance(exc, MalformedMessage):  # Delivery.decode counted those
                self.report_misbehaviour(peer, f"{protocol}:{exc.reason}")
            log.info("%s: %s handler refused %s: %s", self.name, protocol, peer, exc)
            reply(None)
        except ReportableError as exc:
            log.info("%s: %s handler refused %s: %s", self.name, protocol, peer, exc)
            reply(None)
        except Exception:
            log.exception("%s: %s handler failed", self.name, protocol)
            reply(None)
        else:
            reply(data)

    # -- request / response ------------------------------------------------------

    def handle(self, protocol: str, handler: RequestHandler) -> None:
        """Answer requests on ``protocol`` (a libp2p protocol id) with ``handler``.

        Only member devices reach the handler (signature, replay and peer binding
        checked); raising a :class:`ReportableError` refuses the request.
        """
        bridge, node = self._running_node()
        self._handlers[protocol] = handler
        bridge.to_trio(node.handle, protocol)

    @property
    def serving(self) -> frozenset[str]:
        """The protocols this device answers now (:meth:`handle`)."""
        return frozenset(self._handlers)

    def withdraw(self, protocols: Iterable[str]) -> None:
        """Stop answering ``protocols``: their handlers go and their answers in
        flight are cancelled (no reply: the requester's call fails as for a peer
        gone); a request on one now gets the error answer of a protocol this
        device does not serve. The host runs on for its other protocols (a
        gateway's failed device whose view carries its site's replica keeps the
        replica's sync protocol, docs/architecture.md "Gateways")."""
        gone = set(protocols)
        for protocol in gone:
            self._handlers.pop(protocol, None)
        for task, protocol in list(self._answering.items()):
            if protocol in gone:
                task.cancel()

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answering.pop(task, None)

    async def request(
        self,
        peer_id: str,
        protocol: str,
        message: WireMessage,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> Delivery:
        """Send ``message`` to the device at address ``peer_id`` (a peer id, or
        ``<peer id>/<site>/<index>``: see :meth:`peers`) on a direct stream (a call,
        for a device of this host's hub) and return its signed answer.

        Raises :class:`TimeoutExpired` after ``timeout_s``, :class:`PeerUnreachable`
        if the peer is gone (:class:`DeviceAbsent`: it answered that the device is
        not served there, not running or not serving ``protocol``),
        :class:`RequestRejected` if it refused or answered with an envelope that
        fails validation.
        """
        bridge, node = self._running_node()
        try:
            host_id, device = parse_address(peer_id)
        except ValueError as exc:
            raise RequestRejected(str(exc)) from exc
        records = [Record(KIND_TARGET, encode_target(device))] if device is not None else []
        records.append(_record(message))
        frame = self._seal_context(protocol, records, MAX_STREAM_ENVELOPE_BYTES)
        try:
            async with asyncio.timeout(timeout_s + BRIDGE_SLACK_S):
                if self.hub.is_own(host_id):
                    data = await self._call(protocol, frame, peer_id)
                else:
                    data = await bridge.run(node.request, host_id, protocol, frame, timeout_s)
        except (TimeoutError, trio.TooSlowError) as exc:
            raise TimeoutExpired(f"{protocol} request to {peer_id} timed out") from exc
        except RequestRefused as exc:
            raise RequestRejected(f"{peer_id} refused {protocol}: {exc}") from exc
        except PEER_ERRORS as exc:
            raise PeerUnreachable(f"{peer_id} unreachable for {protocol}: {exc}") from exc
        verdict = self._validator.check(
            data,
            context=response_context(protocol, frame),
            members=self._members,
            sender_peer_id=_peer_bytes(host_id),
            max_bytes=MAX_STREAM_ENVELOPE_BYTES,
        )
        if isinstance(verdict, Reason):
            scored = verdict in LYING_REASONS
            self.report_misbehaviour(peer_id, f"{protocol}:answer_{verdict}", scored=scored)
            raise RequestRejected(
                f"{peer_id} answered {protocol} with an invalid envelope: {verdict}"
            )
        if len(verdict.records) != 1:
            self.report_misbehaviour(peer_id, f"{protocol}:answer_records")
            count = len(verdict.records)
            raise RequestRejected(f"{peer_id} answered {protocol} with {count} records")
        record = verdict.records[0]
        if record.kind == KIND_ERROR:  # the device is not there now: ask again later
            raise DeviceAbsent(f"{peer_id} refused {protocol}: {decode_error(record.data)}")
        if device is not None and (verdict.site_id, verdict.device_index) != device:
            self.report_misbehaviour(peer_id, f"{protocol}:answer_other_device")
            raise RequestRejected(f"{peer_id} answered {protocol} as another device")
        return Delivery(
            topic=protocol,
            site_id=verdict.site_id,
            device_index=verdict.device_index,
            peer_id=peer_id,
            kind=record.kind,
            data=record.data,
            sent_at_ms=verdict.timestamp_ms,
            on_malformed=self._reporter(peer_id),
        )

    async def _call(self, protocol: str, frame: bytes, peer: str) -> bytes:
        """A request to a device of this hub: validated as one from a stream (this
        host is the sender), handed to the device's handler, no stream."""
        verdict = self._validator.check(
            frame,
            context=protocol,
            members=self._members,
            sender_peer_id=self.hub.peer_bytes,
            max_bytes=MAX_STREAM_ENVELOPE_BYTES,
        )
        if isinstance(verdict, Reason):
            raise RequestRefused(f"the request failed validation: {verdict}")
        answer: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def reply(data: bytes | None) -> None:
            if not answer.done():
                answer.set_result(data)

        self.hub.dispatch(protocol, verdict, self.address, reply)
        data = await answer
        if data is None:
            raise RequestRefused(f"{peer} refused the request")
        return data

    # -- misbehaviour ------------------------------------------------------------

    def report_misbehaviour(self, peer_id: str, reason: str, *, scored: bool = True) -> None:
        """Count ``reason`` against the peer at address ``peer_id``; past the
        threshold its peer id (every device behind it) is disconnected and refused
        for a while (see :mod:`p2pgrid.net.misbehaviour`). ``scored=False``: counted
        only (something an honest peer may cause)."""
        self.hub.report_misbehaviour(peer_id, reason, scored=scored)

    def _reporter(self, peer_id: str) -> Callable[[str], None]:
        def report(reason: str) -> None:
            self.report_misbehaviour(peer_id, reason)

        return report

    # -- peers -------------------------------------------------------------------

    async def wait_for_peer(self, peer_id: str, topic: Topic | str, *, timeout_s: float) -> None:
        """Wait until the peer at address ``peer_id`` is subscribed to ``topic`` as
        seen from here (at once for a device of this hub).

        Raises :class:`TimeoutExpired` after ``timeout_s``.
        """
        bridge, node = self._running_node()
        name = self._topic(topic)
        host_id = host_of(peer_id)
        if self.hub.is_own(host_id):
            return
        try:
            async with asyncio.timeout(timeout_s + BRIDGE_SLACK_S):
                await bridge.run(node.wait_subscribed, host_id, name, timeout_s)
        except (TimeoutError, trio.TooSlowError) as exc:
            raise TimeoutExpired(f"{peer_id} did not join {name} within {timeout_s}s") from exc

    def peers(self) -> tuple[PeerRef, ...]:
        """Devices proved by connected peers' signed hellos, then the other running
        devices of this host's hub; each :class:`PeerRef`'s ``peer_id`` is the
        address to request it at."""
        if self._state != "running":
            return ()
        return self.hub.peers(exclude=self.device_id)

    def mesh_peers(self, topic: Topic | str) -> frozenset[str]:
        """The peers this host's gossipsub sends ``topic``'s messages to at once (its
        mesh); the topic's other subscribers hear of a message later, through a
        mesh peer's relay or the gossip of the next heartbeat."""
        name = self._topic(topic)
        node = self.hub._node
        if node is None:
            return frozenset()
        return frozenset(str(peer) for peer in node.gossipsub.mesh.get(name, ()))

    def first_hop_peers(self, topic: Topic | str) -> frozenset[str]:
        """The peers a message this host publishes on ``topic`` goes to at once: its
        mesh, or with ``NetConfig.flood_publish`` every peer subscribed to the topic;
        any other peer hears of it later, through a relay or a heartbeat's gossip."""
        name = self._topic(topic)
        if self._node is None:
            return frozenset()
        return frozenset(str(peer) for peer in self._node.gossipsub.first_hop(name))

    def events(self) -> EventStream:
        """Devices joining and leaving from now on (``async for``); ends when the host stops."""
        stream = EventStream(self, self.config.subscriber_queue)
        if self._state in ("stopping", "stopped"):
            stream.close()
        return stream

    def stats(self) -> NetStats:
        """This device's counters; those of libp2p (peers, validation, misbehaviour,
        gossipsub) are its hub's, shared with the hub's other devices."""
        snapshot = NetStats(**vars(self._stats))
        snapshot.accepted = self._validator.accepted
        snapshot.rejected = self._validator.counts()
        snapshot.rejected_hellos = self._validator.counts(hellos=True)
        snapshot.peers = len(self.peers())
        snapshot.misbehaviour = self.misbehaviour.counts()
        snapshot.banned = self.misbehaviour.banned_peers()
        snapshot.bans = self.misbehaviour.bans
        node = self.hub._node
        if node is not None:
            snapshot.dial_failures = node.dial_failures
            snapshot.dials = node.dials
            snapshot.connections_opened = node.connections_opened
            snapshot.connected = len(node.host.get_connected_peers())
            snapshot.hello_failures = node.hello_failures
            gossip = node.gossipsub
            snapshot.mesh_peers = sum(gossip.mesh_size(topic) for topic in self.topics)
            snapshot.rpcs_queued = gossip.counters.rpcs_queued
            snapshot.rpcs_dropped = gossip.counters.rpcs_dropped
            snapshot.idontwant_sent = gossip.counters.idontwant_sent
            snapshot.sender_records = gossip.counters.sender_records
            snapshot.messages_sent = gossip.counters.messages_sent
            snapshot.ihave_sent = gossip.counters.ihave_sent
            snapshot.relays_skipped = gossip.counters.relays_skipped
            snapshot.own_drops_gossiped = gossip.counters.own_drops_gossiped
            snapshot.backoffs_forgiven = gossip.counters.backoffs_forgiven
            snapshot.stream_open_retries = gossip.counters.stream_open_retries
        return snapshot


def _record(message: WireMessage) -> Record:
    if message.KIND < FIRST_APP_KIND:
        raise EnvelopeError(f"kind {message.KIND:#06x} is reserved for the net layer")
    return Record(message.KIND, message.encode())


def _peer_bytes(peer_id: str) -> bytes:
    return ID.from_base58(peer_id).to_bytes()
