"""Operating stacks: side by side, never reused, cleaned after a crash, channels close."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator

import pytest

from p2pgrid.poll import wait_until
from p2pgrid.regtest import (
    ChannelSpec,
    Daemons,
    NodeSpec,
    Stack,
    StackBusy,
    StackConfig,
    Topology,
)
from p2pgrid.regtest.process import alive, find

PAIR = Topology(
    nodes=(NodeSpec("hub", fund_sat=4_000_000, utxos=1), NodeSpec("leaf", fund_sat=4_000_000)),
    channels=(ChannelSpec("leaf", "hub", 1_000_000),),
)


@pytest.fixture
async def second(daemons: Daemons, stack: Stack) -> AsyncIterator[Stack]:
    """A small second stack, up beside the session's stack."""
    other = Stack(
        StackConfig(name=f"pair-{os.getpid()}", root=stack.config.root, topology=PAIR), daemons
    )
    await other.up()
    try:
        yield other
    finally:
        await other.down()
    assert not find(other.config.dir)


async def test_two_stacks_run_side_by_side(stack: Stack, second: Stack) -> None:
    assert set(stack.layout.ports()).isdisjoint(second.layout.ports())
    async with stack.client("utility") as u, second.client("hub") as h:
        assert (await u.get_info()).pubkey != (await h.get_info()).pubkey
        assert (await h.get_info()).num_active_channels == 1


async def test_a_running_stack_is_never_reused(second: Stack) -> None:
    again = Stack(second.config, second.daemons)
    with pytest.raises(StackBusy, match="down"):
        await again.up()
    assert second.status()["status"] == "ready"


async def test_channel_close_returns_funds_on_chain(second: Stack) -> None:
    async with second.client("leaf") as leaf:
        (channel,) = await leaf.list_channels()
        wallet_before = (await leaf.wallet_balance()).confirmed_sat
        await leaf.close_channel(channel.channel_point)
        await second.mine(1)

        async def closed() -> bool:
            return not await leaf.list_channels() and not await leaf.pending_channels()

        await wait_until(closed, timeout_s=60, what="the channel to close")

        async def refunded() -> bool:
            return (await leaf.wallet_balance()).confirmed_sat > wallet_before

        await wait_until(refunded, timeout_s=60, what="the close output in leaf's wallet")
        gained = (await leaf.wallet_balance()).confirmed_sat - wallet_before
        # The opener gets its balance back, plus the commitment fee and anchors it
        # had reserved, minus the closing fee: close to its balance, below capacity.
        assert channel.local_balance_sat - 10_000 < gained < channel.capacity_sat


async def test_stack_left_by_a_crash_is_found_and_cleaned(daemons: Daemons, stack: Stack) -> None:
    config = StackConfig(
        name=f"crash-{os.getpid()}",
        root=stack.config.root,
        topology=Topology(nodes=(NodeSpec("solo"),)),
    )
    crashed = Stack(config, daemons)
    await crashed.up()
    pids = [p.pid for p in find(config.dir)]
    assert len(pids) == 2  # btcd + one lnd
    # A crash mid-start: the state says "starting" and the owner is gone.
    state = json.loads((config.dir / "stack.json").read_text())
    (config.dir / "stack.json").write_text(json.dumps({**state, "status": "starting"}))
    os.kill(pids[0], signal.SIGKILL)

    fresh = Stack(config, daemons)
    await fresh.up()
    try:
        assert not any(alive(p) for p in pids)
        assert fresh.status()["status"] == "ready"
        assert set(fresh.status()["pids"]).isdisjoint(pids)
    finally:
        await fresh.down()
    assert not config.dir.exists()
    await fresh.down()  # stopping twice is safe
