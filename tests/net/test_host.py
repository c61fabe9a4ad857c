"""Real py-libp2p hosts in this process (one shared trio bridge): pubsub, streams, validation."""

from __future__ import annotations

import asyncio

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.exceptions import SwarmException
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from p2pgrid.errors import RetryableError
from p2pgrid.net import (
    Delivery,
    PeerHost,
    PeerJoined,
    PeerLeft,
    RequestRejected,
    Subscription,
    Topic,
    TrioBridge,
    site_topic,
)
from p2pgrid.net.discovery import parse_peer_addr
from p2pgrid.poll import wait_until
from p2pgrid.testing.ports import free_port
from tests.net.conftest import MakeHost, Note
from tests.sites import TestSite

#: Deadline of each wait in these tests (they normally finish in milliseconds).
WAIT_S = 10.0
PROTOCOL = "/p2pgrid/test/echo/1"


async def next_delivery(sub: Subscription) -> Delivery:
    async with asyncio.timeout(WAIT_S):
        return await sub.get()


async def rejections(host: PeerHost, reason: str, at_least: int) -> None:
    """Wait until ``host`` has counted ``at_least`` rejections for ``reason``."""

    async def counted() -> bool:
        return host.stats().rejected[reason] >= at_least

    await wait_until(counted, timeout_s=WAIT_S, what=f"{host.name} to count {reason}")


async def joined(a: PeerHost, b: PeerHost, topic: Topic) -> None:
    await a.wait_for_peer(b.peer_id, topic, timeout_s=WAIT_S)
    await b.wait_for_peer(a.peer_id, topic, timeout_s=WAIT_S)


async def test_publish_subscribe_both_ways(make_host: MakeHost, topic: Topic) -> None:
    a = await make_host(0)
    b = await make_host(1, bootstrap=a.addrs)
    await joined(a, b, topic)
    sub_a, sub_b = a.subscribe(topic), b.subscribe(topic)
    await b.publish(topic, Note(1, "from b"))
    await a.publish(topic, Note(2, "from a"))
    got_a, got_b = await next_delivery(sub_a), await next_delivery(sub_b)
    assert got_a.decode(Note) == Note(1, "from b")
    assert got_a.device_index == 1
    assert got_b.decode(Note) == Note(2, "from a")
    assert got_b.peer_id == a.peer_id


async def test_burst_is_paced_and_batched_without_loss(make_host: MakeHost, topic: Topic) -> None:
    a = await make_host(0)
    b = await make_host(1, bootstrap=a.addrs, envelopes_per_s=10.0, envelope_burst=2)
    await joined(a, b, topic)
    sub = a.subscribe(topic)
    for n in range(200):  # raw py-libp2p delivers ~16 of a 50-message burst
        await b.publish(topic, Note(n))
    received = [(await next_delivery(sub)).decode(Note).n for _ in range(200)]
    assert received == list(range(200))
    stats = b.stats()
    assert stats.published_envelopes < 40  # batched: many records per envelope
    assert a.stats().sequence_gaps == 0


async def test_request_response_both_ways(make_host: MakeHost) -> None:
    a = await make_host(0)
    b = await make_host(1, bootstrap=a.addrs)

    async def echo_for(host: PeerHost) -> None:
        async def echo(request: Delivery) -> Note:
            note = request.decode(Note)
            return Note(note.n + 1, f"{host.name} saw device {request.device_index}")

        host.handle(PROTOCOL, echo)

    await echo_for(a)
    await echo_for(b)
    answer = await b.request(a.peer_id, PROTOCOL, Note(41))
    assert answer.decode(Note) == Note(42, "test-0 saw device 1")
    assert answer.device_index == 0
    answer = await a.request(b.peer_id, PROTOCOL, Note(1))
    assert answer.decode(Note) == Note(2, "test-1 saw device 0")


