"""The dial policy of :class:`~p2pgrid.net.discovery.Redialer`, against a fake host,
and the retries of a failed hello exchange (:func:`~p2pgrid.net.node.retry_while_wanted`).

Time is trio's ``MockClock``: it moves only when a test jumps it, and each step
waits until every task is blocked (``wait_all_tasks_blocked``), so what the
redialer did by a given (virtual) time is exact. A fake dial lasts until the
test ends it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import multiaddr
import trio
import trio.testing
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from p2pgrid.backoff import Backoff
from p2pgrid.net import NetConfig
from p2pgrid.net.discovery import Redialer
from p2pgrid.net.node import retry_while_wanted


def peer(n: int) -> ID:
    """A peer id that sorts by ``n`` (the policy compares ids' bytes)."""
    return ID(bytes([0, 1, n]))


def info(n: int) -> PeerInfo:
    return PeerInfo(peer(n), [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{4000 + n}")])


class HalfRandom(random.Random):
    """Every draw is the middle of its range: delays the test can name."""

    def random(self) -> float:
        return 0.5


class FakeHost:
    """What the redialer uses of a libp2p host: its id, its connected peers, and
    ``connect``, which lasts until :meth:`finish` (the peer then connected)."""

    def __init__(self, me: int) -> None:
        self.me = peer(me)
        self.connected: set[ID] = set()
        #: Each dial as (peer, virtual time it started).
        self.dials: list[tuple[ID, float]] = []
        self.in_flight: dict[ID, trio.Event] = {}
        self.most_in_flight = 0

    def get_id(self) -> ID:
        return self.me

    def get_connected_peers(self) -> list[ID]:
        return list(self.connected)

    def get_network(self) -> object:
        return self  # no negative dial cache to clear

    async def connect(self, peer_info: PeerInfo) -> None:
        self.dials.append((peer_info.peer_id, trio.current_time()))
        done = self.in_flight[peer_info.peer_id] = trio.Event()
        self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
        await done.wait()
        del self.in_flight[peer_info.peer_id]
        self.connected.add(peer_info.peer_id)

    def finish(self, peer_id: ID) -> None:
        self.in_flight[peer_id].set()

    def dialled(self) -> list[ID]:
        return [peer_id for peer_id, _ in self.dials]


Scenario = Callable[[Redialer, FakeHost, trio.testing.MockClock], Awaitable[None]]


def trio_run(main: Callable[[], Awaitable[None]], clock: trio.testing.MockClock) -> None:
    """``trio.run`` on a thread of its own: the session's bridge may already run a
    trio guest run on this one (one trio run per thread)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(trio.run, main, clock=clock).result()


def run(config: NetConfig, me: int, scenario: Scenario) -> None:
    """Run ``scenario`` beside a redialer of ``config`` on host ``me``, then stop it."""
    clock = trio.testing.MockClock()

    async def main() -> None:
        host = FakeHost(me)
        redialer = Redialer(
            host,  # type: ignore[arg-type]  # the part of IHost it uses
            config,
            name="test",
            is_connected=lambda peer_id: peer_id in host.connected,
            rng=HalfRandom(),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(redialer.run)
            await trio.testing.wait_all_tasks_blocked()
            await scenario(redialer, host, clock)
            nursery.cancel_scope.cancel()

    trio_run(main, clock)


async def step(clock: trio.testing.MockClock, seconds: float = 0.0) -> None:
    clock.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


BASE = NetConfig(max_concurrent_dials=2)


def test_learned_peers_are_dialled_a_few_at_a_time() -> None:
    learned = [peer(n) for n in range(10, 16)]

    async def scenario(redialer: Redialer, host: FakeHost, clock: trio.testing.MockClock) -> None:
        for n in range(10, 16):
            redialer.want(info(n))
        await step(clock)
        assert len(host.in_flight) == 2
        while host.in_flight:
            host.finish(next(iter(host.in_flight)))
            await step(clock)
        assert sorted(host.dialled(), key=ID.to_bytes) == learned  # each once
        assert host.most_in_flight == 2
        assert redialer.dials == 6

    run(BASE, 1, scenario)


def test_a_waiting_peer_that_connected_meanwhile_is_not_dialled() -> None:
    async def scenario(redialer: Redialer, host: FakeHost, clock: trio.testing.MockClock) -> None:
        redialer.want(info(7))
        redialer.want(info(8))
        await step(clock)
        assert host.dialled() == [peer(7)]  # one at a time: peer 8 waits its turn
        host.connected.add(peer(8))  # its own dial to us came in
        host.finish(peer(7))
        await step(clock, 30.0)
        assert host.dialled() == [peer(7)]

    run(replace(BASE, max_concurrent_dials=1), 5, scenario)


def test_dials_in_flight_count_towards_the_target() -> None:
    async def scenario(redialer: Redialer, host: FakeHost, clock: trio.testing.MockClock) -> None:
        for n in range(10, 15):
            redialer.want(info(n))
        await step(clock)
        assert len(host.in_flight) == 2  # the target, not the 8 allowed at once
        for peer_id in list(host.in_flight):
            host.finish(peer_id)
        await step(clock, 30.0)
        assert len(host.dials) == 2
        assert len(host.connected) == 2

    run(replace(BASE, max_concurrent_dials=8, target_peers=2), 1, scenario)


def test_a_bootstrap_peer_is_dialled_at_once_and_first() -> None:
    async def scenario(redialer: Redialer, host: FakeHost, clock: trio.testing.MockClock) -> None:
        redialer.want(info(7))
        redialer.want(info(8))
        await step(clock)  # both learned peers due, one dialling
        assert host.dialled() == [peer(7)]
        await step(clock, 1.0)
        redialer.want(info(9), bootstrap=True)
        await step(clock)
        host.finish(peer(7))
        await step(clock)
        assert host.dialled() == [peer(7), peer(9)]  # before peer 8, waiting since 0 s

    run(replace(BASE, max_concurrent_dials=1), 5, scenario)


# -- hellos tried again ------------------------------------------------------------


def attempts_of(outcomes: list[bool], wanted_for: int = 99, tries: int = 6) -> list[float]:
    """When ``retry_while_wanted`` tried (virtual seconds), each attempt's outcome
    taken from ``outcomes``; ``wanted()`` is true for its first ``wanted_for`` calls."""
    times: list[float] = []
    asked = 0

    async def attempt() -> bool:
        times.append(trio.current_time())
        return outcomes[len(times) - 1]

    def wanted() -> bool:
        nonlocal asked
        asked += 1
        return asked <= wanted_for

    async def main() -> None:
        fails = await retry_while_wanted(
            attempt, wanted, backoff=Backoff(1.0, 8.0), tries=tries, rng=HalfRandom()
        )
        assert fails == sum(not ok for ok in outcomes[: len(times)])

    trio_run(main, trio.testing.MockClock(autojump_threshold=0))
    return times


def test_a_failed_hello_is_tried_again_after_the_back_off() -> None:
    # HalfRandom takes a quarter off each delay: 0.75 s, then 1.5 s.
    assert attempts_of([False, False, True]) == [0.0, 0.75, 2.25]


def test_a_hello_is_not_tried_again_once_no_longer_wanted() -> None:
    # The peer left, or joined by its own hello, during the first wait.
    assert attempts_of([False, True], wanted_for=0) == [0.0]


def test_a_hello_is_tried_at_most_tries_times() -> None:
    assert len(attempts_of([False] * 10, tries=3)) == 3
