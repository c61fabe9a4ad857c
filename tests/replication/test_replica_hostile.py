"""A lying sync peer over real libp2p hosts: the replica ends the round at the first
empty answer and the host counts it against that peer; a forged or garbled push is
answered with an ERROR and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from p2pgrid.ledger import Author, LogWriter, MeterReading, wire
from p2pgrid.ledger.heads import AuthorHead, Heads
from p2pgrid.ledger.sync import SYNC_PROTOCOL_ID
from p2pgrid.net import Delivery, DeviceKey, NetConfig, PeerHost, Topic, TrioBridge
from p2pgrid.poll import wait_until
from p2pgrid.replication import LogRecord, NetReplica, ReplicaConfig, log_net_topic
from tests.ledger.ledger_factory import T0_MS, Site

WAIT_S = 20.0


def _hosts(
    site: Site, topic: Topic, bridge: TrioBridge, prefix: str
) -> Callable[[int, NetConfig], PeerHost]:
    """Makes the host of ``site``'s device ``index`` on ``topic``, named ``<prefix>-<index>``."""

    def host(index: int, config: NetConfig) -> PeerHost:
        key = DeviceKey(site.identity, index, site.device(index))
        return PeerHost(config, key, [topic], bridge=bridge, name=f"{prefix}-{index}")

    return host


async def test_a_peer_claiming_2_63_and_sending_nothing_is_counted(
    site: Site, bridge: TrioBridge, tmp_path: Path
) -> None:
    store = await site.open(tmp_path / "victim.sqlite")
    topic = log_net_topic(store.roster)  # devices 0..63, as the genesis enrols them

    host = _hosts(site, topic, bridge, "sync")
    victim = host(1, NetConfig())
    await victim.start()
    liar = host(2, NetConfig(bootstrap=victim.addrs))
    await liar.start()
    claim = AuthorHead(Author.device(2), 2**63 - 1, 2**63 - 1, b"\x01" * 32, b"\x02" * 32)
    ranges = 0

    async def lie(request: Delivery) -> LogRecord:
        nonlocal ranges
        message = wire.decode(request.decode(LogRecord).data)
        if isinstance(message, wire.HeadsRequest):
            return LogRecord(wire.encode(wire.HeadsReply(Heads([claim]))))
        assert isinstance(message, wire.RangeRequest)
        ranges += 1
        return LogRecord(wire.encode(wire.RangeReply(message.first + 255, ())))

    liar.handle(SYNC_PROTOCOL_ID, lie)
    replica = NetReplica(store, victim, ReplicaConfig(anti_entropy_interval_s=3600.0), topic=topic)
    try:
        await replica.start()
        await liar.wait_for_peer(victim.peer_id, topic, timeout_s=WAIT_S)
        replica.request_sync(liar.peer_id)

        async def counted() -> bool:
            return "sync:empty_range" in victim.stats().misbehaviour.get(liar.peer_id, {})

        await wait_until(counted, timeout_s=WAIT_S, what="the lie to be counted")
        assert ranges <= 2  # the first range (and at most one fetched ahead)
        assert replica.stats().rounds_failed >= 1
    finally:
        await replica.stop()
        await liar.stop()
        await victim.stop()
        await store.close()


