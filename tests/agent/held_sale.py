"""A seller paid on delivery killed while the buyer's payment is held
(docs/market.md, section 6.2 step 6): the round that both its tests run, on fake
Lightning (``tests/agent/test_pay_on_delivery.py``) and on real lnd
(``tests/regtest/test_held_sale_restart.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from p2pgrid.agent.energy import EnergyDesk
from p2pgrid.lightning import InvoiceState
from p2pgrid.lightning.node import LightningNode
from p2pgrid.net import PeerRef


class HeldSite(Protocol):
    """The site the round runs on: the devices in ``cut`` hear no more of the
    log; ``spread`` replicates every log to the others at once."""

    cut: set[int]

    async def spread(self) -> None: ...


async def seller_killed_while_held(
    site: HeldSite,
    seller: EnergyDesk,
    buyer: EnergyDesk,
    *,
    seller_node: LightningNode,
    seller_peers: list[PeerRef],
    held: Callable[[], Awaitable[str]],
    restart: Callable[[], Awaitable[EnergyDesk]],
    round: tuple[int, int],
    export_wh: int,
    rate_msat_per_kwh: int,
) -> tuple[EnergyDesk, str, int]:
    """One ``round`` (period, interval): ``seller`` asks ``export_wh``, ``buyer``
    bids 100 Wh and settles; once ``held()`` (the payment hash, when the seller's
    node holds the payment ACCEPTED) the seller is killed before it heard the
    buyer's ``delivered`` entry, the logs spread, and ``restart()``'s desk runs
    until it resolved what it found held. Returns that desk, the payment hash and
    the Wh bought."""
    period, interval = round
    started, killed = asyncio.Event(), asyncio.Event()

    async def sell_until_killed() -> None:
        async with seller.running():
            started.set()
            await killed.wait()  # never set: the seller dies with its watch

    async with asyncio.TaskGroup() as tasks, buyer.running():
        selling = tasks.create_task(sell_until_killed())
        await started.wait()
        ask = await seller.offer(
            period=period,
            interval=interval,
            export_wh=export_wh,
            rate_msat_per_kwh=rate_msat_per_kwh,
        )
        assert ask is not None
        bid = await buyer.bid(
            100, period=period, interval=interval, rate_msat_per_kwh=rate_msat_per_kwh
        )
        assert bid is not None
        site.cut.add(seller.me.device)  # the seller hears no more of the log
        bought = await buyer.settle_round(period=period, interval=interval, peers=seller_peers)
        payment_hash = await held()
        selling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await selling
        assert (seller.settled, seller.cancelled) == ([], [])
        assert (await seller_node.lookup_invoice(payment_hash)).state is InvoiceState.ACCEPTED
        site.cut.clear()
        await site.spread()  # the restarted seller finds the buyer's ``delivered``
        restarted = await restart()
        async with restarted.running():
            pass  # leaving it waits for the holds it resumed
    return restarted, payment_hash, bought
