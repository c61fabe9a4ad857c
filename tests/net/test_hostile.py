"""Hostile peers against real py-libp2p hosts: lies in hellos, garbage requests, bans.

Each test carries the hostile bytes or values that once crashed or stalled a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest

from p2pgrid.errors import RetryableError
from p2pgrid.net import Delivery, PeerHost, RequestRejected, Topic, TrioBridge
from p2pgrid.net.discovery import parse_peer_addr
from p2pgrid.net.envelope import (
    KIND_HELLO,
    MAX_PEER_ID_LEN,
    EnvelopeError,
    Record,
    encode_body,
    parse,
)
from p2pgrid.net.frames import MAX_HELLO_ADDRS, PEER_ERRORS, FrameError, Hello
from p2pgrid.net.misbehaviour import Misbehaviour
from p2pgrid.poll import wait_until
from tests.net.conftest import MakeHost, Note

WAIT_S = 10.0
PROTOCOL = "/p2pgrid/test/hostile/1"


async def misbehaved(host: PeerHost, peer_id: str, reason: str) -> None:
    """Wait until ``host`` has counted ``reason`` against ``peer_id``."""

    async def counted() -> bool:
        return host.stats().misbehaviour.get(peer_id, {}).get(reason, 0) >= 1

    await wait_until(counted, timeout_s=WAIT_S, what=f"{host.name} to count {reason}")


async def connect(bridge: TrioBridge, dialer: PeerHost, target: PeerHost) -> None:
    assert dialer._node is not None
    await bridge.run(dialer._node.host.connect, parse_peer_addr(target.addrs[0]))


# -- decoders enforce what encoders do ------------------------------------------------


def _strings(items: list[bytes]) -> bytes:
    return bytes([len(items)]) + b"".join(struct.pack(">H", len(i)) + i for i in items)


def test_hello_with_255_addresses_is_refused() -> None:
    hostile = _strings([b"/ip4/1.2.3.4/tcp/1"] * 255) + _strings([])
    with pytest.raises(FrameError, match="255 addresses"):
        Hello.decode(hostile)
    at_limit = _strings([b"/ip4/1.2.3.4/tcp/1"] * MAX_HELLO_ADDRS) + _strings([])
    assert len(Hello.decode(at_limit).listen_addrs) == MAX_HELLO_ADDRS


def test_hello_encoder_and_decoder_agree_on_limits() -> None:
    many = tuple(f"/ip4/1.2.3.4/tcp/{i}" for i in range(300))
    hello = Hello(listen_addrs=many, known_peers=("x" * 5000,))
    decoded = Hello.decode(hello.encode())
    assert decoded.listen_addrs == many[:MAX_HELLO_ADDRS]
    assert decoded.known_peers == ()  # too long to send, so not sent
    with pytest.raises(FrameError):
        Hello.decode(_strings([b"x" * 5000]) + _strings([]))


@pytest.mark.parametrize("peer_id_len", [0, MAX_PEER_ID_LEN + 1, 255])
def test_envelope_peer_id_length_is_1_to_64(peer_id_len: int) -> None:
    good = encode_body(
        site_id="00" * 8,
        device_index=1,
        peer_id=b"p" * 8,
        epoch=1,
        seq=1,
        timestamp_ms=1,
        records=[Record(0x0101, b"x")],
    )
    # version | site | device | peer_id_len | peer_id | nonce | records | signature
    hostile = good[:13] + bytes([peer_id_len]) + b"p" * peer_id_len + good[14 + 8 :] + b"s" * 64
    with pytest.raises(EnvelopeError, match="peer id length"):
        parse(hostile)
    with pytest.raises(EnvelopeError):
        encode_body(
            site_id="00" * 8,
            device_index=1,
            peer_id=b"p" * peer_id_len,
            epoch=1,
            seq=1,
            timestamp_ms=1,
            records=[Record(0x0101, b"x")],
        )


def test_misbehaviour_bans_at_the_threshold_and_forgives_later() -> None:
    now = [0.0]
    tracker = Misbehaviour(threshold=3, window_s=10.0, ban_s=60.0, clock=lambda: now[0])
    assert not tracker.record("p", "a")
    assert not tracker.record("p", "b")
    assert tracker.record("p", "a")  # the third event bans
    assert tracker.banned("p")
    assert not tracker.banned("q")
    assert not tracker.record("p", "a")  # counted, already banned
    assert tracker.counts() == {"p": {"a": 3, "b": 1}}
    now[0] = 61.0
    assert not tracker.banned("p")
    assert tracker.banned_peers() == ()
    now[0] = 200.0  # the window passed: the score starts again
    assert not tracker.record("p", "a")
    assert tracker.bans == 1


# -- real hosts ---------------------------------------------------------------------


async def test_member_hello_with_garbage_address_does_not_crash_the_host(
    make_host: MakeHost, bridge: TrioBridge, topic: Topic
) -> None:
    victim = await make_host(0)
    liar = await make_host(1)
    assert liar._node is not None
    liar._node.listen_addrs = ("garbage",)  # a member that lies in its signed hello
    await connect(bridge, liar, victim)
    await misbehaved(victim, liar.peer_id, "hello:malformed")
    assert liar.peer_id not in {p.peer_id for p in victim.peers()}
    honest = await make_host(2, bootstrap=victim.addrs)
    await victim.wait_for_peer(honest.peer_id, topic, timeout_s=WAIT_S)
    sub = victim.subscribe(topic)
    await honest.publish(topic, Note(1, "still alive"))
    async with asyncio.timeout(WAIT_S):
        assert (await sub.get()).decode(Note) == Note(1, "still alive")
    assert victim.stats().bans == 0


async def test_hello_with_two_records_is_malformed(make_host: MakeHost, bridge: TrioBridge) -> None:
    victim = await make_host(0)
    liar = await make_host(1)
    node = liar._node
    assert node is not None
    hello = Hello(listen_addrs=liar.listen_addrs, known_peers=()).encode()

    def two_records(exclude: object) -> bytes:
        records = [Record(KIND_HELLO, hello), Record(KIND_HELLO, hello)]
        return liar._seal_context("/p2pgrid/1/hello", records, 64 * 1024)

    node._hello_bytes = two_records  # type: ignore[method-assign]
    await connect(bridge, liar, victim)
    await misbehaved(victim, liar.peer_id, "hello:malformed")


async def test_garbage_requests_are_counted_and_the_peer_banned(
    make_host: MakeHost, bridge: TrioBridge, topic: Topic
) -> None:
    victim = await make_host(0, misbehaviour_threshold=3, ban_s=600.0)
    liar = await make_host(1, bootstrap=victim.addrs)
    await victim.wait_for_peer(liar.peer_id, topic, timeout_s=WAIT_S)
    served: list[Note] = []

    async def strict(request: Delivery) -> Note:
        served.append(request.decode(Note))
        return Note(0)

    victim.handle(PROTOCOL, strict)

    class Garbage:
        KIND = Note.KIND

        def encode(self) -> bytes:
            return b"\xff"  # shorter than a Note's u64: its decoder fails

        @classmethod
        def decode(cls, data: bytes) -> Garbage:
            return cls()

    for _ in range(2):
        with pytest.raises(RequestRejected):
            await liar.request(victim.peer_id, PROTOCOL, Garbage(), timeout_s=WAIT_S)
    # The third bans it: the victim may drop the connection before it refuses.
    with pytest.raises((RequestRejected, RetryableError)):
        await liar.request(victim.peer_id, PROTOCOL, Garbage(), timeout_s=WAIT_S)
    stats = victim.stats()
    assert stats.misbehaviour[liar.peer_id] == {f"{PROTOCOL}:malformed": 3}
    assert stats.banned == (liar.peer_id,)
    assert served == []

    async def dropped() -> bool:
        return liar.peer_id not in {p.peer_id for p in victim.peers()}

    await wait_until(dropped, timeout_s=WAIT_S, what="the banned peer to be dropped")
    # Not re-admitted: a new connection is closed at once and no request is served.
    with contextlib.suppress(*PEER_ERRORS):
        await connect(bridge, liar, victim)
    with pytest.raises((RequestRejected, RetryableError)):
        await liar.request(victim.peer_id, PROTOCOL, Note(1), timeout_s=2.0)
    assert served == []


async def test_a_malformed_answer_is_a_refusal_not_a_crash(make_host: MakeHost) -> None:
    server = await make_host(0)
    client = await make_host(1, bootstrap=server.addrs)

    class Short:
        KIND = Note.KIND

        def encode(self) -> bytes:
            return b"\x00"

        @classmethod
        def decode(cls, data: bytes) -> Short:
            return cls()

    async def answer_garbage(request: Delivery) -> Short:
        return Short()

    server.handle(PROTOCOL, answer_garbage)
    reply = await client.request(server.peer_id, PROTOCOL, Note(1), timeout_s=WAIT_S)
    with pytest.raises(RequestRejected, match="malformed Note"):
        reply.decode(Note)
    assert client.stats().misbehaviour[server.peer_id] == {f"{PROTOCOL}:malformed": 1}


def test_what_an_honest_peer_may_cause_is_counted_but_never_bans() -> None:
    tracker = Misbehaviour(threshold=2)
    for _ in range(10):
        assert not tracker.record("p", "hello:not_member", scored=False)
    assert not tracker.banned("p")
    assert tracker.counts() == {"p": {"hello:not_member": 10}}
    assert not tracker.record("p", "hello:malformed")
    assert tracker.record("p", "hello:malformed")
