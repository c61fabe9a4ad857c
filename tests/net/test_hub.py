"""Several devices on one libp2p host (HostHub) over real py-libp2p hosts: the hello
that proves each device, requests addressed to a device, local delivery, bans."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack

import pytest
from libp2p.peer.id import ID

from p2pgrid.errors import ConfigError
from p2pgrid.identity import Role
from p2pgrid.net import (
    Delivery,
    DeviceAbsent,
    DeviceKey,
    EventStream,
    FrameError,
    HostHub,
    NetConfig,
    PeerEvent,
    PeerHost,
    PeerJoined,
    PeerLeft,
    RequestRejected,
    Subscription,
    Topic,
    TrioBridge,
)
from p2pgrid.net.devices import (
    DeviceProof,
    address,
    decode_devices,
    decode_target,
    encode_devices,
    encode_target,
    host_of,
    parse_address,
)
from p2pgrid.poll import wait_until
from p2pgrid.testing.clock import ManualClock
from tests.net.conftest import Note
from tests.sites import TestSite

WAIT_S = 10.0
PROTOCOL = "/p2pgrid/test/who/1"

#: Opens a hub of ``keys`` and a started host per device (the first listens).
MakeHub = Callable[..., Awaitable[list[PeerHost]]]


@pytest.fixture
async def make_hub(bridge: TrioBridge, topic: Topic) -> AsyncIterator[MakeHub]:
    async with AsyncExitStack() as stack:

        async def make(
            keys: Sequence[DeviceKey],
            *,
            serve: Sequence[int] | None = None,
            clock: Callable[[], float] = time.time,
            **config: object,
        ) -> list[PeerHost]:
            net = NetConfig(**config)  # type: ignore[arg-type]
            name = f"hub-{keys[0].device_index}"
            hub = HostHub(net, keys, bridge=bridge, name=name, clock=clock)
            stack.push_async_callback(hub.stop)
            hosts = []
            for key in keys:
                if serve is not None and key.device_index not in serve:
                    continue
                host = PeerHost(net, key, [topic], hub=hub, name=f"dev-{key.device_index}")
                await host.start()
                stack.push_async_callback(host.stop)
                hosts.append(host)
            return hosts

        yield make


def keys(site: TestSite, indices: Sequence[int], signer: TestSite | None = None) -> list[DeviceKey]:
    return [DeviceKey(site.identity, i, (signer or site).device(i)) for i in indices]


async def listed(host: PeerHost, devices: set[tuple[str, int]]) -> None:
    """Wait until ``host.peers()`` lists exactly ``devices``."""

    async def done() -> bool:
        return {(p.site_id, p.device_index) for p in host.peers()} == devices

    await wait_until(done, timeout_s=WAIT_S, what=f"{host.name} to list {sorted(devices)}")


def topic_of(host: PeerHost) -> str:
    (name,) = host.topics
    return name


def who_am_i(host: PeerHost) -> None:
    async def answer(request: Delivery) -> Note:
        note = request.decode(Note)
        return Note(note.n, f"{host.device.device_index} from {request.device_index}")

    host.handle(PROTOCOL, answer)


async def drain(sub: Subscription, count: int) -> list[tuple[int, int]]:
    async with asyncio.timeout(WAIT_S):
        return [((d := await sub.get()).device_index, d.decode(Note).n) for _ in range(count)]


async def test_two_hubs_of_three_devices_list_request_and_hear_each_device(
    make_hub: MakeHub, owner: TestSite, topic: Topic
) -> None:
    site = owner.identity.site_id
    left = await make_hub(keys(owner, [0, 1, 2]))
    right = await make_hub(keys(owner, [3, 4, 5]), bootstrap=left[0].addrs)
    everyone = {(site, i) for i in range(6)}
    for host in (*left, *right):
        await listed(host, everyone - {(site, host.device.device_index)})
        who_am_i(host)
    assert len({h.peer_id for h in left}) == 1  # one libp2p host each side
    assert left[0].peer_id != right[0].peer_id
    # Each device has an address of its own, and answers for itself.
    by_index = {p.device_index: p for p in right[1].peers()}
    assert parse_address(by_index[0].peer_id) == (left[0].peer_id, (site, 0))
    assert by_index[0].host_id == left[0].peer_id
    for target in (0, 1, 2, 3, 5):  # remote ones over a stream, local ones by a call
        answer = await right[1].request(by_index[target].peer_id, PROTOCOL, Note(target))
        assert answer.decode(Note) == Note(target, f"{target} from 4")
        assert answer.device_index == target
    # A publication reaches every other device, local and remote, not its author.
    subs = {h.device.device_index: h.subscribe(topic) for h in (*left, *right)}
    await left[1].publish(topic, Note(7))
    for index, sub in subs.items():
        if index != 1:
            assert await drain(sub, 1) == [(1, 7)]
    await right[0].publish(topic, Note(8))
    assert await drain(subs[1], 1) == [(3, 8)]
    assert subs[1].pending() == 0  # its own Note(7) never came back


async def test_a_device_the_hub_does_not_serve_gets_a_clear_refusal(
    make_hub: MakeHub, owner: TestSite
) -> None:
    site = owner.identity.site_id
    # Device 2 is proved in the hello, but its host is not running.
    left = await make_hub(keys(owner, [0, 1, 2]), serve=[0, 1])
    (right,) = await make_hub(keys(owner, [3]), bootstrap=left[0].addrs)
    await listed(right, {(site, 0), (site, 1), (site, 2)})
    for host in left:
        who_am_i(host)
    # An error answer: the device is not there now (retryable, as an absent peer).
    with pytest.raises(DeviceAbsent, match="is not running"):
        await right.request(address(left[0].peer_id, (site, 2)), PROTOCOL, Note(1))
    with pytest.raises(DeviceAbsent, match="not served here"):
        await right.request(address(left[0].peer_id, (site, 9)), PROTOCOL, Note(1))
    other = "/p2pgrid/test/other/1"  # served by device 0 alone: the host speaks it
    left[0].handle(other, lambda request: asyncio.sleep(0, Note(0)))
    with pytest.raises(DeviceAbsent, match="does not serve"):  # running, no handler yet
        await right.request(address(left[0].peer_id, (site, 1)), other, Note(1))
    with pytest.raises(DeviceAbsent, match="is not running"):  # a call inside the hub too
        await left[0].request(address(left[0].peer_id, (site, 2)), PROTOCOL, Note(1))
    with pytest.raises(RequestRejected, match="refused"):  # names no device: which one?
        await right.request(left[0].peer_id, PROTOCOL, Note(1))
    answer = await right.request(address(left[0].peer_id, (site, 1)), PROTOCOL, Note(1))
    assert answer.decode(Note) == Note(1, "1 from 3")


async def test_a_withdrawn_protocol_is_refused_its_answers_end_and_the_rest_is_served(
    make_hub: MakeHub, owner: TestSite
) -> None:
    """What a gateway does to a failed device whose view carries its site's replica:
    its agent's protocols go (answers in flight end at once with a refusal, new
    requests get the device's error answer), its other protocols answer on."""
    site = owner.identity.site_id
    left = await make_hub(keys(owner, [0, 1]))
    (right,) = await make_hub(keys(owner, [3]), bootstrap=left[0].addrs)
    await listed(right, {(site, 0), (site, 1)})
    slow, kept = "/p2pgrid/test/slow/1", "/p2pgrid/test/kept/1"
    started = asyncio.Event()

    async def never(request: Delivery) -> Note:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    who_am_i(left[0])
    left[0].handle(slow, never)
    left[0].handle(kept, lambda request: asyncio.sleep(0, Note(0, "kept")))
    assert left[0].serving == {PROTOCOL, slow, kept}
    at0 = address(left[0].peer_id, (site, 0))

    async def refused(host: PeerHost, n: int) -> str:
        with pytest.raises(RequestRejected, match="refused") as raised:
            await host.request(at0, slow, Note(n))
        return str(raised.value)

    async with asyncio.timeout(WAIT_S), asyncio.TaskGroup() as tasks:  # at once, not at
        remote = tasks.create_task(refused(right, 1))  # the requests' own timeouts
        await started.wait()
        started.clear()
        local = tasks.create_task(refused(left[1], 2))  # a call inside the hub
        await started.wait()
        left[0].withdraw([slow, PROTOCOL])
    assert slow in remote.result()
    assert slow in local.result()
    assert left[0].serving == {kept}
    with pytest.raises(DeviceAbsent, match="does not serve"):
        await right.request(at0, PROTOCOL, Note(3))
    answer = await right.request(at0, kept, Note(4))
    assert answer.decode(Note) == Note(0, "kept")
    await listed(right, {(site, 0), (site, 1)})  # still there: its host runs on


