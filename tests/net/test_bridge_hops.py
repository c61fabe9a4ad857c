"""The cheap paths of the net layer's hot loop: bridge hops and the host's address cache."""

from __future__ import annotations

import asyncio
import threading

import multiaddr
import pytest
import trio

from p2pgrid.net.bridge import TrioBridge
from p2pgrid.net.node import CachedAddrs

WAIT_S = 10.0


async def test_to_asyncio_from_trio_and_from_another_thread(bridge: TrioBridge) -> None:
    """Trio code (on the loop's thread) and any other thread both reach the loop,
    and the callables run on the loop's thread, in the order they were scheduled."""
    loop = asyncio.get_running_loop()
    calls: list[tuple[str, int]] = []
    done = asyncio.Event()

    def record(label: str) -> None:
        calls.append((label, threading.get_ident()))
        if len(calls) == 3:
            done.set()

    async def from_trio() -> int:
        bridge.to_asyncio(record, "trio-1")
        bridge.to_asyncio(record, "trio-2")
        await trio.lowlevel.checkpoint()
        return threading.get_ident()

    trio_thread = await bridge.run(from_trio)
    other = threading.Thread(target=bridge.to_asyncio, args=(record, "thread"))
    other.start()
    async with asyncio.timeout(WAIT_S):
        await done.wait()
    other.join()
    loop_thread = threading.get_ident()
    assert trio_thread == loop_thread  # guest mode: trio runs on the loop's thread
    assert [label for label, _ in calls] == ["trio-1", "trio-2", "thread"]
    assert {thread for _, thread in calls} == {loop_thread}
    assert loop.is_running()


async def test_run_returns_values_and_errors(bridge: TrioBridge) -> None:
    async def value(x: int) -> int:
        await trio.lowlevel.checkpoint()
        return x * 2

    async def failing() -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError("from trio")

    assert await bridge.run(value, 21) == 42
    with pytest.raises(ValueError, match="from trio"):
        await bridge.run(failing)


def test_cached_addrs_reads_once_per_ttl_and_never_keeps_an_empty_answer() -> None:
    addr = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001")
    answers: list[list[multiaddr.Multiaddr]] = [[], [addr], [addr, addr]]
    reads = 0
    now = 100.0

    def read() -> list[multiaddr.Multiaddr]:
        nonlocal reads
        reads += 1
        return answers[min(reads, len(answers)) - 1]

    addrs = CachedAddrs(read, ttl_s=1.0, clock=lambda: now)
    assert addrs() == []  # not listening yet: not kept
    assert addrs() == [addr]
    assert addrs() == [addr]
    assert reads == 2
    copy = addrs()
    copy.append(addr)  # callers get their own list
    assert addrs() == [addr]
    now += 1.0
    assert addrs() == [addr, addr]
    assert reads == 3
