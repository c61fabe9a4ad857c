"""A node takes its own chain back from its peers before its first entry after a
start (NetReplica.take_own_chain, awaited by its LogWriter): REAL py-libp2p hosts
and SQLite files in this process. A device whose log file is older than its last
entry (restored from a copy, or emptied) continues its chain where its peers hold
it, so no replica sees an equivocation; with no peer, the policy of
ReplicaConfig.own_chain_wait_s / empty_chain_waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import shutil
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import pytest

from p2pgrid.ledger import Author, Entry, LogStore, LogWriter, MeterReading, wire
from p2pgrid.ledger.heads import AuthorHead, Heads
from p2pgrid.ledger.sync import SYNC_PROTOCOL_ID
from p2pgrid.net import Delivery, DeviceKey, NetConfig, PeerHost, TrioBridge
from p2pgrid.replication import LogRecord, NetReplica, ReplicaConfig, log_net_topic
from tests.ledger.ledger_factory import T0_MS, Site

#: Deadline of every wait of these tests on a peer or an entry.
WAIT_S = 20.0
DEVICE = Author.device(1)
#: Entries the device writes before its log goes back.
WRITTEN = 5
#: Of which its older copy holds these.
IN_COPY = 2


@dataclasses.dataclass
class Node:
    path: Path
    store: LogStore
    host: PeerHost
    replica: NetReplica
    writer: LogWriter
    stack: AsyncExitStack


@dataclasses.dataclass
class Nodes:
    """Nodes of one test on the shared bridge; each one stopped at the end."""

    site: Site
    bridge: TrioBridge
    tmp_path: Path
    running: dict[int, Node] = dataclasses.field(default_factory=dict)

    def path(self, index: int) -> Path:
        return self.tmp_path / f"node-{index}.sqlite"

    async def start(
        self,
        index: int,
        config: ReplicaConfig,
        *,
        dial: int | None = None,
        bootstrap: Sequence[str] = (),
    ) -> Node:
        """Open node ``index``'s store and go online (dialling node ``dial``); its
        writer takes its chain back before its first entry, as an agent's does."""
        stack = AsyncExitStack()
        store = await self.site.open(self.path(index), f"node-{index}")
        stack.push_async_callback(store.close)
        if dial is not None:
            bootstrap = [*bootstrap, *self.running[dial].host.addrs]
        host = PeerHost(
            NetConfig(bootstrap=tuple(bootstrap)),
            DeviceKey(self.site.identity, index, self.site.device(index)),
            [log_net_topic(store.roster)],
            bridge=self.bridge,
            name=f"node-{index}",
        )
        await host.start()
        stack.push_async_callback(host.stop)
        replica = NetReplica(store, host, config, topic=log_net_topic(store.roster))
        await replica.start()
        stack.push_async_callback(replica.stop)
        author = Author.device(index)
        writer = LogWriter(
            store,
            self.site.device(index),
            author,
            before_first=lambda: replica.take_own_chain(author),
        )
        node = self.running[index] = Node(self.path(index), store, host, replica, writer, stack)
        return node

    async def stop(self, index: int) -> None:
        await self.running.pop(index).stack.aclose()

    async def stop_all(self) -> None:
        for index in list(self.running):
            await self.stop(index)


@pytest.fixture
async def nodes(site: Site, bridge: TrioBridge, tmp_path: Path) -> AsyncIterator[Nodes]:
    running = Nodes(site, bridge, tmp_path)
    try:
        yield running
    finally:
        await running.stop_all()


def _config(wait_s: float = WAIT_S, *, empty_chain_waits: bool = False) -> ReplicaConfig:
    return ReplicaConfig(
        anti_entropy_interval_s=60.0,  # rounds on joins only: the test's own
        own_chain_wait_s=wait_s,
        empty_chain_waits=empty_chain_waits,
        seed=1,
    )


#: Distinct readings (a reading of the same minute twice is refused as a duplicate).
_MINUTES = itertools.count(1)


async def _append(node: Node, writer: LogWriter | None = None) -> Entry:
    ts = T0_MS + 60_000 * next(_MINUTES)
    writer = writer or node.writer
    entry = await writer.append(MeterReading(ts, 60, 5, 50), period=1, timestamp_ms=ts)
    await node.replica.publish([entry])
    return entry


