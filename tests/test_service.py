"""A node process stops at any moment, in order, and ends with one line and an exit code.

In-process: :class:`Service` with real asyncio tasks and a real SIGTERM to this
process. As processes (``agent run`` and ``utility run`` with lnd absent or
unreachable): ``tests/cli/test_commands.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from p2pgrid.errors import ConfigError, FatalError, ReportableError, RetryableError
from p2pgrid.service import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    Command,
    Service,
    exit_code,
)


class _Commands:
    """Commands a test feeds one by one; records when the reader let go of it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Command] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[Command]:
        try:
            while True:
                yield await self.queue.get()
        finally:
            self.closed.set()


async def _serve_long_work(stop: Command | None) -> list[str]:
    """Start work that never ends by itself, then stop (a command or SIGTERM)."""
    events: list[str] = []
    commands = _Commands()
    service = Service()
    started, answered = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            events.append(f"work cancelled, input closed: {commands.closed.is_set()}")

    async def handle(command: Command) -> None:
        if command["cmd"] == "start":
            service.spawn(work())
        events.append(command["cmd"])
        answered.set()

    serving = asyncio.create_task(service.serve(aiter(commands), handle))
    await commands.queue.put({"cmd": "start"})
    await started.wait()
    answered.clear()
    await commands.queue.put({"cmd": "digest"})  # answered while the work runs
    await answered.wait()
    if stop is None:
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        await commands.queue.put(stop)
    async with asyncio.timeout(10):
        await serving
    return events


@pytest.mark.parametrize("stop", [{"cmd": "stop"}, None], ids=["stop", "sigterm"])
async def test_stop_ends_running_work_after_input(stop: Command | None) -> None:
    events = await _serve_long_work(stop)
    assert events == ["start", "digest", "work cancelled, input closed: True"]


async def test_failing_work_stops_the_service_with_its_error() -> None:
    service = Service()
    commands = _Commands()

    async def work() -> None:
        raise ReportableError("payment failed")

    async def handle(command: Command) -> None:
        service.spawn(work())

    await commands.queue.put({"cmd": "start"})
    with pytest.raises(ExceptionGroup) as caught:
        async with asyncio.timeout(10):
            await service.serve(aiter(commands), handle)
    assert exit_code(caught.value) == (EXIT_FAILED, "error: payment failed")


def test_exit_codes_follow_the_error_split() -> None:
    assert exit_code(ConfigError("bad")) == (EXIT_CONFIG, "error: bad")
    assert exit_code(RetryableError("down")) == (EXIT_UNAVAILABLE, "error: down")
    assert exit_code(FatalError("broken")) == (EXIT_FAILED, "error: broken")
    nested = ExceptionGroup("g", [ExceptionGroup("h", [RetryableError("lnd down")])])
    assert exit_code(nested) == (EXIT_UNAVAILABLE, "error: lnd down")
    assert exit_code(ValueError("a bug")) is None  # a bug keeps its traceback
