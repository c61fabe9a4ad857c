"""A lying sync peer over real libp2p hosts: the replica ends the round at the first
empty answer and the host counts it against that peer."""

from __future__ import annotations

from pathlib import Path

from p2pgrid.ledger import Author, wire
from p2pgrid.ledger.heads import AuthorHead, Heads
from p2pgrid.ledger.sync import SYNC_PROTOCOL_ID
from p2pgrid.net import Delivery, DeviceKey, NetConfig, PeerHost, TrioBridge
from p2pgrid.poll import wait_until
from p2pgrid.replication import LogRecord, NetReplica, ReplicaConfig, log_net_topic
from tests.ledger.ledger_factory import Site

WAIT_S = 20.0


async def test_a_peer_claiming_2_63_and_sending_nothing_is_counted(
    site: Site, bridge: TrioBridge, tmp_path: Path
) -> None:
    store = await site.open(tmp_path / "victim.sqlite")
    topic = log_net_topic(store.roster)  # devices 0..63, as the genesis enrols them
    identity = site.identity

    def host(index: int, config: NetConfig) -> PeerHost:
        key = DeviceKey(identity, index, site.device(index))
        return PeerHost(config, key, [topic], bridge=bridge, name=f"sync-{index}")

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
