"""The one polling helper: wait for an external daemon's state, with a time cap.

In-process code waits on events; only external daemons (btcd, lnd) are polled,
and only through :func:`wait_until`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from p2pgrid.errors import RetryableError, TimeoutExpired

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.1
MAX_INTERVAL_S = 1.0


async def wait_until(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> T:
    """Call ``probe`` until it returns something other than ``None`` or ``False``.

    A :class:`RetryableError` raised by ``probe`` counts as "not yet". The interval
    backs off to :data:`MAX_INTERVAL_S`. Raises :class:`TimeoutExpired` naming
    ``what`` and the last retryable error once ``timeout_s`` has passed.
    """
    deadline = time.monotonic() + timeout_s
    last_error: RetryableError | None = None
    delay = interval_s
    while True:
        try:
            result = await probe()
        except RetryableError as exc:
            last_error = exc
        else:
            if result is not None and result is not False:
                return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutExpired(f"timed out after {timeout_s:.0f}s waiting for {what}{detail}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, MAX_INTERVAL_S)