async def test_a_host_of_one_and_a_hub_of_three_interoperate(
    make_hub: MakeHub, owner: TestSite
) -> None:
    site = owner.identity.site_id
    (single,) = await make_hub(keys(owner, [0]))
    hub = await make_hub(keys(owner, [1, 2, 3]), bootstrap=single.addrs)
    await listed(single, {(site, 1), (site, 2), (site, 3)})
    await listed(hub[0], {(site, 0), (site, 2), (site, 3)})
    # The host of one is addressed by its peer id alone (as every host was before).
    assert [p.peer_id for p in hub[0].peers() if p.device_index == 0] == [single.peer_id]
    for host in (single, *hub):
        who_am_i(host)
    answer = await hub[2].request(single.peer_id, PROTOCOL, Note(5))
    assert answer.decode(Note) == Note(5, "0 from 3")
    to_2 = next(p.peer_id for p in single.peers() if p.device_index == 2)
    assert (await single.request(to_2, PROTOCOL, Note(6))).decode(Note) == Note(6, "2 from 0")


async def test_a_forged_device_proof_refuses_the_hello(
    make_hub: MakeHub, owner: TestSite, other_owner: TestSite
) -> None:
    (honest,) = await make_hub(keys(owner, [0]))
    # Device 2's proof is signed with a key that is not device 2's.
    forged = [*keys(owner, [1]), *keys(owner, [2], signer=other_owner)]
    liar = await make_hub(forged, serve=[1], bootstrap=honest.addrs)

    async def refused() -> bool:
        return (
            honest.stats().misbehaviour.get(liar[0].peer_id, {}).get("hello:bad_device_proof", 0)
            > 0
        )

    await wait_until(refused, timeout_s=WAIT_S, what="the forged proof to be refused")
    assert honest.peers() == ()  # not even its honest device 1 is listed
    assert honest.stats().rejected_hellos["bad_signature"] >= 1


