"""Run trio (which py-libp2p needs) inside the asyncio event loop, as a trio guest.

py-libp2p is written for trio; the rest of p2pgrid is asyncio. Trio's *guest
mode* runs a trio scheduler on the asyncio loop's own thread: trio hands its
I/O waits to a helper thread and its task steps to ``loop.call_soon``. There is
one trio run per thread, so one :class:`TrioBridge` per process, shared by all
the hosts of the process (tests run several).

Calls cross the bridge in two directions:

- asyncio -> trio: :meth:`TrioBridge.run` runs a trio coroutine function in the
  bridge's nursery and awaits its result; cancelling the asyncio caller cancels
  the trio task. :meth:`TrioBridge.start_service` starts a long-lived trio task
  and returns once it reports itself started.
- trio -> asyncio: :meth:`TrioBridge.to_asyncio` schedules a plain callable on
  the asyncio loop; trio code never awaits asyncio. Trio code runs on the
  loop's own thread (guest mode), so this is a plain ``call_soon``: no write to
  the loop's self-pipe and no extra turn of its selector per delivery (from any
  other thread it is ``call_soon_threadsafe``).

The bridge owns every trio task through one nursery. ``stop`` cancels it and
waits for the guest run to finish; it is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio

from p2pgrid.errors import FatalError
from p2pgrid.net.errors import BridgeClosed

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long ``stop`` waits for the trio run to finish after cancelling it.
BRIDGE_STOP_TIMEOUT_S = 10.0


class _ScopeBox:
    """Holds the trio cancel scope of one bridged call, once it exists."""

    __slots__ = ("cancelled", "scope")

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class TrioBridge:
    """A trio guest run inside the running asyncio loop, owning one trio nursery."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._done: asyncio.Future[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._token is not None and not self._stopping

    async def start(self) -> None:
        """Start the trio guest run; returns once its nursery accepts tasks."""
        if self._done is not None:
            raise FatalError("a TrioBridge can be started only once")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        ready: asyncio.Future[None] = loop.create_future()
        self._done = loop.create_future()

        async def trio_main() -> None:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._token = trio.lowlevel.current_trio_token()
                loop.call_soon_threadsafe(_resolve, ready, None)
                await trio.sleep_forever()

        def done_callback(result: outcome.Outcome[None]) -> None:
            self._token = None
            self._nursery = None
            if isinstance(result, outcome.Error):
                log.error("the trio guest run crashed", exc_info=result.error)
                error = FatalError(f"trio guest run crashed: {result.error!r}")
                _resolve(ready, error)
            _resolve(self._done, None)

        def soon_threadsafe(fn: Callable[[], object]) -> None:
            loop.call_soon_threadsafe(fn)

        def soon(fn: Callable[[], object]) -> None:
            loop.call_soon(fn)

        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=soon_threadsafe,
            run_sync_soon_not_threadsafe=soon,
            done_callback=done_callback,
            host_uses_signal_set_wakeup_fd=True,
        )
        await ready

    async def stop(self) -> None:
        """Cancel every trio task and wait for the guest run to end. Idempotent."""
        if self._done is None or self._done.done():
            return
        self._stopping = True
        nursery, token = self._nursery, self._token
        if nursery is not None and token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(nursery.cancel_scope.cancel)
        async with asyncio.timeout(BRIDGE_STOP_TIMEOUT_S):
            await asyncio.shield(self._done)

    def to_asyncio(self, fn: Callable[..., object], *args: Any) -> None:
        """From trio code: run ``fn(*args)`` soon on the asyncio loop."""
        if self._loop is None:
            raise BridgeClosed("bridge not started")
        self._soon(self._loop, fn, *args)

    def _soon(self, loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: Any) -> None:
        """``fn(*args)`` soon on ``loop``: ``call_soon`` on the loop's thread (where the
        guest run's trio code runs), else ``call_soon_threadsafe``."""
        if threading.get_ident() == self._loop_thread:
            loop.call_soon(fn, *args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def to_trio(self, fn: Callable[..., object], *args: Any) -> None:
        """From any thread: run the plain callable ``fn(*args)`` soon in trio."""
        self._run_sync_soon(fn, *args)

    def _run_sync_soon(self, fn: Callable[..., object], *args: Any) -> None:
        token = self._token
        if token is None or self._stopping:
            raise BridgeClosed("the trio bridge is not running")
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError as exc:
            raise BridgeClosed("the trio bridge has finished") from exc

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run the trio coroutine function ``fn(*args)`` and return its result.

        Exceptions raised by ``fn`` are re-raised here. Cancelling the caller
        cancels the trio task; if the bridge stops first, raises
        :class:`BridgeClosed`.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        box = _ScopeBox()

        async def call() -> None:
            with trio.CancelScope() as scope:
                box.scope = scope
                if box.cancelled:
                    scope.cancel()
                try:
                    result = await fn(*args)
                except trio.Cancelled:
                    self._soon(loop, _resolve, fut, BridgeClosed("trio call cancelled"))
                    raise
                except Exception as exc:  # noqa: BLE001 - forwarded to the asyncio caller
                    self._soon(loop, _resolve, fut, exc)
                else:
                    self._soon(loop, _resolve_value, fut, result)

        def spawn() -> None:
            if self._nursery is None:
                self._soon(loop, _resolve, fut, BridgeClosed("bridge stopped"))
                return
            self._nursery.start_soon(call)

        self._run_sync_soon(spawn)
        try:
            return await fut
        except asyncio.CancelledError:
            if self._token is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    self._token.run_sync_soon(box.cancel)
            raise

    async def start_service(self, fn: Callable[..., Awaitable[None]], *args: Any) -> Any:
        """Start a long-lived trio task ``fn(*args, task_status=...)`` in the nursery.

        Returns the value ``fn`` passes to ``task_status.started(value)``, once it
        does; the task then keeps running, owned by the bridge's nursery.
        """

        async def start() -> Any:
            if self._nursery is None:
                raise BridgeClosed("bridge stopped")
            return await self._nursery.start(fn, *args)

        return await self.run(start)


def _resolve(fut: asyncio.Future[Any] | None, error: BaseException | None) -> None:
    if fut is None or fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def _resolve_value(fut: asyncio.Future[T], value: T) -> None:
    if not fut.done():
        fut.set_result(value)
