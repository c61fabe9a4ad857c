"""Replication of the log: announce new entries, and anti-entropy.

The network is behind :class:`SyncTransport` (request/response over a direct
stream, and publish on the site's log topic); :mod:`p2pgrid.replication`
implements it over a libp2p host and :mod:`p2pgrid.testing.loopback` in memory for
tests. Inbound traffic goes to :meth:`Replicator.handle_request` and
:meth:`Replicator.handle_announce` (or :meth:`Replicator.receive_announce`, which
leaves the pull after a gap to the caller).

Anti-entropy with one peer (:meth:`Replicator.sync_with`): ask for its heads;
for each author whose entries this replica does not provably hold, pull the
missing range (or, when the chains diverge, the peer's whole chain of that
author) in chunks; ingest verifies everything as usual. Run it with every peer
now and then, on start, and when an announcement leaves an entry pending: a late
joiner, a restarted agent or a healed partition then reaches the same log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from p2pgrid.errors import P2PGridError, RetryableError
from p2pgrid.ledger.bodies import Role
from p2pgrid.ledger.entry import Author, Entry
from p2pgrid.ledger.errors import MalformedError
from p2pgrid.ledger.heads import AuthorHead, Heads
from p2pgrid.ledger.outcome import IngestReport, Outcome, RejectReason
from p2pgrid.ledger.store import LogStore
from p2pgrid.ledger.wire import (
    MAX_RANGE_SEQS,
    Announce,
    ErrorReply,
    HeadsReply,
    HeadsRequest,
    PushedReply,
    RangeReply,
    RangeRequest,
    decode,
    encode,
)

log = logging.getLogger(__name__)

SYNC_PROTOCOL_ID = "/p2pgrid/log-sync/1.0.0"
#: Range requests one anti-entropy round sends at most (about 256 k entries); a
#: peer with more to give is pulled from again in the next round.
MAX_REQUESTS_PER_ROUND = 1024


def log_topic(site_id: str) -> str:
    """The pubsub topic on which a site's new entries are announced."""
    return f"p2pgrid/log/1/{site_id}"


class SyncTransport(Protocol):
    """What the replicator needs from the network: bytes in, bytes out."""

    async def request(self, peer: str, payload: bytes) -> bytes:
        """Send ``payload`` to ``peer`` over a direct stream and return its one reply.

        Raise :class:`p2pgrid.errors.RetryableError` if the peer cannot be reached.
        """
        ...

    async def publish(self, payload: bytes) -> None:
        """Publish ``payload`` on the site's log topic (best effort)."""
        ...


class SyncProtocolError(RetryableError):
    """A peer answered with something that is not a valid reply; try another time."""


