"""Replication of the log over real libp2p hosts (a :class:`p2pgrid.net.PeerHost`).

The counterpart of :mod:`p2pgrid.testing.loopback` for the real network: the
:class:`Replicator` does the protocol, :class:`HostTransport` carries its bytes,
and :class:`NetReplica` owns the tasks that feed it:

- **gossip**: entries this agent wrote are published (``ANNOUNCE``) on the site's
  log topic; announcements received there are ingested, and one that leaves a
  gap makes this replica pull from its sender;
- **anti-entropy**: with a peer of the same site when it joins, with a few
  random peers (one address per libp2p host) every ``anti_entropy_interval_s``,
  and again (backing off) after a round that failed. A late joiner, a restarted
  agent or a healed partition thereby reaches the same log;
- **its own chain back** (:meth:`NetReplica.take_own_chain`, awaited by a
  node's :class:`~p2pgrid.ledger.LogWriter` before its first entry): a node
  whose log file is older than its last entry (restored, lost, emptied) takes
  the entries of its own chain that its peers hold before it signs one more,
  rather than sign a second entry at a sequence number they hold.

Every sync message (the bytes of :mod:`p2pgrid.ledger.wire`) travels as one net
record of kind :data:`LOG_RECORD_KIND`; the net layer signs and checks the
envelope (member device of the site), :class:`Replicator` decodes the message
once. The byte-level description is in docs/protocol-log.md, section 6.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar, Self

from p2pgrid.backoff import Backoff
from p2pgrid.errors import ConfigError, FatalError, RetryableError
from p2pgrid.identity import Roster
from p2pgrid.ledger.entry import Author, Entry
from p2pgrid.ledger.errors import LedgerError
from p2pgrid.ledger.heads import Heads
from p2pgrid.ledger.store import LogStore
from p2pgrid.ledger.sync import (
    SYNC_PROTOCOL_ID,
    Replicator,
    SyncMisbehaviour,
    SyncProtocolError,
    left_a_gap,
    log_topic,
)
from p2pgrid.ledger.wire import MAX_ENTRIES_PER_MESSAGE
from p2pgrid.net import (
    Delivery,
    EventStream,
    PeerHost,
    PeerJoined,
    PeerLeft,
    PeerRef,
    RequestRejected,
    Subscription,
    Topic,
    WrongKind,
)
from p2pgrid.net import Membership as NetMembership
from p2pgrid.net.devices import host_of
from p2pgrid.net.membership import EVERY_ROLE

log = logging.getLogger(__name__)

#: The net record kind of every log sync message (requests, replies, announcements).
LOG_RECORD_KIND = 0x0200
#: Largest ANNOUNCE published in one record; the pubsub envelope holds 64 KiB.
MAX_ANNOUNCE_BYTES = 48 * 1024
#: Deadline of one request/reply on the sync stream.
SYNC_REQUEST_TIMEOUT_S = 30.0
#: Deadline of one whole anti-entropy round with one peer (a fresh replica pulls
#: ~100k entries in well under this).
SYNC_ROUND_TIMEOUT_S = 300.0
#: Deadline of one push (a direct ANNOUNCE and its PUSHED answer) to one peer; the
#: push is an acceleration: gossip and anti-entropy still deliver what it did not.
PUSH_TIMEOUT_S = 5.0
#: How long a node's first own entry waits for a peer to say what it holds of the
#: node's chain (:meth:`NetReplica.take_own_chain`).
OWN_CHAIN_WAIT_S = 10.0
#: First delay before retrying a failed round with a peer; doubles (jittered) up to
#: ``ReplicaConfig.retry_max_s`` (by default the anti-entropy interval).
RETRY_MIN_S = 0.25


@dataclasses.dataclass(frozen=True, slots=True)
class LogRecord:
    """One sync message (the encoding of :mod:`p2pgrid.ledger.wire`) as a net record."""

    KIND: ClassVar[int] = LOG_RECORD_KIND
    data: bytes

    def encode(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return cls(data)


@dataclasses.dataclass(frozen=True)
class ReplicaConfig:
    """How a :class:`NetReplica` gossips and runs anti-entropy. Built once."""

    #: Mean time between periodic anti-entropy rounds (jittered by +-50 %).
    anti_entropy_interval_s: float = 10.0
    #: Peers of the site pulled from in each periodic round, chosen at random, at
    #: most one device address per libp2p host.
    peers_per_round: int = 2
    #: Rounds with different peers that may run at the same time.
    max_concurrent_rounds: int = 2
    request_timeout_s: float = SYNC_REQUEST_TIMEOUT_S
    round_timeout_s: float = SYNC_ROUND_TIMEOUT_S
    #: TEST ONLY: drop this fraction of received announcements on receipt, as if
    #: gossip had lost them (anti-entropy must make up for it). 0 in production.
    gossip_loss: float = 0.0
    #: Seed of the random choices (peers per round, jitter, gossip loss).
    seed: int | None = None
    #: First delay before retrying a failed round with one peer.
    retry_min_s: float = RETRY_MIN_S
    #: Longest delay between retries with one peer (``None``: the anti-entropy interval).
    retry_max_s: float | None = None
    #: How long a node's first own entry after a start waits for a peer of the site
    #: to answer (:meth:`NetReplica.take_own_chain`). When none did, a node whose
    #: log holds entries of its own writes on from them (a WARNING)...
    own_chain_wait_s: float = OWN_CHAIN_WAIT_S
    #: ...and so does one whose log holds none of its own, unless this is True: it
    #: then waits on for a peer (a WARNING each ``own_chain_wait_s``), as its peers
    #: may hold its chain (an operator restoring a node on an empty data directory).
    #: Off by default: a brand-new node alone (a gateway of a whole site before its
    #: utility runs) must still write.
    empty_chain_waits: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.gossip_loss <= 1.0:
            raise ConfigError("gossip_loss must be within 0..1")
        if self.anti_entropy_interval_s <= 0 or self.peers_per_round < 1:
            raise ConfigError("anti_entropy_interval_s must be > 0 and peers_per_round >= 1")
        if self.max_concurrent_rounds < 1:
            raise ConfigError("max_concurrent_rounds must be >= 1")
        if not self.own_chain_wait_s > 0:
            raise ConfigError("own_chain_wait_s must be > 0")
        _ = self.retry_backoff  # checks the retry bounds now, not at the first failure

    @property
    def retry_backoff(self) -> Backoff:
        """The back-off of retries with one peer that keeps failing."""
        cap = self.anti_entropy_interval_s if self.retry_max_s is None else self.retry_max_s
        return Backoff(initial_s=min(self.retry_min_s, cap), max_s=cap)


@dataclasses.dataclass
class ReplicaStats:
    """Counters of one :class:`NetReplica` (a snapshot from :meth:`NetReplica.stats`)."""

    announced: int = 0  # entries this replica published
    gossip_received: int = 0  # announcements received (before the test-only loss)
    gossip_dropped: int = 0  # announcements dropped by ``gossip_loss``
    gossip_appended: int = 0  # entries that joined the log from announcements
    rounds: int = 0  # anti-entropy rounds completed
    rounds_failed: int = 0
    rounds_crashed: int = 0  # rounds ended by an unexpected exception (a bug: logged)
    pulled_appended: int = 0  # entries that joined the log from anti-entropy
    requests_served: int = 0
    pushes: int = 0  # pushes to a peer that it answered PUSHED
    pushes_failed: int = 0  # pushes refused, unanswered or undeliverable
    pushes_received: int = 0  # decodable pushes from peers (refused entries too)
    push_appended: int = 0  # entries that joined the log from pushes


class ReplicaState(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


_TRANSITIONS = {
    ReplicaState.NEW: {ReplicaState.RUNNING, ReplicaState.STOPPED},
    ReplicaState.RUNNING: {ReplicaState.STOPPING},
    ReplicaState.STOPPING: {ReplicaState.STOPPED},
    ReplicaState.STOPPED: set[ReplicaState](),
}


class ReplicaStopped(LedgerError):
    """The replica is not running (a request reaching it is refused)."""


def log_net_topic(roster: Roster) -> Topic:
    """The net topic a site's log is announced on: give it to the :class:`PeerHost`.

    Its members are every member of the site as the replica's log enrols them
    (``roster`` is :attr:`LogStore.roster`): the devices, the owner and the
    utility (each speaking for itself); a :class:`NetReplica` replicates with them.
    """
    return Topic(log_topic(roster.site.site_id), NetMembership(frozenset({roster}), EVERY_ROLE))


class HostTransport:
    """:class:`~p2pgrid.ledger.sync.SyncTransport` over a :class:`PeerHost`."""

    def __init__(self, host: PeerHost, topic: str, *, request_timeout_s: float) -> None:
        self._host = host
        self._topic = topic
        self._timeout_s = request_timeout_s

    async def request(self, peer: str, payload: bytes) -> bytes:
        try:
            reply = await self._host.request(
                peer, SYNC_PROTOCOL_ID, LogRecord(payload), timeout_s=self._timeout_s
            )
            return reply.decode(LogRecord).data
        except (RequestRejected, WrongKind) as exc:  # refused (e.g. not started yet)
            raise SyncProtocolError(f"{peer}: {exc}") from exc

    async def publish(self, payload: bytes) -> None:
        await self._host.publish(self._topic, LogRecord(payload))


class NetReplica:
    """One agent's replica on the network: serves its log, gossips, runs anti-entropy.

    The caller owns the store and the host: start the host, then the replica;
    stop the replica, then the host, and close the store last.
    """

    def __init__(
        self,
        store: LogStore,
        host: PeerHost,
        config: ReplicaConfig,
        *,
        topic: Topic | str | None = None,
        serves: Sequence[str] = (),
    ) -> None:
        """``serves``: the addresses of the other hosts that will answer from this
        very store (:meth:`serve_on`), known before they start, so that none is
        taken for a peer in between (their hub announces them as it attaches them)."""
        self.store = store
        self.host = host
        self.config = config
        site_id = store.membership.site.site_id
        #: Sites whose hosts this replica gossips and syncs with: the topic's members.
        self.sites = topic.members.site_ids if isinstance(topic, Topic) else frozenset({site_id})
        if host.device.site.site_id not in self.sites:
            raise ConfigError(f"[{store.name}] the host's site is not a member of the log topic")
        name = topic if isinstance(topic, str) else topic.name if topic else log_topic(site_id)
        self.topic = name
        self.replicator = Replicator(
            store, HostTransport(host, name, request_timeout_s=config.request_timeout_s)
        )
        self._rng = random.Random(config.seed)
        self._backoff = config.retry_backoff
        self._stats = ReplicaStats()
        self._state = ReplicaState.NEW
        self._wanted: set[str] = set()  # peers to pull from as soon as a slot is free
        self._syncing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_concurrent_rounds)
        self._changed = asyncio.Condition()
        self._stop_requested = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._children: set[asyncio.Task[None]] = set()  # rounds and retry timers
        self._subscription: Subscription | None = None
        self._events: EventStream | None = None
        #: The addresses of the other hosts this replica serves on (:meth:`serve_on`,
        #: ``serves``): they answer from this very store, so they are never synced with.
        self._own_peers: set[str] = set(serves)
        #: Peers whose round was misbehaviour since the start: what their heads
        #: claim of a chain is not waited for (:meth:`take_own_chain`).
        self._misbehaved: set[str] = set()

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def state(self) -> ReplicaState:
        return self._state

    def _move(self, state: ReplicaState) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise LedgerError(f"[{self.name}] replica cannot go from {self._state} to {state}")
        log.info("[%s] replica %s -> %s", self.name, self._state.value, state.value)
        self._state = state

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe, serve sync requests, start the loops; returns once serving.

        The host must be running and have the log topic (:func:`log_net_topic`).
        """
        if self._state is not ReplicaState.NEW:
            raise LedgerError(f"[{self.name}] start called in state {self._state.value}")
        if self.topic not in self.host.topics:
            raise ConfigError(f"[{self.name}] the host is not on the log topic {self.topic}")
        self._events = self.host.events()  # before the peer snapshot: no join is missed
        self._subscription = self.host.subscribe(self.topic)
        self.host.handle(SYNC_PROTOCOL_ID, self._serve)
        self._move(ReplicaState.RUNNING)
        ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(ready), name=f"replica-{self.name}")
        await ready.wait()
        for peer in self._site_peers():
            self.request_sync(peer)
        log.info("[%s] replica serving on %s", self.name, self.topic)

    async def _run(self, ready: asyncio.Event) -> None:
        """Owns the replica's tasks: gossip, peer events, the scheduler, rounds."""
        assert self._subscription is not None
        assert self._events is not None
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            loops = [
                tasks.create_task(self._gossip_loop(self._subscription)),
                tasks.create_task(self._peer_loop(self._events)),
                tasks.create_task(self._periodic_loop()),
                tasks.create_task(self._schedule_loop()),
            ]
            ready.set()
            await self._stop_requested.wait()
            # Rounds in flight are cancelled too; a batch being written finishes
            # first (LogStore.ingest_many is not interruptible once started).
            for task in (*loops, *self._children):
                task.cancel()
        self._tasks = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start a round or a retry timer in the replica's task group."""
        if self._tasks is None or self._state is not ReplicaState.RUNNING:
            coro.close()
            return
        task = self._tasks.create_task(coro)
        self._children.add(task)
        task.add_done_callback(self._children.discard)

    async def stop(self) -> None:
        """Stop input (gossip, peer events, requests), end the rounds. Idempotent.

        Does not stop the host nor close the store: their owner does, after this.
        """
        if self._state is ReplicaState.NEW:
            self._move(ReplicaState.STOPPED)
            return
        if self._state is not ReplicaState.RUNNING:
            if self._runner is not None:
                await asyncio.shield(self._runner)
            return
        self._move(ReplicaState.STOPPING)
        if self._subscription is not None:
            self._subscription.close()
        if self._events is not None:
            self._events.close()
        self._stop_requested.set()
        if self._runner is not None:
            await self._runner
        self._move(ReplicaState.STOPPED)
        async with self._changed:
            self._changed.notify_all()

    def serve_on(self, host: PeerHost) -> None:
        """Answer the sync requests (and pushes) that reach ``host`` too, from this
        replica's store: a site gateway's other devices' hosts, each asked for the
        log by its peers' anti-entropy, while gossip and this replica's own rounds
        run on :attr:`host` alone. ``host`` is never synced with (it holds this
        very log). A gap a push to ``host`` leaves is pulled from its sender
        through :attr:`host`, as any round. Call it while the replica runs, after
        ``host`` started; the handler goes when ``host`` stops."""
        if self._state is not ReplicaState.RUNNING:
            raise LedgerError(f"[{self.name}] serve_on called in state {self._state.value}")
        if host.device.site.site_id not in self.sites:
            raise ConfigError(f"[{self.name}] {host.name} is not a member of the log topic")
        # Its address: a view on a hub shares the hub's peer id with this replica's host.
        self._own_peers.add(host.address)
        self._wanted.discard(host.address)
        host.handle(SYNC_PROTOCOL_ID, self._serve)

    async def __aenter__(self) -> NetReplica:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what agents and tests use -----------------------------------------------

    async def publish(self, entries: Sequence[Entry]) -> None:
        """Announce entries already in the store (written by this agent's LogWriter).

        Best effort: if the host cannot publish now, anti-entropy spreads them later.
        """
        for chunk in _announce_chunks(entries):
            try:
                await self.replicator.publish(chunk)
            except RetryableError as exc:
                log.info("[%s] announcing %d entries failed: %s", self.name, len(chunk), exc)
                return
            self._stats.announced += len(chunk)
        await self._notify()

    async def push(self, entries: Sequence[Entry], peers: Sequence[str] | None = None) -> int:
        """Hand entries already in the store over direct streams, now, all at once,
        to those of ``peers`` (default: the connected members of the site) that an
        announcement does not reach at once (:meth:`PeerHost.first_hop_peers`: with
        flood publishing every peer subscribed to the log topic gets it at once; else
        only the gossipsub mesh), which would hear of it only through a relay or the
        next heartbeat's gossip (publish too, for the others). Returns how many peers
        took them. Best effort, like :meth:`publish`: a peer that is gone, slow
        (:data:`PUSH_TIMEOUT_S`) or refuses is logged, and gossip and anti-entropy
        deliver the entries anyway."""
        reached = self.host.first_hop_peers(self.topic)  # libp2p peer ids: a hub's devices too
        targets = [
            p
            for p in (self._site_peers() if peers is None else peers)
            if p not in self._own_peers and host_of(p) not in reached
        ]
        if not entries or not targets or self._state is not ReplicaState.RUNNING:
            return 0
        chunks = _announce_chunks(entries)
        async with asyncio.TaskGroup() as tasks:
            done = [tasks.create_task(self._push_to(peer, chunks)) for peer in targets]
        return sum(task.result() for task in done)

    async def _push_to(self, peer: str, chunks: list[list[Entry]]) -> bool:
        try:
            async with asyncio.timeout(PUSH_TIMEOUT_S):
                for chunk in chunks:
                    await self.replicator.push(peer, chunk)
        except (RetryableError, TimeoutError) as exc:
            if isinstance(exc, SyncMisbehaviour):
                self.host.report_misbehaviour(peer, f"sync:{exc.reason}")
            self._stats.pushes_failed += 1
            log.info("[%s] push to %s failed (gossip carries it): %s", self.name, peer, exc)
            return False
        self._stats.pushes += 1
        return True

    def member_peers(self, index: int) -> list[str]:
        """The connected peers that speak for member ``index`` of this replica's site
        (a device's host: where to push what concerns that device)."""
        site = self.store.membership.site.site_id
        return [
            p.peer_id for p in self.host.peers() if p.site_id == site and p.device_index == index
        ]

    def request_sync(self, peer: str) -> None:
        """Run an anti-entropy round with ``peer`` soon (coalesced with one pending)."""
        if self._state is ReplicaState.RUNNING and peer not in self._own_peers:
            self._wanted.add(peer)
            self._wake.set()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, checked whenever this replica changed
        the log (gossip, a round, a publish), a round failed or a
        :meth:`sync_once` ended. The caller applies the deadline."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate() or self._stopped())

    def stats(self) -> ReplicaStats:
        return dataclasses.replace(self._stats)

    def holds_own_chain(self, author: Author) -> bool:
        """Whether a peer answered a heads request since this replica was made and
        this replica holds ``author``'s chain up to that peer's head of it (or the
        peer held none of it)."""
        my_seq = self._seq(author)
        return any(
            (theirs := heads.get(author)) is None or theirs.seq <= my_seq
            for heads in self._answers().values()
        )

    def _answers(self) -> dict[str, Heads]:
        """The peers' last heads replies, but those of peers that misbehaved."""
        heads = self.replicator.peer_heads
        return {peer: h for peer, h in heads.items() if peer not in self._misbehaved}

    async def take_own_chain(self, author: Author) -> None:
        """Take ``author``'s chain (a member this node writes as) back from the
        site's peers before its first entry after a start: return once a peer
        answered and this replica holds what that peer holds of the chain
        (:meth:`holds_own_chain`; anti-entropy pulls it, verified as any entry).

        It asks every reachable peer now. A peer that answered with more of the
        chain is waited for until its rounds pulled it (a WARNING each
        ``own_chain_wait_s``): writing before would fork the chain. When no peer
        answered within ``own_chain_wait_s``: with entries of its own in the log,
        a WARNING and return (its log is its chain as of its last clean stop or
        synced entry; a site whose peers are all down still works); with none,
        the same unless ``empty_chain_waits``: then a WARNING each
        ``own_chain_wait_s`` and wait on. Raises :class:`ReplicaStopped` if the
        replica stops meanwhile."""
        if self.holds_own_chain(author):
            return
        local = self._seq(author)
        log.info("[%s] taking %s's chain (seq %d here) back from peers", self.name, author, local)
        for peer in self.host_peers():
            self.request_sync(peer)
        wait_s = self.config.own_chain_wait_s
        waited = 0.0
        while not self.holds_own_chain(author):
            if self._state is not ReplicaState.RUNNING:
                raise ReplicaStopped(f"[{self.name}] {self._state.value} before {author} wrote")
            try:
                async with asyncio.timeout(wait_s):
                    await self.wait_until(lambda: self.holds_own_chain(author))
                continue
            except TimeoutError:
                waited += wait_s
            if self._answers():  # a peer holds more of it: writing would fork it
                log.warning(
                    "[%s] %s's chain: a peer holds up to seq %d, this log up to %d after %.1f s: "
                    "its next entry waits until it is pulled",
                    *(self.name, author, self._peers_seq(author), self._seq(author), waited),
                )
            elif local > 0 or not self.config.empty_chain_waits:
                log.warning(
                    "[%s] no peer answered in %.1f s: %s writes on from seq %d of its local "
                    "log (a peer that holds more of its chain will flag an equivocation)",
                    *(self.name, waited, author, local),
                )
                return
            else:
                log.warning(
                    "[%s] no peer answered in %.1f s and the log holds no entry of %s: its "
                    "first entry waits for a peer (its peers may hold its chain)",
                    *(self.name, waited, author),
                )
        log.info("[%s] %s's chain is at seq %d: writing on", self.name, author, self._seq(author))

    def _seq(self, author: Author) -> int:
        head = self.store.heads().get(author)
        return 0 if head is None else head.seq

    def _peers_seq(self, author: Author) -> int:
        """The highest seq of ``author`` a peer's last heads reply gave."""
        return max(
            (h.seq for heads in self._answers().values() if (h := heads.get(author))),
            default=0,
        )

    # -- inbound -----------------------------------------------------------------

    async def _serve(self, request: Delivery) -> LogRecord:
        """The handler of SYNC_PROTOCOL_ID on the host: one request, one reply."""
        if self._state is not ReplicaState.RUNNING:
            raise ReplicaStopped(f"[{self.name}] replica is {self._state.value}")
        if request.site_id not in self.sites:
            raise LedgerError(f"[{self.name}] {request.peer_id} belongs to another site")
        reply, pushed = await self.replicator.serve(request.decode(LogRecord).data, request.peer_id)
        self._stats.requests_served += 1
        if pushed.results:  # a push (an ANNOUNCE over the stream): as gossip, but now
            self._stats.pushes_received += 1
            self._stats.push_appended += len(pushed.appended)
            if left_a_gap(pushed):
                self.request_sync(request.peer_id)
            if pushed.appended:
                await self._notify()
        return LogRecord(reply)

    async def _gossip_loop(self, subscription: Subscription) -> None:
        async for delivery in subscription:
            if delivery.site_id not in self.sites or delivery.kind != LOG_RECORD_KIND:
                continue
            self._stats.gossip_received += 1
            if self.config.gossip_loss and self._rng.random() < self.config.gossip_loss:
                self._stats.gossip_dropped += 1
                continue
            report = await self.replicator.receive_announce(delivery.data, delivery.peer_id)
            self._stats.gossip_appended += len(report.appended)
            if left_a_gap(report):
                log.info("[%s] gap after announcement from %s", self.name, delivery.peer_id)
                self.request_sync(delivery.peer_id)
            if report.appended:
                await self._notify()

    async def _peer_loop(self, events: EventStream) -> None:
        async for event in events:
            peer = event.peer
            if peer.site_id not in self.sites or peer.peer_id in self._own_peers:
                continue
            if isinstance(event, PeerJoined):
                log.info("[%s] peer %s joined: syncing", self.name, peer.peer_id)
                self._failures.pop(peer.peer_id, None)
                self.request_sync(peer.peer_id)
            elif isinstance(event, PeerLeft):
                self._wanted.discard(peer.peer_id)

    # -- anti-entropy ------------------------------------------------------------

    def _site_peers(self) -> list[str]:
        return [p.peer_id for p in self._site_peer_refs()]

    def _site_peer_refs(self) -> list[PeerRef]:
        # A peer whose key was revoked since its hello is no longer a member.
        return [
            p
            for p in self.host.peers()
            if p.site_id in self.sites
            and p.peer_id not in self._own_peers
            and self.host.topics[self.topic].members.device_pubkey(p.site_id, p.device_index)
        ]

    def periodic_peers(self) -> list[str]:
        """The peers of one periodic round: ``peers_per_round`` random libp2p hosts of
        the site, one random device address of each. A gateway's hub speaks for many
        devices from one store: two of its devices in one round would pull the same
        log twice."""
        return self.host_peers(self.config.peers_per_round)

    def host_peers(self, limit: int | None = None) -> list[str]:
        """At most ``limit`` (None: every) libp2p hosts of the site in random order,
        one random device address of each: a gateway's hub speaks for many devices
        from one store, and a stream that cannot open to one of its addresses
        cannot open to the others either."""
        by_host: dict[str, list[str]] = {}
        for ref in self._site_peer_refs():
            by_host.setdefault(ref.host_id, []).append(ref.peer_id)
        count = len(by_host) if limit is None else min(limit, len(by_host))
        hosts = self._rng.sample(sorted(by_host), count)
        return [self._rng.choice(by_host[host_id]) for host_id in hosts]

    async def _periodic_loop(self) -> None:
        interval = self.config.anti_entropy_interval_s
        while True:
            # A timer, not a synchronisation: rounds are due every ``interval``.
            await asyncio.sleep(interval * self._rng.uniform(0.5, 1.5))
            for peer in self.periodic_peers():
                self.request_sync(peer)

    async def _schedule_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for peer in sorted(self._wanted - self._syncing):
                self._wanted.discard(peer)
                self._syncing.add(peer)
                self._spawn(self._round(peer))

    async def _round(self, peer: str) -> None:
        """One anti-entropy round with ``peer``. Whatever happens to it ends here:
        a failure schedules a retry with this peer alone, never ends the others."""
        try:
            async with self._slots:
                failure = await self._pull_round(peer, self.config.round_timeout_s)
            if failure is not None:
                await self._failed(peer, failure)
        finally:
            self._syncing.discard(peer)
            if peer in self._wanted:
                self._wake.set()

    async def sync_once(self, peer: str, *, timeout_s: float) -> bool:
        """One anti-entropy round with ``peer``, begun now and ended within
        ``timeout_s``: whether it succeeded (this replica then holds all that the
        peer held when asked). Outside the rounds :meth:`request_sync` queues on
        ``max_concurrent_rounds`` slots, so a caller that must know of a sync now
        (the utility at a period's end) waits behind no round with a peer that
        hangs; a failure is counted and logged, not retried (the caller decides).
        Waiters of :meth:`wait_until` are woken by its end, whatever it was."""
        if self._state is not ReplicaState.RUNNING or peer in self._own_peers:
            return False
        failure = await self._pull_round(peer, timeout_s)
        if failure is not None:
            self._stats.rounds_failed += 1
            log.info("[%s] sync with %s failed: %s", self.name, peer, failure)
        await self._notify()
        return failure is None

    async def _pull_round(self, peer: str, timeout_s: float) -> BaseException | None:
        """Pull from ``peer`` within ``timeout_s``; count the round; return what
        ended it if it failed (None: it succeeded)."""
        try:
            async with asyncio.timeout(timeout_s):
                report = await self.replicator.sync_with(peer)
        except (RetryableError, TimeoutError) as exc:
            if isinstance(exc, SyncMisbehaviour):
                self.host.report_misbehaviour(peer, f"sync:{exc.reason}")
                self._misbehaved.add(peer)  # its heads no longer hold a first entry back
            return exc
        except FatalError:
            raise  # our own store is corrupt: crash loudly, replicating more would spread it
        except Exception as exc:  # a bug in one round must not end anti-entropy for all
            log.exception("[%s] sync round with %s crashed", self.name, peer)
            self._stats.rounds_crashed += 1
            return exc
        self._stats.rounds += 1
        self._failures.pop(peer, None)
        if report.appended:
            self._stats.pulled_appended += report.appended
            log.info("[%s] pulled %d entries from %s", self.name, report.appended, peer)
        await self._notify()  # also with nothing new: the peer's heads are news
        return None

    async def _failed(self, peer: str, exc: BaseException) -> None:
        self._stats.rounds_failed += 1
        fails = self._failures[peer] = self._failures.get(peer, 0) + 1
        # Once per streak and then at powers of two: a dead peer is not a log flood.
        if fails & (fails - 1) == 0:
            log.info("[%s] sync with %s failed (%d in a row): %s", self.name, peer, fails, exc)
        self._spawn(self._retry_later(peer, fails))
        await self._notify()

    def failures(self, peer: str) -> int:
        """Failed rounds with ``peer`` in a row (0 after a round that succeeded)."""
        return self._failures.get(peer, 0)

    def retry_delay(self, fails: int) -> float:
        """Seconds to wait before the next round with a peer after ``fails`` failures
        in a row: capped exponential back-off with jitter, for any ``fails``."""
        return self._backoff.delay(fails, self._rng)

    async def _retry_later(self, peer: str, fails: int) -> None:
        await asyncio.sleep(self.retry_delay(fails))  # a back-off timer
        if peer in self._site_peers():
            self.request_sync(peer)

    # -- helpers -----------------------------------------------------------------

    def _stopped(self) -> bool:
        return self._state is ReplicaState.STOPPED

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _announce_chunks(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Split entries into announcements that fit one pubsub record."""
    chunks: list[list[Entry]] = []
    size = 0
    for entry in entries:
        cost = len(entry.raw) + 4
        if (
            not chunks
            or size + cost > MAX_ANNOUNCE_BYTES
            or (len(chunks[-1]) >= MAX_ENTRIES_PER_MESSAGE)
        ):
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += cost
    return chunks
