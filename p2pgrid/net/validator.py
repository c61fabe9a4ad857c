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

Only accepted nonces are remembered, for twice the replay window. py-libp2p
does not mark a rejected message as seen, so every copy of it (one per
forwarder) comes back here; a rejected message is counted once, by a bounded
memory of recent rejections.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from p2pgrid.net.envelope import MAX_ENVELOPE_BYTES, Envelope, parse
from p2pgrid.net.errors import EnvelopeError
from p2pgrid.net.membership import Membership

#: Accept envelopes whose timestamp is within this many seconds of our clock.
REPLAY_WINDOW_S = 60.0
#: Rejected messages remembered so that their other copies are not counted again.
MAX_REMEMBERED_REJECTIONS = 4096


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
        self.rejected: Counter[Reason] = Counter()  # topic messages and requests
        self.rejected_hellos: Counter[Reason] = Counter()  # peers' signed announcements
        self._recent_rejections: OrderedDict[bytes, None] = OrderedDict()
        self.accepted = 0

    def check(
        self,
        data: bytes,
        *,
        context: str,
        members: Membership,
        sender_peer_id: bytes,
        max_bytes: int = MAX_ENVELOPE_BYTES,
        hello: bool = False,
    ) -> Envelope | Reason:
        """The accepted envelope, or the reason it was rejected (also counted, in
        :attr:`rejected_hellos` for a peer's hello, else in :attr:`rejected`)."""
        verdict = self._check(data, context, members, sender_peer_id, max_bytes)
        if isinstance(verdict, Reason):
            tally = self.rejected_hellos if hello else self.rejected
            self._count_once(tally, verdict, data, context, sender_peer_id)
        else:
            self.accepted += 1
        return verdict

    def _count_once(
        self, tally: Counter[Reason], reason: Reason, data: bytes, context: str, sender: bytes
    ) -> None:
        key = hashlib.sha256(b"%b\0%b\0%b" % (context.encode(), sender, data)).digest()
        if key in self._recent_rejections:
            return  # another copy of a message already counted
        self._recent_rejections[key] = None
        if len(self._recent_rejections) > MAX_REMEMBERED_REJECTIONS:
            self._recent_rejections.popitem(last=False)
        tally[reason] += 1

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

    def counts(self, *, hellos: bool = False) -> dict[str, int]:
        """Rejections by reason, every reason present (zero if none)."""
        tally = self.rejected_hellos if hellos else self.rejected
        return {reason.value: tally[reason] for reason in Reason}