def _sibling(node: Node, site: Site, index: int) -> LogWriter:
    """Device ``index``'s writer on ``node``'s store and replica (a gateway's other
    device of the site), gated as the gateway gates it."""
    author = Author.device(index)
    return LogWriter(
        node.store,
        site.device(index),
        author,
        before_first=lambda: node.replica.take_own_chain(author),
    )


async def _pulled(node: Node, source: Node, seq: int) -> None:
    """``node`` pulls from ``source`` (gossip may miss a fresh mesh) until it holds
    the device's chain up to ``seq``."""
    assert await node.replica.sync_once(source.host.address, timeout_s=WAIT_S)
    await _holds(node, DEVICE, seq)


async def _holds(node: Node, author: Author, seq: int) -> None:
    async with asyncio.timeout(WAIT_S):
        await node.replica.wait_until(lambda: _seq(node, author) >= seq)


def _seq(node: Node, author: Author) -> int:
    head = node.store.heads().get(author)
    return 0 if head is None else head.seq


async def _device_wrote_and_went_back(nodes: Nodes, *, emptied: bool) -> Node:
    """Node 0 (a peer) runs; device 1 writes WRITTEN entries, which reach node 0,
    then stops and its log goes back to a copy holding IN_COPY of them (emptied:
    to a new file). Returns node 0."""
    peer = await nodes.start(0, _config())
    device = await nodes.start(1, _config(), dial=0)
    for _ in range(IN_COPY):
        await _append(device)
    await nodes.stop(1)
    copy = nodes.tmp_path / "copy.sqlite"
    shutil.copyfile(device.path, copy)  # closed: the WAL is checkpointed into it
    device = await nodes.start(1, _config(), dial=0)
    for _ in range(WRITTEN - IN_COPY):
        await _append(device)
    await _pulled(peer, device, WRITTEN)
    await nodes.stop(1)
    for suffix in ("-wal", "-shm"):
        device.path.with_name(device.path.name + suffix).unlink(missing_ok=True)
    if emptied:
        device.path.unlink()
    else:
        shutil.copyfile(copy, device.path)
    return peer


@pytest.mark.parametrize("emptied", [False, True], ids=["older_copy", "emptied"])
async def test_a_device_on_an_older_log_continues_its_chain(nodes: Nodes, emptied: bool) -> None:
    peer = await _device_wrote_and_went_back(nodes, emptied=emptied)
    device = await nodes.start(1, _config(), dial=0)
    assert _seq(device, DEVICE) == (0 if emptied else IN_COPY)  # what its file holds
    entry = await _append(device)
    assert entry.seq == WRITTEN + 1
    await _pulled(peer, device, WRITTEN + 1)
    for node in (peer, device):
        head = node.store.heads()[DEVICE]
        assert (head.seq, head.count) == (WRITTEN + 1, WRITTEN + 1)  # one chain
        assert DEVICE not in node.store.equivocators
    assert device.replica.stats().pulled_appended >= WRITTEN - (0 if emptied else IN_COPY)


async def test_each_device_of_a_gateway_takes_its_chain_back_from_the_shared_replica(
    nodes: Nodes,
) -> None:
    """Devices 1 and 2 share one store and one replica (a gateway's site log);
    its file emptied, each device continues its own chain."""
    sibling = Author.device(2)
    peer = await nodes.start(0, _config())
    gateway = await nodes.start(1, _config(), dial=0)
    for _ in range(IN_COPY):
        await _append(gateway)
        await _append(gateway, _sibling(gateway, nodes.site, 2))
    assert await peer.replica.sync_once(gateway.host.address, timeout_s=WAIT_S)
    assert (_seq(peer, DEVICE), _seq(peer, sibling)) == (IN_COPY, IN_COPY)
    await nodes.stop(1)
    gateway.path.unlink()
    gateway = await nodes.start(1, _config(), dial=0)
    second = _sibling(gateway, nodes.site, 2)
    assert (await _append(gateway, second)).seq == IN_COPY + 1
    assert (await _append(gateway)).seq == IN_COPY + 1
    assert await peer.replica.sync_once(gateway.host.address, timeout_s=WAIT_S)
    for author in (DEVICE, sibling):
        head = peer.store.heads()[author]
        assert (head.seq, head.count) == (IN_COPY + 1, IN_COPY + 1)
    assert not peer.store.equivocators