async def test_a_device_of_another_site_refuses_the_hello(
    make_hub: MakeHub, owner: TestSite, other_owner: TestSite, bridge: TrioBridge, topic: Topic
) -> None:
    with pytest.raises(ConfigError, match="one site"):
        HostHub(NetConfig(), [*keys(owner, [1]), *keys(other_owner, [2])])
    (honest,) = await make_hub(keys(owner, [0]))
    liar_hub = HostHub(NetConfig(bootstrap=honest.addrs), keys(owner, [1]), bridge=bridge)
    foreign = keys(other_owner, [2])[0]  # slipped past the constructor's check
    liar_hub.keys[(foreign.site.site_id, 2)] = foreign
    liar = PeerHost(NetConfig(), liar_hub.first, [topic], hub=liar_hub)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(liar_hub.stop)
        await liar.start()
        stack.push_async_callback(liar.stop)

        async def refused() -> bool:
            counts = honest.stats().misbehaviour.get(liar.peer_id, {})
            return counts.get("hello:foreign_device", 0) > 0

        await wait_until(refused, timeout_s=WAIT_S, what="the foreign device to be refused")
        assert honest.peers() == ()


async def test_a_non_member_device_is_left_out_and_the_rest_listed(
    make_hub: MakeHub, owner: TestSite
) -> None:
    site = owner.identity.site_id
    (honest,) = await make_hub(keys(owner, [0]))
    # Device 100 signs its proof, but is not enrolled in the site (0..63 are).
    await make_hub(keys(owner, [1, 100]), serve=[1], bootstrap=honest.addrs)
    await listed(honest, {(site, 1)})
    counts = next(iter(honest.stats().misbehaviour.values()))
    assert counts["hello:not_member_device"] >= 1
    assert honest.stats().banned == ()