async def test_pushes_over_real_hosts_are_ingested_or_refused_with_a_reason(
    site: Site, bridge: TrioBridge, tmp_path: Path
) -> None:
    """A member pushes entries (an ANNOUNCE over the sync stream): a good one joins
    the receiver's log at once and wakes its waiters; a forged or garbled push gets
    an ERROR naming why, and the log does not change."""
    store = await site.open(tmp_path / "receiver.sqlite")
    theirs = await site.open(tmp_path / "pusher.sqlite")
    topic = log_net_topic(store.roster)

    host = _hosts(site, topic, bridge, "push")
    receiver = host(1, NetConfig())
    await receiver.start()
    pusher = host(2, NetConfig(bootstrap=receiver.addrs))
    await pusher.start()
    replica = NetReplica(
        store, receiver, ReplicaConfig(anti_entropy_interval_s=3600.0), topic=topic
    )
    writer = LogWriter(theirs, site.device(2), Author.device(2))
    entry = await writer.append(MeterReading(T0_MS, 900, 7, 1_750), period=1, timestamp_ms=T0_MS)

    async def push(payload: bytes) -> wire.Message:
        reply = await pusher.request(receiver.peer_id, SYNC_PROTOCOL_ID, LogRecord(payload))
        return wire.decode(reply.decode(LogRecord).data)

    try:
        await replica.start()
        await pusher.wait_for_peer(receiver.peer_id, topic, timeout_s=WAIT_S)
        before = store.digest()
        forged = bytearray(entry.raw)
        forged[-1] ^= 0x01
        for bad, reason in (
            (
                wire.encode(wire.Announce((bytes(forged),))),
                "refused 1 of 1 pushed entries: bad_signature",
            ),
            (b"\x01\x05\xff", "malformed request"),
        ):
            answer = await push(bad)
            assert isinstance(answer, wire.ErrorReply)
            assert answer.reason.startswith(reason)
        assert store.digest() == before

        async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:
            woken = tasks.create_task(replica.wait_until(lambda: Author.device(2) in store.heads()))
            assert await push(wire.encode(wire.Announce((entry.raw,)))) == wire.PushedReply(1, 0)
        await woken
        assert store.heads()[Author.device(2)].seq == 1
        stats = replica.stats()
        assert (stats.pushes_received, stats.push_appended) == (2, 1)  # the forged one counted
    finally:
        await replica.stop()
        await pusher.stop()
        await receiver.stop()
        await store.close()
        await theirs.close()


async def test_a_peer_that_never_answers_costs_one_sync_its_deadline_only(
    site: Site, bridge: TrioBridge, tmp_path: Path
) -> None:
    """:meth:`NetReplica.sync_once` with a peer whose answer never comes (a host
    too loaded to answer) fails at its own deadline, not the sync request timeout
    (30 s); the same call with a peer that answers pulls what it holds and wakes
    the waiters."""
    store = await site.open(tmp_path / "asker.sqlite")
    theirs = await site.open(tmp_path / "honest.sqlite")
    topic = log_net_topic(store.roster)

    host = _hosts(site, topic, bridge, "once")
    asker = host(1, NetConfig())
    await asker.start()
    hung = host(2, NetConfig(bootstrap=asker.addrs))
    await hung.start()
    honest = host(3, NetConfig(bootstrap=asker.addrs))
    await honest.start()
    never = asyncio.Event()

    async def hang(request: Delivery) -> LogRecord:
        await never.wait()
        raise AssertionError("never answers")

    hung.handle(SYNC_PROTOCOL_ID, hang)
    config = ReplicaConfig(anti_entropy_interval_s=3600.0)
    replica = NetReplica(store, asker, config, topic=topic)
    theirs_replica = NetReplica(theirs, honest, config, topic=topic)
    writer = LogWriter(theirs, site.device(3), Author.device(3))
    await writer.append(MeterReading(T0_MS, 900, 7, 1_750), period=1, timestamp_ms=T0_MS)
    try:
        await replica.start()
        await theirs_replica.start()
        for peer in (hung, honest):
            await peer.wait_for_peer(asker.peer_id, topic, timeout_s=WAIT_S)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await replica.sync_once(hung.peer_id, timeout_s=1.0)
        assert loop.time() - started < config.request_timeout_s / 2
        assert replica.stats().rounds_failed >= 1
        async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:
            woken = tasks.create_task(replica.wait_until(lambda: Author.device(3) in store.heads()))
            assert await replica.sync_once(honest.peer_id, timeout_s=WAIT_S)
        await woken
        assert store.heads()[Author.device(3)].seq == 1
        await replica.stop()
        assert not await replica.sync_once(honest.peer_id, timeout_s=WAIT_S)  # stopped
    finally:
        await replica.stop()
        await theirs_replica.stop()
        await honest.stop()
        await hung.stop()
        await asker.stop()
        await store.close()
        await theirs.close()