async def test_without_the_gate_the_same_device_equivocates(nodes: Nodes) -> None:
    """What the gate prevents (and that the scenario above would show it)."""
    peer = await _device_wrote_and_went_back(nodes, emptied=False)
    store = await nodes.site.open(nodes.path(1), "node-1-ungated")
    async with store:
        ts = T0_MS + 60_000 * next(_MINUTES)
        writer = LogWriter(store, nodes.site.device(1), DEVICE)
        entry = await writer.append(MeterReading(ts, 60, 5, 50), period=1, timestamp_ms=ts)
    assert entry.seq == IN_COPY + 1
    report = await peer.store.ingest_many([entry.raw])
    assert report.appended
    assert DEVICE in peer.store.equivocators


class _Lines(logging.Handler):
    """Sets an event when a WARNING of the replica module contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.seen = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if self.text in message:
            self.seen.set()


@contextmanager
def _watch(text: str) -> Iterator[_Lines]:
    handler = _Lines(text)
    logger = logging.getLogger("p2pgrid.replication.replica")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_alone_a_device_writes_on_after_the_wait_with_a_warning(nodes: Nodes) -> None:
    with _watch("writes on from seq 0") as first:
        lone = await nodes.start(1, _config(0.05))  # the default: empty_chain_waits off
        assert (await _append(lone)).seq == 1  # brand new and alone: written after the wait
    assert first.seen.is_set(), first.messages
    await nodes.stop(1)
    with _watch("writes on from seq 1") as lines:
        again = await nodes.start(1, _config(0.05))  # defaults: its log holds entries
        assert (await _append(again)).seq == 2
    assert lines.seen.is_set(), lines.messages


async def test_alone_a_device_with_an_empty_log_waits_for_a_peer_if_told(nodes: Nodes) -> None:
    peer = await nodes.start(0, _config())
    device = await nodes.start(1, _config(), dial=0)
    for _ in range(WRITTEN):
        await _append(device)
    await _pulled(peer, device, WRITTEN)
    await nodes.stop(1)
    device.path.unlink()  # its data directory lost, and its peer away
    await nodes.stop(0)
    with _watch("its first entry waits for a peer") as lines:
        device = await nodes.start(1, _config(0.05, empty_chain_waits=True))
        async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:
            first = tasks.create_task(_append(device))
            await lines.seen.wait()
            assert not first.done()  # nothing signed while no peer answered
            await nodes.start(0, _config(), dial=1)  # the peer is back
    assert first.result().seq == WRITTEN + 1
    peer = nodes.running[0]
    await _pulled(peer, device, WRITTEN + 1)
    assert peer.store.heads()[DEVICE].count == WRITTEN + 1  # one chain
    assert DEVICE not in peer.store.equivocators


async def test_a_peer_that_claims_the_chain_and_sends_nothing_does_not_hold_it(
    nodes: Nodes,
) -> None:
    """A member's host claims device 1's chain up to 2^63-1 and answers each range
    with nothing: its round ends as misbehaviour, its claim is dropped, and the
    device writes on from its log after ``own_chain_wait_s`` as with no peer."""
    device = await nodes.start(1, _config(0.05))
    assert (await _append(device)).seq == 1  # a new device alone
    await nodes.stop(1)
    topic = log_net_topic(device.store.roster)
    liar = PeerHost(
        NetConfig(),
        DeviceKey(nodes.site.identity, 2, nodes.site.device(2)),
        [topic],
        bridge=nodes.bridge,
        name="liar-2",
    )
    claim = AuthorHead(DEVICE, 2**63 - 1, 2**63 - 1, b"\x01" * 32, b"\x02" * 32)
    asked = asyncio.Event()

    async def lie(request: Delivery) -> LogRecord:
        message = wire.decode(request.decode(LogRecord).data)
        if isinstance(message, wire.HeadsRequest):
            asked.set()
            return LogRecord(wire.encode(wire.HeadsReply(Heads([claim]))))
        assert isinstance(message, wire.RangeRequest)
        return LogRecord(wire.encode(wire.RangeReply(message.first + 255, ())))

    await liar.start()
    try:
        liar.handle(SYNC_PROTOCOL_ID, lie)
        with _watch("writes on from seq 1") as lines:
            device = await nodes.start(1, _config(0.5), bootstrap=liar.addrs)
            async with asyncio.timeout(WAIT_S):
                await asked.wait()
            assert (await _append(device)).seq == 2
        assert lines.seen.is_set(), lines.messages
        assert not device.replica.holds_own_chain(DEVICE)  # no honest answer: none held
    finally:
        await nodes.stop(1)
        await liar.stop()
