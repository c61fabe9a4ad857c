"""Running a node process (an agent or the utility) until it is told to stop.

:class:`Service` owns the process's work: it reads commands (the line protocol of
:mod:`p2pgrid.jsonlines`) while long work (a run of periods) goes on in the
background, so ``stop`` is honoured at any moment; SIGTERM and SIGINT mean
``stop`` too. A stop goes in order: no new input (the command reader ends), then
the work in flight is cancelled and awaited (payments are safe to cancel: every
one has its intent recorded first and is resolved on the next start), and the
caller closes storage last (its exit stack: replica, host, database, lnd).
SIGHUP means "read your files again" (:func:`on_hangup`: a node run from the
owner's entries file reads it at once).

:func:`run_process` is the top of such a process: it runs the coroutine and
turns every p2pgrid error into one line ``error: <what>`` on stderr and an exit
code, never a traceback:

====  =====================================================================
code  meaning
====  =====================================================================
0     stopped cleanly (``stop``, end of input, SIGTERM or SIGINT)
1     failed (a :class:`ReportableError` or :class:`FatalError`): see the line
2     bad configuration (:class:`ConfigError`): fix the named file
3     a daemon or peer it needs is unreachable (:class:`RetryableError`):
      start again once it is up
====  =====================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, NoReturn

from p2pgrid.errors import ConfigError, P2PGridError, RetryableError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3

Command = dict[str, Any]


class Service:
    """Commands in the foreground, work in the background, one orderly stop."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._work: set[asyncio.Task[None]] = set()
        self._group: asyncio.TaskGroup | None = None

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background; it is cancelled when the service stops,
        and an error in it stops the service (and is raised by :meth:`serve`)."""
        if self._group is None:
            raise RuntimeError("spawn() is only allowed while serve() runs")
        task = self._group.create_task(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def serve(
        self,
        commands: AsyncIterator[Command],
        handle: Callable[[Command], Awaitable[None]],
    ) -> None:
        """Hand each command but ``stop`` to ``handle`` until ``stop``, end of
        input or a signal; then stop in order (input, then work in flight)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                reader = group.create_task(self._read(commands, handle))
                await self.stopping.wait()
                reader.cancel()  # 1. no new input
                for task in list(self._work):  # 2. the work in flight
                    task.cancel()
        finally:
            self._group = None
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _read(
        self, commands: AsyncIterator[Command], handle: Callable[[Command], Awaitable[None]]
    ) -> None:
        try:
            async for command in commands:
                if command["cmd"] == "stop":
                    break
                await handle(command)
        finally:
            aclose = getattr(commands, "aclose", None)
            if aclose is not None:  # no new input from here (closes stdin's pipe)
                await aclose()
            self.stopping.set()


@contextlib.contextmanager
def on_hangup(callback: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGHUP calls ``callback`` (in the running loop) instead of
    ending the process: a daemon's "read your files again"."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, callback)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def exit_code(exc: BaseException) -> tuple[int, str] | None:
    """The exit code and line for an error a process ends with (None: a bug,
    let the traceback show)."""
    errors = [e for e in _leaves(exc) if isinstance(e, P2PGridError)]
    if not errors:
        return None
    first = errors[0]
    if isinstance(first, ConfigError):
        code = EXIT_CONFIG
    elif isinstance(first, RetryableError):
        code = EXIT_UNAVAILABLE
    else:
        code = EXIT_FAILED
    return code, f"error: {first}"


def run_process(main: Coroutine[Any, Any, None]) -> NoReturn:
    """Run a process's main coroutine; exit with the code of the table above."""
    try:
        asyncio.run(main)
    except KeyboardInterrupt:  # a second Ctrl-C before the handler was installed
        sys.exit(130)
    except (P2PGridError, BaseExceptionGroup) as exc:
        outcome = exit_code(exc)
        if outcome is None:
            raise
        code, line = outcome
        print(line, file=sys.stderr)
        sys.exit(code)
    sys.exit(EXIT_OK)
