"""p2pgrid.finish.to_the_end: work started runs to its end under a cancel."""

from __future__ import annotations

import asyncio

import pytest

from p2pgrid.finish import to_the_end


async def test_a_cancelled_caller_still_lets_the_work_finish_then_is_cancelled() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    done: list[str] = []

    async def work() -> str:
        started.set()
        await release.wait()
        done.append("committed")
        return "ok"

    caller = asyncio.create_task(to_the_end(work()))
    await started.wait()
    caller.cancel()  # reaches the caller, not the work
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert done == ["committed"]


async def test_without_a_cancel_it_returns_the_result_or_raises_the_error() -> None:
    async def ok() -> int:
        return 7

    async def failing() -> int:
        raise ValueError("refused")

    assert await to_the_end(ok()) == 7
    with pytest.raises(ValueError, match="refused"):
        await to_the_end(failing())
