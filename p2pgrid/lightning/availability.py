"""Whether a Lightning node answers, as its callers see it: a state, not a crash.

An lnd that is killed, stopped (SIGSTOP), restarting or cut off makes every call
raise :class:`NodeUnreachable`. :class:`NodeWatch` turns those into a condition
of the node that its owner can read and wait on:

- its :class:`NodeState` (``UNKNOWN`` until the first call, then ``UP`` or
  ``AWAY``) and an event that is set while the node is up;
- one WARNING line when the node goes away and one INFO line when it is back,
  however many calls fail meanwhile (each failure is a DEBUG line);
- :meth:`NodeWatch.call`: run one *idempotent* operation (a read, paying an
  invoice: lnd refuses a second payment of one hash) and retry it with capped
  exponential back-off and jitter while the node is away, up to a deadline the
  caller gives; then :class:`NodeUnreachable`. A keysend is not idempotent (a new
  preimage per call) and must not go through it.

A node that answers with an error (``LndApiError``, ``PaymentFailed``...) is up:
those propagate unchanged, without a retry.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from p2pgrid.backoff import Backoff
from p2pgrid.lightning.errors import LightningError, NodeUnreachable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Retries of a node that is away: 0.5 s, doubling (jittered) up to 10 s.
NODE_RETRY = Backoff(initial_s=0.5, max_s=10.0)


class NodeState(enum.Enum):
    UNKNOWN = "unknown"  # no call has finished yet
    UP = "up"  # the last call got an answer
    AWAY = "away"  # the last call got none (refused, timed out, node starting)


_TRANSITIONS = {
    NodeState.UNKNOWN: {NodeState.UP, NodeState.AWAY},
    NodeState.UP: {NodeState.AWAY},
    NodeState.AWAY: {NodeState.UP},
}


class NodeWatch:
    """The availability of one node, fed by the outcome of its calls."""

    def __init__(
        self,
        name: str,
        *,
        backoff: Backoff = NODE_RETRY,
        rng: random.Random | None = None,
        on_change: Callable[[NodeState, str], None] | None = None,
    ) -> None:
        self.name = name
        self.backoff = backoff
        self._rng = rng or random.Random()
        self._on_change = on_change
        self._state = NodeState.UNKNOWN
        self._up = asyncio.Event()
        self._fails = 0  # failed calls since the node went away
        self.outages = 0  # times the node went away
        self.last_error = ""

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def is_up(self) -> bool:
        return self._state is NodeState.UP

    def _move(self, state: NodeState, reason: str) -> None:
        if state is self._state:
            return
        if state not in _TRANSITIONS[self._state]:  # pragma: no cover - table is total
            raise AssertionError(f"{self._state} -> {state}")
        previous, self._state = self._state, state
        if state is NodeState.AWAY:
            self.outages += 1
            self._up.clear()
            log.warning("[%s] Lightning node away (%s): retrying with back-off", self.name, reason)
        else:
            self._up.set()
            if previous is NodeState.AWAY:
                log.info("[%s] Lightning node back after %d failed calls", self.name, self._fails)
            self._fails = 0
        if self._on_change is not None:
            self._on_change(state, reason)

    def answered(self) -> None:
        """A call got an answer (any answer: an error from lnd is an answer)."""
        self._move(NodeState.UP, "answered")

    def unreachable(self, exc: NodeUnreachable) -> None:
        """A call got no answer."""
        self._fails += 1
        self.last_error = str(exc)
        log.debug("[%s] node call failed (%d): %s", self.name, self._fails, exc)
        self._move(NodeState.AWAY, str(exc))

    async def wait_up(self) -> None:
        """Until a call has got an answer since the node was last away. The caller
        applies the deadline."""
        await self._up.wait()

    async def call(self, op: Callable[[], Awaitable[T]], *, what: str, deadline_s: float) -> T:
        """``await op()``, retried while the node is away, for about ``deadline_s``.

        ``op`` must be idempotent and bounded by its own deadline (every
        :class:`~p2pgrid.lightning.LndClient` call is): no try starts after
        ``deadline_s``, and a try in flight is not cancelled (cancelling an HTTPS
        call in its TLS handshake leaks the socket on Python 3.11), so the call
        ends within ``deadline_s`` plus one try. Raises :class:`NodeUnreachable`
        once the deadline has passed without an answer; any other error at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        fails = 0
        while True:
            try:
                result = await op()
            except NodeUnreachable as exc:
                self.unreachable(exc)
                fails += 1
                left = deadline - loop.time()
                if left <= 0:
                    raise NodeUnreachable(
                        f"[{self.name}] {what}: node away for {deadline_s}s ({exc})"
                    ) from exc
                await asyncio.sleep(min(left, self.backoff.delay(fails, self._rng)))  # back-off
                continue
            except LightningError:  # lnd answered, with an error: it is up
                self.answered()
                raise
            self.answered()
            return result
