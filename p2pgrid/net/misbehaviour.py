"""Counting what peers do wrong, and banning those that keep doing it.

Every layer that catches a peer lying or sending garbage reports it here, by
peer id and a short reason (``hello:bad_address``, ``request:malformed``,
``sync:empty_range``...). Counts are kept per peer and per reason and shown in
the host's stats. A peer whose score reaches ``threshold`` within one window
(events that an honest peer can cause, such as a stale timestamp, are counted
but not scored) is *banned* for ``ban_s`` seconds: the host drops its connections, refuses its
streams and hellos, and does not dial it (see docs/security.md for the
numbers). A ban ends by itself; the peer's score starts again from zero.

Plain data, no I/O: the trio node and the asyncio host share one instance (the
bridge runs trio as a guest in the asyncio thread, so there is no concurrency).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

#: Misbehaviour events from one peer that get it banned (within one window).
MISBEHAVIOUR_THRESHOLD = 16
#: How long the score of a peer is kept after its last event.
MISBEHAVIOUR_WINDOW_S = 600.0
#: How long a banned peer is refused.
BAN_S = 600.0
#: Peers remembered at most (the oldest are forgotten first; bans are kept).
MAX_TRACKED_PEERS = 4096


@dataclass
class _Record:
    reasons: Counter[str] = field(default_factory=Counter)
    score: int = 0
    last_at: float = 0.0
    banned_until: float = 0.0


class Misbehaviour:
    """Per-peer, per-reason counts; bans past a threshold."""

    def __init__(
        self,
        *,
        threshold: int = MISBEHAVIOUR_THRESHOLD,
        window_s: float = MISBEHAVIOUR_WINDOW_S,
        ban_s: float = BAN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.window_s = window_s
        self.ban_s = ban_s
        self._clock = clock
        self._peers: dict[str, _Record] = {}
        #: Every ban so far (a peer banned twice counts twice).
        self.bans = 0

    def record(self, peer_id: str, reason: str, *, scored: bool = True) -> bool:
        """Count one event; True if it just got ``peer_id`` banned. An event that
        an honest peer can cause (``scored=False``: a stale clock, a peer that
        does not know it is not a member here) is counted but never bans."""
        now = self._clock()
        rec = self._peers.get(peer_id)
        if rec is None:
            self._forget_oldest()
            rec = self._peers[peer_id] = _Record()
        if now - rec.last_at > self.window_s:
            rec.score = 0
        rec.reasons[reason] += 1
        rec.last_at = now
        if rec.banned_until > now or not scored:
            return False  # counted; nothing new to do
        rec.score += 1
        if rec.score < self.threshold:
            return False
        rec.score = 0
        rec.banned_until = now + self.ban_s
        self.bans += 1
        return True

    def banned(self, peer_id: str) -> bool:
        rec = self._peers.get(peer_id)
        return rec is not None and rec.banned_until > self._clock()

    def counts(self) -> dict[str, dict[str, int]]:
        """Events by peer and reason (every peer that misbehaved, banned or not)."""
        return {peer: dict(rec.reasons) for peer, rec in self._peers.items() if rec.reasons}

    def banned_peers(self) -> tuple[str, ...]:
        now = self._clock()
        return tuple(peer for peer, rec in self._peers.items() if rec.banned_until > now)

    def _forget_oldest(self) -> None:
        if len(self._peers) < MAX_TRACKED_PEERS:
            return
        now = self._clock()
        idle = [p for p, r in self._peers.items() if r.banned_until <= now]
        if idle:
            oldest = min(idle, key=lambda p: self._peers[p].last_at)
            del self._peers[oldest]
