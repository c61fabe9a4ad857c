"""Pace publishers so py-libp2p's 32-slot queues never overflow silently.

Each topic has a :class:`TopicPacer`: ``publish`` appends a record and returns
(waiting only while ``max_pending`` records are queued: back-pressure); one
flush task per topic takes a token from a token bucket, then seals every
pending record that fits into *one* envelope. At a low rate each record leaves
at once in its own envelope; in a burst, records wait for the next token and
leave together, so the envelope rate never exceeds ``rate`` per second.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from p2pgrid.net.envelope import MAX_RECORDS, Record, record_size


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """Take a token and return 0, or return how long until one is free."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class TopicPacer:
    """The pending records of one topic, with back-pressure and batching."""

    def __init__(self, *, room_bytes: int, max_pending: int, bucket: TokenBucket) -> None:
        self._room = room_bytes
        self._max_pending = max_pending
        self.bucket = bucket
        self._pending: deque[Record] = deque()
        self._nonempty = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._idle = asyncio.Event()
        self._idle.set()

    def fits(self, record: Record) -> bool:
        return record_size(record.data) <= self._room

    async def put(self, record: Record) -> None:
        while len(self._pending) >= self._max_pending:
            self._has_room.clear()
            await self._has_room.wait()
        self._pending.append(record)
        self._nonempty.set()
        self._idle.clear()

    async def next_batch(self) -> list[Record]:
        """Wait for a record and a token; return the records of one envelope."""
        await self._nonempty.wait()
        while (delay := self.bucket.take()) > 0:  # noqa: ASYNC110 - pacing, not a sync wait
            await asyncio.sleep(delay)
        batch: list[Record] = []
        used = 0
        while self._pending and len(batch) < MAX_RECORDS:
            size = record_size(self._pending[0].data)
            if batch and used + size > self._room:
                break
            batch.append(self._pending.popleft())
            used += size
        if not self._pending:
            self._nonempty.clear()
        if len(self._pending) < self._max_pending:
            self._has_room.set()
        return batch

    def sent(self) -> None:
        """The last batch left; wake ``drained`` waiters if nothing is pending."""
        if not self._pending:
            self._idle.set()

    async def drained(self) -> None:
        """Wait until every record put so far has been handed to py-libp2p."""
        await self._idle.wait()

    def __len__(self) -> int:
        return len(self._pending)
