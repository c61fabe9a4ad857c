"""Decide whether an incoming envelope is accepted, and count why not.

Runs inside the pubsub topic validator (before a message is delivered or
forwarded) and on every direct-stream frame. The checks, in order:

1. ``too_large``: more bytes than the limit.
2. ``malformed``: not a well-formed envelope.
3. ``not_member``: the (site, device index) is not a member of the topic.
4. ``bad_signature``: not signed by that device's key for this topic.
5. ``stale``: the timestamp is outside the replay window around our clock.
6. ``replay``: the (site, device, epoch, seq) nonce was already accepted
   in this context (topic or protocol).
7. ``peer_mismatch``: the envelope names another libp2p peer than the one that
   signed the pubsub message / opened the stream (so no peer speaks for another
   device).

Only accepted nonces are remembered, for twice the replay window.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable

from p2pgrid.net.envelope import MAX_ENVELOPE_BYTES, Envelope, EnvelopeError, parse
from p2pgrid.net.membership import Membership

#: Accept envelopes whose timestamp is within this many seconds of our clock.
REPLAY_WINDOW_S = 60.0


class Reason(enum.StrEnum):
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    NOT_MEMBER = "not_member"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    REPLAY = "replay"
    PEER_MISMATCH = "peer_mismatch"


class EnvelopeValidator:
    """Checks envelopes against a membership; remembers accepted nonces; counts rejections."""

    def __init__(
        self,
        *,
        replay_window_s: float = REPLAY_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._window_ms = int(replay_window_s * 1000)
        self._clock = clock
        self._seen: dict[tuple[str, tuple[str, int, int, int]], int] = {}
        self._next_prune_ms = 0
        self.rejected: Counter[Reason] = Counter()
        self.accepted = 0

    def check(
        self,
        data: bytes,
        *,
        context: str,
        members: Membership,
        sender_peer_id: bytes,
        max_bytes: int = MAX_ENVELOPE_BYTES,
    ) -> Envelope | Reason:
        """The accepted envelope, or the reason it was rejected (also counted)."""
        verdict = self._check(data, context, members, sender_peer_id, max_bytes)
        if isinstance(verdict, Reason):
            self.rejected[verdict] += 1
        else:
            self.accepted += 1
        return verdict

    def _check(
        self,
        data: bytes,
        context: str,
        members: Membership,
        sender_peer_id: bytes,
        max_bytes: int,
    ) -> Envelope | Reason:
        if len(data) > max_bytes:
            return Reason.TOO_LARGE
        try:
            envelope = parse(data, max_bytes=max_bytes)
        except EnvelopeError:
            return Reason.MALFORMED
        pubkey = members.device_pubkey(envelope.site_id, envelope.device_index)
        if pubkey is None:
            return Reason.NOT_MEMBER
        if not envelope.verify(pubkey, context):
            return Reason.BAD_SIGNATURE
        now_ms = int(self._clock() * 1000)
        if abs(now_ms - envelope.timestamp_ms) > self._window_ms:
            return Reason.STALE
        self._prune(now_ms)
        key = (context, envelope.nonce)
        if key in self._seen:
            return Reason.REPLAY
        if envelope.peer_id != sender_peer_id:
            return Reason.PEER_MISMATCH
        self._seen[key] = now_ms + 2 * self._window_ms
        return envelope

    def _prune(self, now_ms: int) -> None:
        if now_ms < self._next_prune_ms:
            return
        self._next_prune_ms = now_ms + self._window_ms // 4
        expired = [nonce for nonce, until in self._seen.items() if until < now_ms]
        for nonce in expired:
            del self._seen[nonce]

    def counts(self) -> dict[str, int]:
        """Rejections by reason, every reason present (zero if none)."""
        return {reason.value: self.rejected[reason] for reason in Reason}