class SyncMisbehaviour(SyncProtocolError):
    """A peer's reply no honest replica sends (``reason`` says which); count it."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class SyncReport:
    """What one anti-entropy round with one peer did."""

    peer: str
    requests: int
    received: int
    appended: int
    rejected: int


def left_a_gap(report: IngestReport) -> bool:
    """Whether an ingest held an entry pending (its predecessor must be pulled) or
    refused one whose author is not enrolled here yet (the enrolment must be)."""
    return any(
        r.outcome is Outcome.PENDING or r.reason is RejectReason.NON_MEMBER for r in report.results
    )


class Replicator:
    """Serves and pulls one store's log. Holds no tasks: the caller owns them."""

    def __init__(self, store: LogStore, transport: SyncTransport) -> None:
        self.store = store
        self.transport = transport
        #: Each peer's log digest as its last heads reply gave it (what this node knows).
        self.peer_digests: dict[str, bytes] = {}
        #: Each peer's heads as its last heads reply gave them (since this replicator
        #: was made): what a node restarted on an older log learns of its own chain.
        self.peer_heads: dict[str, Heads] = {}
        self._heard = asyncio.Event()  # set (and replaced) when a peer's digest changes

    @property
    def name(self) -> str:
        return self.store.name

    async def wait_heard(self) -> None:
        """Wait until a peer reports a digest different from the one it last did."""
        await self._heard.wait()

    async def publish(self, entries: Sequence[Entry]) -> None:
        """Announce entries (already in the local store) on the log topic."""
        if entries:
            await self.transport.publish(encode(Announce(tuple(e.raw for e in entries))))

    async def receive_announce(self, payload: bytes, from_peer: str | None) -> IngestReport:
        """Ingest an announcement, and only that: a gap it leaves is the caller's
        to fill (see :meth:`handle_announce` and :func:`left_a_gap`)."""
        try:
            msg = decode(payload)
        except MalformedError as exc:
            log.info("[%s] dropped announcement from %s: %s", self.name, from_peer, exc)
            return IngestReport((), ())
        if not isinstance(msg, Announce):
            log.info("[%s] dropped non-announcement from %s", self.name, from_peer)
            return IngestReport((), ())
        return await self.store.ingest_many(msg.entries)

    async def handle_announce(self, payload: bytes, from_peer: str | None) -> IngestReport:
        """Ingest an announcement; if it leaves a gap, pull from its sender now."""
        report = await self.receive_announce(payload, from_peer)
        if from_peer is not None and left_a_gap(report):
            log.info("[%s] gap after announcement from %s: pulling", self.name, from_peer)
            try:
                await self.sync_with(from_peer)
            except RetryableError as exc:  # the next anti-entropy round fills the gap
                log.info("[%s] pull from %s failed: %s", self.name, from_peer, exc)
        return report

    async def handle_request(self, payload: bytes) -> bytes:
        """Answer one request from a peer's direct stream."""
        reply, _ = await self.serve(payload, None)
        return reply

    async def serve(self, payload: bytes, from_peer: str | None) -> tuple[bytes, IngestReport]:
        """Answer one request from a peer's direct stream; also what a push (an
        ANNOUNCE sent as a request) did to the log (empty for other requests).

        A push's entries are ingested as an announcement's are (section 4 of
        docs/protocol-log.md: each checked, a refused one stores nothing); the
        answer is PUSHED, or ERROR naming what was refused."""
        nothing = IngestReport((), ())
        try:
            msg = decode(payload)
        except MalformedError as exc:
            return encode(ErrorReply(f"malformed request: {exc}")), nothing
        if isinstance(msg, HeadsRequest):
            return encode(HeadsReply(self.store.heads())), nothing
        if isinstance(msg, RangeRequest):
            covered = min(msg.last, msg.first + MAX_RANGE_SEQS - 1)
            raws = await self.store.fetch_range(msg.author, msg.first, covered)
            return encode(RangeReply(covered, tuple(raws))), nothing
        if isinstance(msg, Announce) and not msg.entries:
            return encode(ErrorReply("an empty push")), nothing
        if isinstance(msg, Announce):
            report = await self.store.ingest_many(msg.entries)
            refused = [r.reason.value for r in report.results if r.reason is not None]
            if refused:
                log.info("[%s] push from %s: refused %s", self.name, from_peer, refused)
                reasons = ", ".join(sorted(set(refused)))
                why = f"refused {len(refused)} of {len(msg.entries)} pushed entries: {reasons}"
                return encode(ErrorReply(why)), report
            pending = sum(r.outcome is Outcome.PENDING for r in report.results)
            return encode(PushedReply(len(report.appended), pending)), report
        return encode(ErrorReply(f"not a request: {type(msg).__name__}")), nothing

    async def push(self, peer: str, entries: Sequence[Entry]) -> PushedReply:
        """Hand ``entries`` (already in the local store) to ``peer`` over a direct
        stream now, rather than waiting for gossip; what the peer did with them.

        Raises :class:`SyncProtocolError` if the peer refused them (its reason),
        :class:`SyncMisbehaviour` if it answered something else than PUSHED or ERROR,
        and the transport's :class:`~p2pgrid.errors.RetryableError` if it is gone.
        """
        reply = await self.transport.request(peer, encode(Announce(tuple(e.raw for e in entries))))
        try:
            msg = decode(reply)
        except MalformedError as exc:
            raise SyncMisbehaviour(
                f"[{self.name}] bad push reply from {peer}: {exc}", reason="malformed_reply"
            ) from exc
        if isinstance(msg, ErrorReply):
            raise SyncProtocolError(f"[{self.name}] {peer} refused the push: {msg.reason}")
        if not isinstance(msg, PushedReply):
            raise SyncMisbehaviour(
                f"[{self.name}] {peer} answered a push with {type(msg).__name__}",
                reason="wrong_reply",
            )
        return msg

    async def _ask(
        self, peer: str, request: HeadsRequest | RangeRequest
    ) -> HeadsReply | RangeReply:
        reply = await self.transport.request(peer, encode(request))
        try:
            msg = decode(reply)
        except MalformedError as exc:
            raise SyncMisbehaviour(
                f"[{self.name}] bad reply from {peer}: {exc}", reason="malformed_reply"
            ) from exc
        if isinstance(msg, ErrorReply):
            raise SyncProtocolError(f"[{self.name}] {peer} refused: {msg.reason}")
        expected = HeadsReply if isinstance(request, HeadsRequest) else RangeReply
        if not isinstance(msg, expected):
            raise SyncMisbehaviour(
                f"[{self.name}] {peer} sent {type(msg).__name__}", reason="wrong_reply"
            )
        return msg

    async def _holds_all_of(self, their: AuthorHead) -> bool:
        """True when this replica provably holds every entry the peer holds of the author."""
        mine = self.store.heads().get(their.author)
        if mine is not None and (mine.count, mine.accumulator) == (their.count, their.accumulator):
            return True
        if their.forked or their.seq == 0 or mine is None or mine.seq < their.seq:
            return False
        # Their chain is unforked and ends at their tip: a hash chain, so holding
        # the tip at that height means holding the whole chain.
        return await self.store.tip_at(their.author, their.seq) == their.tip

    async def sync_with(self, peer: str) -> SyncReport:
        """One anti-entropy round: pull from ``peer`` what this replica lacks, in at
        most :data:`MAX_REQUESTS_PER_ROUND` requests (the next round goes on).

        A round with a peer whose heads equal this replica's (equal digests: equal
        logs) is its one HEADS_REQUEST and ends there: the periodic rounds of an
        idle site cost one small request each.

        Raises :class:`SyncMisbehaviour` if the peer answers a range that its own
        heads claim with nothing, or with something that is not a reply.
        """
        counts = {"requests": 1, "received": 0, "appended": 0, "rejected": 0}
        heads = await self._ask(peer, HeadsRequest())
        assert isinstance(heads, HeadsReply)
        self.peer_heads[peer] = heads.heads
        if self.peer_digests.get(peer) != (digest := heads.heads.digest()):
            self.peer_digests[peer] = digest
            self._heard.set()
            self._heard = asyncio.Event()
        if digest == self.store.digest():  # equal logs: nothing to decide per author
            return SyncReport(peer=peer, **counts)
        # The owner's chain first: its enrolments admit the other authors' entries.
        for their in sorted(heads.heads.values(), key=lambda h: h.author.role is not Role.OWNER):
            if counts["requests"] >= MAX_REQUESTS_PER_ROUND:
                log.info("[%s] round with %s used its request budget", self.name, peer)
                break
            if await self._holds_all_of(their):
                continue
            mine = self.store.heads().get(their.author)
            my_seq = 0 if mine is None else mine.seq
            if their.seq > my_seq and not their.forked:
                await self._pull(peer, their.author, my_seq + 1, their.seq, counts)
                if await self._holds_all_of(their):
                    continue
                if counts["requests"] >= MAX_REQUESTS_PER_ROUND:
                    break  # the rest next round
            log.info(
                "[%s] %s diverges from %s: pulling its whole chain", self.name, their.author, peer
            )
            await self._pull(peer, their.author, 1, their.seq, counts)
        report = SyncReport(peer=peer, **counts)
        log.debug("[%s] synced with %s: %s", self.name, peer, report)
        return report

    async def _pull(
        self, peer: str, author: Author, first: int, last: int, counts: dict[str, int]
    ) -> None:
        """Pull ``first..last`` in chunks; the next chunk is requested while the
        current one is verified and stored (one request in flight at most)."""

        async def fetch(start: int) -> RangeReply:
            reply = await self._ask(peer, RangeRequest(author, start, last))
            assert isinstance(reply, RangeReply)
            if reply.covered < start:
                raise SyncMisbehaviour(
                    f"[{self.name}] {peer} covered nothing of {start}..{last}",
                    reason="covered_nothing",
                )
            if not reply.entries:  # its heads said it holds up to `last`
                raise SyncMisbehaviour(
                    f"[{self.name}] {peer} claims {author} up to {last} but sent nothing "
                    f"for {start}..{reply.covered}",
                    reason="empty_range",
                )
            return reply

        try:
            async with asyncio.TaskGroup() as tg:
                await self._pull_chunks(tg, fetch, first, last, counts)
        except ExceptionGroup as group:  # surface the one error, e.g. SyncProtocolError
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], P2PGridError):
                raise group.exceptions[0] from None
            raise

    async def _pull_chunks(
        self,
        tg: asyncio.TaskGroup,
        fetch: Callable[[int], Coroutine[Any, Any, RangeReply]],
        first: int,
        last: int,
        counts: dict[str, int],
    ) -> None:
        reply = await fetch(first)
        while True:
            counts["requests"] += 1
            more = reply.covered < last and counts["requests"] < MAX_REQUESTS_PER_ROUND
            ahead = tg.create_task(fetch(reply.covered + 1)) if more else None
            if reply.entries:
                report = await self.store.ingest_many(reply.entries)
                counts["received"] += len(reply.entries)
                counts["appended"] += len(report.appended)
                counts["rejected"] += sum(r.outcome is Outcome.REJECTED for r in report.results)
            if ahead is None:
                return
            reply = await ahead