async def test_a_listed_device_enrolled_here_later_joins_and_leaves_when_revoked(
    make_hub: MakeHub, owner: TestSite, topic: Topic
) -> None:
    """The hub's hello listed device 100 before it was a member here: once its
    enrolment joins this node's roster it is listed (PeerJoined) on the same
    connection, addressed by device; revoked here, it leaves (PeerLeft)."""
    site = owner.identity.site_id
    (honest,) = await make_hub(keys(owner, [0]))
    events = honest.events()
    hub = await make_hub(keys(owner, [1, 100]), serve=[1], bootstrap=honest.addrs)
    await listed(honest, {(site, 1)})

    async def next_about(device: int) -> PeerEvent:
        async with asyncio.timeout(WAIT_S):
            async for event in events:
                if event.peer.device_index == device:
                    return event
        raise AssertionError("the events ended")

    (roster,) = topic.members.rosters  # the log of this node learns the enrolment
    roster.enrol(Role.DEVICE, 100, owner.device(100).pubkey, 0)
    joined = await next_about(100)
    assert isinstance(joined, PeerJoined)
    assert parse_address(joined.peer.peer_id) == (hub[0].peer_id, (site, 100))
    assert {(p.site_id, p.device_index) for p in honest.peers()} == {(site, 1), (site, 100)}
    roster.revoke(Role.DEVICE, 100, 0)
    left = await next_about(100)
    assert isinstance(left, PeerLeft)
    assert {(p.site_id, p.device_index) for p in honest.peers()} == {(site, 1)}
    assert honest.stats().banned == ()


async def _refused_as_non_member(honest: PeerHost, late: PeerHost) -> None:
    """Until ``honest`` refused both hello exchanges of ``late`` (the one each side
    opened): ``late``'s signer, device 100, is no member here yet."""

    async def refused() -> bool:
        return honest.stats().misbehaviour.get(late.peer_id, {}).get("hello:not_member", 0) == 2

    await wait_until(refused, timeout_s=WAIT_S, what="the non-member's hellos to be refused")


async def _enrolled_and_joined(
    topic: Topic, owner: TestSite, events: EventStream, late: PeerHost
) -> None:
    """Enrol device 100 in the roster of ``topic``'s node; ``late`` then joins it:
    the next event of ``events``, on the same connection."""
    (roster,) = topic.members.rosters
    roster.enrol(Role.DEVICE, 100, owner.device(100).pubkey, 0)
    async with asyncio.timeout(WAIT_S):
        joined = await anext(events)
    assert isinstance(joined, PeerJoined)
    assert (joined.peer.peer_id, joined.peer.site_id, joined.peer.device_index) == (
        late.peer_id,
        owner.identity.site_id,
        100,
    )


async def test_a_peer_whose_signer_is_enrolled_here_later_joins_without_reconnecting(
    make_hub: MakeHub, owner: TestSite, topic: Topic
) -> None:
    """Its hello was refused (signed by device 100, not a member here yet) and
    kept: once device 100's enrolment joins this node's roster, the same hello is
    checked again and the peer joins (PeerJoined) on the same connection."""
    site = owner.identity.site_id
    (honest,) = await make_hub(keys(owner, [0]))
    events = honest.events()
    (late,) = await make_hub(keys(owner, [100]), bootstrap=honest.addrs)

    await _refused_as_non_member(honest, late)
    assert honest.peers() == ()
    await _enrolled_and_joined(topic, owner, events, late)  # the log of this node learns it
    assert {(p.site_id, p.device_index) for p in honest.peers()} == {(site, 100)}
    # the refusal is not counted again when the kept hello is checked again
    assert honest.stats().misbehaviour[late.peer_id]["hello:not_member"] == 2
    assert honest.stats().banned == ()


async def test_a_kept_hello_that_does_not_verify_once_its_signer_is_enrolled_is_refused(
    make_hub: MakeHub, owner: TestSite, other_owner: TestSite, topic: Topic
) -> None:
    """Checked again as a fresh hello: signed with another key than the one
    device 100 is enrolled with here, it is refused (bad signature, scored)."""
    (honest,) = await make_hub(keys(owner, [0]))
    (liar,) = await make_hub(keys(owner, [100], signer=other_owner), bootstrap=honest.addrs)

    def count(reason: str) -> int:
        return honest.stats().misbehaviour.get(liar.peer_id, {}).get(reason, 0)

    async def refused_as_non_member() -> bool:
        return count("hello:not_member") == 2

    await wait_until(refused_as_non_member, timeout_s=WAIT_S, what="the hellos to be refused")
    (roster,) = topic.members.rosters
    roster.enrol(Role.DEVICE, 100, owner.device(100).pubkey, 0)

    async def refused_as_forged() -> bool:
        return count("hello:bad_signature") == 1

    await wait_until(refused_as_forged, timeout_s=WAIT_S, what="the kept hello to be refused")
    assert honest.peers() == ()
    assert count("hello:not_member") == 2  # not counted again


