"""Awaiting work that must run to its end once started.

A write to SQLite through aiosqlite runs on the connection's thread whatever
happens to the task that awaits it: cancelling that task would leave the caller
believing a statement or a COMMIT did not happen while it did (or leave a
transaction open for the next writer to commit). :func:`to_the_end` awaits such
work as a task of its own that a cancel does not reach, and re-raises the
cancel once it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled meanwhile; then
    its result (or error), or the caller's cancel if one came."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()
