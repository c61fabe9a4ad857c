"""NodeWatch: a node that does not answer is a state with one WARNING and one INFO
line, retried with capped back-off up to the caller's deadline (no lnd needed: the
operations are in-process stand-ins; the real lnd is paused in tests/regtest)."""

from __future__ import annotations

import logging
import random

import pytest

from p2pgrid.backoff import Backoff
from p2pgrid.lightning import LndApiError, NodeState, NodeUnreachable, NodeWatch, WatchedNode

FAST = Backoff(initial_s=0.001, max_s=0.002)


class Flaky:
    """An operation that gets no answer ``away`` times, then answers."""

    def __init__(self, away: int) -> None:
        self.away = away
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.away:
            raise NodeUnreachable(f"node: ConnectError (call {self.calls})")
        return "info"


async def test_an_outage_is_one_warning_and_one_info_not_a_line_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    changes: list[NodeState] = []
    watch = NodeWatch(
        "dev-a", backoff=FAST, rng=random.Random(1), on_change=lambda s, _: changes.append(s)
    )
    op = Flaky(away=50)
    with caplog.at_level(logging.DEBUG, logger="p2pgrid.lightning.availability"):
        assert await watch.call(op, what="get_info", deadline_s=30) == "info"
    assert op.calls == 51
    assert watch.state is NodeState.UP
    assert watch.outages == 1
    assert changes == [NodeState.AWAY, NodeState.UP]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert "away" in warnings[0].getMessage()
    assert len(infos) == 1
    assert "back after 50 failed calls" in infos[0].getMessage()


async def test_a_node_away_past_the_deadline_is_unreachable_and_stays_away() -> None:
    watch = NodeWatch("dev-a", backoff=FAST)
    op = Flaky(away=10**9)
    with pytest.raises(NodeUnreachable, match=r"away for 0\.2s"):
        await watch.call(op, what="get_info", deadline_s=0.2)
    assert watch.state is NodeState.AWAY
    assert not watch.is_up
    assert op.calls > 5  # retried meanwhile


async def test_an_error_from_lnd_means_the_node_is_up_and_is_not_retried() -> None:
    watch = NodeWatch("dev-a", backoff=FAST)
    watch.unreachable(NodeUnreachable("gone"))
    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise LndApiError("invoice already settled", status=400)

    with pytest.raises(LndApiError):
        await watch.call(refused, what="cancel", deadline_s=5)
    assert calls == 1
    assert watch.state is NodeState.UP
    await watch.wait_up()  # set: returns at once


class Node:
    """The two calls of a LightningNode these tests need; unreachable ``away`` times."""

    def __init__(self, away: int) -> None:
        self.away = away
        self.pays = 0
        self.reads = 0

    async def list_payments(self) -> list[object]:
        self.reads += 1
        if self.reads <= self.away:
            raise NodeUnreachable("node: ReadTimeout")
        return []

    async def pay_invoice(self, bolt11: str, *, fee_limit_msat: int, timeout_s: int = 60) -> None:
        self.pays += 1
        raise NodeUnreachable("node: ReadTimeout")


async def test_a_watched_node_retries_reads_but_never_a_payment() -> None:
    node = Node(away=3)
    watch = NodeWatch("dev-a", backoff=FAST)
    watched = WatchedNode(node, watch, away_wait_s=5)  # type: ignore[arg-type]
    with pytest.raises(NodeUnreachable):
        await watched.pay_invoice("lnbcrt1...", fee_limit_msat=1000)
    assert node.pays == 1  # whether it left is asked of lnd by hash, not tried again
    assert watch.state is NodeState.AWAY
    assert await watched.list_payments() == []
    assert node.reads == 4
    assert watch.state is NodeState.UP