async def test_a_later_hello_that_no_longer_proves_a_device_makes_it_leave(
    make_hub: MakeHub, owner: TestSite, bridge: TrioBridge
) -> None:
    """A joined peer's later hello replaces its list: a device it no longer proves
    (its gateway stopped serving it) leaves (PeerLeft), the others stay listed,
    and nothing is counted against the peer."""
    site = owner.identity.site_id
    (honest,) = await make_hub(keys(owner, [0]))
    events = honest.events()
    gateway = await make_hub(keys(owner, [1, 2, 3]), bootstrap=honest.addrs)
    await listed(honest, {(site, 1), (site, 2), (site, 3)})

    async def both_hellos_read() -> bool:  # the exchange each side opened: none in flight
        return honest.stats().accepted == 2

    await wait_until(both_hellos_read, timeout_s=WAIT_S, what="both first hellos to be read")
    node = gateway[0]._node
    assert node is not None
    # Its hello proves devices 2 and 3 besides its signer, 1; from now on only 2.
    assert [(p.device_index) for p in node._devices] == [2, 3]
    node._devices = node._devices[:1]
    await bridge.run(node._say_hello, ID.from_base58(honest.peer_id))
    async with asyncio.timeout(WAIT_S):
        seen = [await anext(events) for _ in range(4)]
    joined = {(e.peer.site_id, e.peer.device_index) for e in seen if isinstance(e, PeerJoined)}
    assert joined == {(site, 1), (site, 2), (site, 3)}
    left = seen[-1]
    assert isinstance(left, PeerLeft)
    assert (left.peer.peer_id, left.peer.device_index) == (gateway[0].hub.address((site, 3)), 3)
    assert {(p.site_id, p.device_index) for p in honest.peers()} == {(site, 1), (site, 2)}
    assert honest.stats().accepted == 3
    assert honest.stats().misbehaviour == {}


async def test_a_kept_hello_gone_stale_by_its_recheck_gets_a_new_hello_exchange(
    make_hub: MakeHub, owner: TestSite, topic: Topic
) -> None:
    """The non-member's kept hello is older than the replay window when its signer
    is enrolled here: instead of refusing it (stale, the peer's fault in nothing)
    this node opens a new hello exchange, whose fresh hello admits the peer on
    the same connection. Both hubs read one hand-moved clock: no waiting."""
    clock = ManualClock()
    (honest,) = await make_hub(keys(owner, [0]), clock=clock)
    events = honest.events()
    (late,) = await make_hub(keys(owner, [100]), bootstrap=honest.addrs, clock=clock)

    def count(reason: str) -> int:
        return honest.stats().misbehaviour.get(late.peer_id, {}).get(reason, 0)

    await _refused_as_non_member(honest, late)
    assert honest.stats().accepted == 0
    clock.t += honest.hub.config.replay_window_s + 1  # the kept hello is stale now
    await _enrolled_and_joined(topic, owner, events, late)
    assert honest.stats().accepted == 1  # the new exchange's hello, not the kept one
    assert count("hello:stale") == 0  # an honest peer's old hello is not held against it
    assert count("hello:not_member") == 2
    assert honest.stats().banned == ()


async def test_a_hub_with_one_member_device_here_is_still_addressed_by_device(
    make_hub: MakeHub, owner: TestSite
) -> None:
    """Its hello lists several devices, so it wants a target in each request, even
    when only one of them is a member here (the others not enrolled yet)."""
    site = owner.identity.site_id
    (honest,) = await make_hub(keys(owner, [0]))
    hub = await make_hub(keys(owner, [1, 100]), serve=[1], bootstrap=honest.addrs)
    await listed(honest, {(site, 1)})
    who_am_i(hub[0])
    (ref,) = honest.peers()
    assert parse_address(ref.peer_id) == (hub[0].peer_id, (site, 1))
    answer = await honest.request(ref.peer_id, PROTOCOL, Note(4))
    assert answer.decode(Note) == Note(4, "1 from 0")
    # Its publications name the same address as its hello did.
    sub = honest.subscribe(topic_of(hub[0]))
    await hub[0].publish(topic_of(hub[0]), Note(5))
    async with asyncio.timeout(WAIT_S):
        assert (await sub.get()).peer_id == ref.peer_id