async def test_request_to_a_gone_peer_fails_cleanly(make_host: MakeHost) -> None:
    a = await make_host(0)
    b = await make_host(1, bootstrap=a.addrs)

    async def slow(request: Delivery) -> Note:
        await asyncio.Event().wait()  # never answers
        raise AssertionError

    a.handle(PROTOCOL, slow)
    with pytest.raises(RetryableError, match="timed out"):
        await b.request(a.peer_id, PROTOCOL, Note(1), timeout_s=0.5)
    await a.stop()
    with pytest.raises(RetryableError):
        await b.request(a.peer_id, PROTOCOL, Note(1), timeout_s=2.0)


async def test_handler_refusal_and_unknown_protocol(make_host: MakeHost) -> None:
    a = await make_host(0)
    b = await make_host(1, bootstrap=a.addrs)

    async def refuse(request: Delivery) -> Note:
        raise RequestRejected("no")

    a.handle(PROTOCOL, refuse)
    with pytest.raises(RequestRejected):
        await b.request(a.peer_id, PROTOCOL, Note(1), timeout_s=WAIT_S)


async def test_non_member_forgery_and_replay_are_rejected_and_counted(
    make_host: MakeHost, topic: Topic, owner: TestSite, other_owner: TestSite
) -> None:
    victim = await make_host(0)
    member = await make_host(1, bootstrap=victim.addrs)
    # The attackers do not validate their own output (or they could not send it).
    outsider = await make_host(
        0, site_owner=other_owner, topics=[topic], bootstrap=victim.addrs, enforce_membership=False
    )
    forger = await make_host(
        7, signer_owner=other_owner, bootstrap=victim.addrs, enforce_membership=False
    )
    for host in (member, outsider, forger):
        await victim.wait_for_peer(host.peer_id, topic, timeout_s=WAIT_S)
        await host.wait_for_peer(victim.peer_id, topic, timeout_s=WAIT_S)
    sub = victim.subscribe(topic)

    await outsider.publish(topic, Note(1, "outsider"))  # site b on site a's topic
    await forger.publish(topic, Note(2, "forged"))  # claims device 7 of site a
    sealed = member.seal(topic.name, [Note(3, "once")])
    await member.publish_bytes(topic.name, sealed)
    await member.publish_bytes(topic.name, sealed)  # replayed by its sender...
    await forger.publish_bytes(topic.name, sealed)  # ...and by another peer
    await member.publish(topic, Note(4, "marker"))

    got = [(await next_delivery(sub)).decode(Note) for _ in range(2)]
    assert got == [Note(3, "once"), Note(4, "marker")]
    # Other publishers' messages may arrive after the marker: wait for each count.
    for reason in ("not_member", "bad_signature", "replay"):
        await rejections(victim, reason, 1)
    # The sender's own validator drops its replay; the forger's copy reaches the victim.
    await rejections(member, "replay", 1)
    stats = victim.stats()  # each message counted once, whatever its copies
    assert stats.rejected == {
        **dict.fromkeys(stats.rejected, 0),
        "not_member": 1,
        "bad_signature": 1,
        "replay": 1,
    }
    # The attackers' hellos were refused too (counted apart), so they learn no peers.
    assert stats.rejected_hellos["not_member"] >= 1
    assert stats.rejected_hellos["bad_signature"] >= 1
    assert {p.peer_id for p in victim.peers()} == {member.peer_id}


async def test_peer_cannot_speak_for_another_device(make_host: MakeHost, topic: Topic) -> None:
    victim = await make_host(0)
    member = await make_host(1, bootstrap=victim.addrs)
    relay = await make_host(2, bootstrap=victim.addrs, enforce_membership=False)
    for host in (member, relay):
        await victim.wait_for_peer(host.peer_id, topic, timeout_s=WAIT_S)
    sub = victim.subscribe(topic)
    stolen = member.seal(topic.name, [Note(5, "stolen")])  # never published by member
    await relay.publish_bytes(topic.name, stolen)
    await member.publish(topic, Note(6, "marker"))
    assert (await next_delivery(sub)).decode(Note) == Note(6, "marker")
    await rejections(victim, "peer_mismatch", 1)  # the relay's copy may come after the marker
    assert victim.stats().rejected["peer_mismatch"] == 1
    assert sub.pending() == 0  # the stolen message was never delivered