async def test_a_ban_falls_on_the_peer_id_and_every_device_behind_it(
    make_hub: MakeHub, owner: TestSite
) -> None:
    site = owner.identity.site_id
    (judge,) = await make_hub(keys(owner, [0]), misbehaviour_threshold=2)
    hub = await make_hub(keys(owner, [1, 2]), bootstrap=judge.addrs)
    await listed(judge, {(site, 1), (site, 2)})
    one = next(p for p in judge.peers() if p.device_index == 1)
    judge.report_misbehaviour(one.peer_id, "test:lie")
    judge.report_misbehaviour(one.peer_id, "test:lie")
    assert judge.stats().banned == (hub[0].peer_id,)
    await listed(judge, set())  # device 2, which did nothing, went with it
    # A device's own hub never bans itself.
    two = next(p for p in hub[0].peers() if p.device_index == 2)
    for _ in range(5):
        hub[0].report_misbehaviour(two.peer_id, "test:lie")
    assert hub[0].stats().banned == ()


async def test_a_hub_serves_only_the_devices_it_was_made_for(
    bridge: TrioBridge, owner: TestSite, topic: Topic
) -> None:
    hub = HostHub(NetConfig(), keys(owner, [0, 1]), bridge=bridge)
    stranger = PeerHost(NetConfig(), keys(owner, [2])[0], [topic], hub=hub)
    impostor = PeerHost(NetConfig(), keys(owner, [1], signer=TestSite(b"x"))[0], [topic], hub=hub)
    for host in (stranger, impostor):
        with pytest.raises(ConfigError, match="not one of this hub's devices"):
            await host.start()
    await hub.stop()
    with pytest.raises(ConfigError, match="each device once"):
        HostHub(NetConfig(), keys(owner, [0, 0]))


async def test_two_hosts_of_one_device_started_at_once_are_refused_one(
    bridge: TrioBridge, owner: TestSite, topic: Topic
) -> None:
    hub = HostHub(NetConfig(), keys(owner, [0, 1]), bridge=bridge)
    twins = [PeerHost(NetConfig(), keys(owner, [1])[0], [topic], hub=hub) for _ in range(2)]
    try:
        started = await asyncio.gather(*(t.start() for t in twins), return_exceptions=True)
        assert [type(s) for s in started].count(ConfigError) == 1
        assert "has a running host already" in str(next(s for s in started if s is not None))
    finally:
        for twin in twins:
            await twin.stop()
        await hub.stop()


def test_device_lists_and_targets_round_trip_and_refuse_garbage(owner: TestSite) -> None:
    peer = b"\x00\x24" + bytes(36)
    site = owner.identity.site_id
    proofs = tuple(DeviceProof.make(owner.device(i), site, i, peer) for i in (1, 2))
    assert decode_devices(encode_devices(proofs)) == proofs
    assert proofs[0].verify(owner.device(1).pubkey, peer)
    assert not proofs[0].verify(owner.device(2).pubkey, peer)
    assert not proofs[0].verify(owner.device(1).pubkey, peer + b"\x01")  # another host
    for garbage in (
        b"",
        b"\x00\x00",
        encode_devices(proofs)[:-1],
        encode_devices(proofs) + b"\x00",
    ):
        with pytest.raises(FrameError):
            decode_devices(garbage)
    assert decode_target(encode_target((site, 7))) == (site, 7)
    with pytest.raises(FrameError):
        decode_target(b"\x00" * 11)
    assert parse_address(address("12D3Koo", (site, 7))) == ("12D3Koo", (site, 7))
    assert parse_address("12D3Koo") == ("12D3Koo", None)
    assert host_of(address("12D3Koo", (site, 7))) == host_of("12D3Koo") == "12D3Koo"
    for bad in ("a/b/c", f"p/{site}/x", f"p/{site}"):
        with pytest.raises(ValueError, match="not a peer id"):
            parse_address(bad)