async def test_peer_events_and_alone_agent_waits(make_host: MakeHost, topic: Topic) -> None:
    """B starts first with A's (fixed) address as bootstrap; joins once A appears."""
    port = free_port()
    a_addr_probe = await make_host(0, listen_port=port)
    a_addrs = a_addr_probe.addrs
    await a_addr_probe.stop()  # A is gone; its peer id is stable (derived from the device key)

    b = await make_host(1, bootstrap=a_addrs, reconnect_max_s=0.5)
    events = b.events()
    assert b.peers() == ()
    a = await make_host(0, listen_port=port)
    async with asyncio.timeout(WAIT_S):
        event = await anext(events)
    assert isinstance(event, PeerJoined)
    assert event.peer.peer_id == a.peer_id
    assert event.peer.device_index == 0
    await a.stop()
    async with asyncio.timeout(WAIT_S):
        event = await anext(events)
    assert isinstance(event, PeerLeft)
    assert event.peer.peer_id == a.peer_id
    a = await make_host(0, listen_port=port)  # restarts: B redials it
    async with asyncio.timeout(WAIT_S):
        event = await anext(events)
    assert isinstance(event, PeerJoined)
    await joined(a, b, topic)


async def test_a_peer_back_after_failed_dials_is_redialled_at_once(
    make_host: MakeHost, topic: Topic
) -> None:
    """A bootstrap peer that was down long enough for whole dials of it to fail (a
    utility killed and restarted on its port) is redialled on the redialer's own
    back-off, not after py-libp2p's 60 s negative dial cache runs out."""
    probe = await make_host(0)  # a's peer id (from its key); its address is elsewhere
    await probe.stop()
    port = free_port()  # where nothing listens yet: dials of it are refused
    a_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{probe.peer_id}"
    b = await make_host(1, bootstrap=(a_addr,), reconnect_max_s=0.5)

    async def failed_twice() -> bool:
        return b.stats().dial_failures >= 2

    await wait_until(failed_twice, timeout_s=WAIT_S, what="b's dials of the absent a to fail")
    events = b.events()
    a = await make_host(0, listen_port=port)
    async with asyncio.timeout(WAIT_S):  # well under the 60 s of py-libp2p's cache
        event = await anext(events)
    assert isinstance(event, PeerJoined)
    assert event.peer.peer_id == a.peer_id


async def test_stop_is_idempotent_and_ends_iterators(make_host: MakeHost, topic: Topic) -> None:
    a = await make_host(0)
    sub = a.subscribe(topic)
    events = a.events()
    await a.stop()
    await a.stop()
    assert [d async for d in sub] == []
    assert [e async for e in events] == []
    with pytest.raises(RetryableError):
        await a.publish(topic, Note(1))


async def test_other_site_topics_are_separate(make_host: MakeHost, other_owner: TestSite) -> None:
    other = site_topic(other_owner.roster())
    a = await make_host(0, site_owner=other_owner, topics=[other])
    b = await make_host(1, site_owner=other_owner, topics=[other], bootstrap=a.addrs)
    await joined(a, b, other)
    sub = a.subscribe(other)
    await b.publish(other, Note(9))
    assert (await next_delivery(sub)).decode(Note) == Note(9)


async def test_plaintext_dial_is_refused(make_host: MakeHost, bridge: TrioBridge) -> None:
    """Only /noise authenticates the remote peer id that hellos and requests are bound to."""
    a = await make_host(0)

    async def dial_in_plaintext() -> bool:
        key_pair = create_new_key_pair(b"p2pgrid-plaintext-dialer".ljust(32, b"."))
        plaintext = {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)}
        dialer = new_host(key_pair=key_pair, sec_opt=plaintext)
        async with dialer.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                with trio.fail_after(WAIT_S):
                    await dialer.connect(parse_peer_addr(a.addrs[0]))
            except SwarmException:
                return False
            return True

    assert not await bridge.run(dial_in_plaintext), "a plaintext connection was accepted"
    assert a.peers() == ()
