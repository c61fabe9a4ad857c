"""Messages of the log sync protocol and their byte encoding.

Every message starts with ``version(1) type(1)``. Requests go over a direct
stream and get exactly one reply; announcements go over pubsub. Layouts are in
``docs/protocol-log.md``. Decoding validates once, here; the replicator only sees
these typed objects.
"""

from __future__ import annotations

import dataclasses
import enum

from p2pgrid.ledger.codec import Reader, Writer
from p2pgrid.ledger.entry import MAX_ENTRY_BYTES, Author
from p2pgrid.ledger.errors import MalformedError
from p2pgrid.ledger.heads import AuthorHead, Heads

WIRE_VERSION = 1
MAX_RANGE_SEQS = 256  # a responder covers at most this many sequence numbers per reply
MAX_ENTRIES_PER_MESSAGE = 4096
MAX_HEADS = 1 << 20
MAX_MESSAGE_BYTES = MAX_ENTRIES_PER_MESSAGE * (MAX_ENTRY_BYTES + 4) + 64


class MsgType(enum.IntEnum):
    HEADS_REQUEST = 1
    HEADS = 2
    RANGE_REQUEST = 3
    RANGE = 4
    ANNOUNCE = 5
    ERROR = 6
    PUSHED = 7


@dataclasses.dataclass(frozen=True, slots=True)
class HeadsRequest:
    """Ask a replica for its per-author heads."""


@dataclasses.dataclass(frozen=True, slots=True)
class HeadsReply:
    heads: Heads


@dataclasses.dataclass(frozen=True, slots=True)
class RangeRequest:
    """Ask for an author's log entries with ``first <= seq <= last``."""

    author: Author
    first: int
    last: int

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last:
            raise MalformedError(f"bad range {self.first}..{self.last}")


@dataclasses.dataclass(frozen=True, slots=True)
class RangeReply:
    """Entries of ``first..covered`` (all siblings of each seq); ask again from
    ``covered + 1`` if that is short of what you wanted."""

    covered: int
    entries: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Announce:
    """New entries, published on the site's log topic."""

    entries: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorReply:
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class PushedReply:
    """The answer to an ANNOUNCE pushed over a direct stream: how many entries
    joined the receiver's log and how many it holds pending (a predecessor missing)."""

    appended: int
    pending: int


Message = (
    HeadsRequest | HeadsReply | RangeRequest | RangeReply | Announce | ErrorReply | PushedReply
)


def _entries(writer: Writer, entries: tuple[bytes, ...]) -> None:
    if len(entries) > MAX_ENTRIES_PER_MESSAGE:
        raise MalformedError(f"{len(entries)} entries exceed {MAX_ENTRIES_PER_MESSAGE}")
    writer.u32(len(entries))
    for raw in entries:
        writer.blob(raw)


def encode(msg: Message) -> bytes:
    writer = Writer()
    writer.u8(WIRE_VERSION)
    if isinstance(msg, HeadsRequest):
        writer.u8(MsgType.HEADS_REQUEST)
    elif isinstance(msg, HeadsReply):
        writer.u8(MsgType.HEADS)
        writer.u32(len(msg.heads))
        for head in msg.heads.values():
            writer.raw(head.author.key)
            writer.u64(head.seq)
            writer.u64(head.count)
            writer.hash32(head.accumulator)
            writer.hash32(head.tip)
    elif isinstance(msg, RangeRequest):
        writer.u8(MsgType.RANGE_REQUEST)
        writer.raw(msg.author.key)
        writer.u64(msg.first)
        writer.u64(msg.last)
    elif isinstance(msg, RangeReply):
        writer.u8(MsgType.RANGE)
        writer.u64(msg.covered)
        _entries(writer, msg.entries)
    elif isinstance(msg, Announce):
        writer.u8(MsgType.ANNOUNCE)
        _entries(writer, msg.entries)
    elif isinstance(msg, PushedReply):
        writer.u8(MsgType.PUSHED)
        writer.u32(msg.appended)
        writer.u32(msg.pending)
    else:
        writer.u8(MsgType.ERROR)
        writer.text(msg.reason[:200])
    return writer.getvalue()


def _read_entries(reader: Reader) -> tuple[bytes, ...]:
    count = reader.u32()
    if count > MAX_ENTRIES_PER_MESSAGE:
        raise MalformedError(f"{count} entries exceed {MAX_ENTRIES_PER_MESSAGE}")
    # An entry that is too long is still returned, so that ingest counts it.
    return tuple(reader.blob(MAX_ENTRY_BYTES * 2) for _ in range(count))


def decode(data: bytes) -> Message:
    """Decode one message; :class:`MalformedError` on anything unexpected."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedError(f"message of {len(data)} bytes is too long")
    reader = Reader(data)
    if (version := reader.u8()) != WIRE_VERSION:
        raise MalformedError(f"unknown wire version {version}")
    try:
        mtype = MsgType(reader.u8())
    except ValueError as exc:
        raise MalformedError("unknown message type") from exc
    msg: Message
    if mtype is MsgType.HEADS_REQUEST:
        msg = HeadsRequest()
    elif mtype is MsgType.HEADS:
        count = reader.u32()
        if count > MAX_HEADS:
            raise MalformedError(f"{count} heads are too many")
        heads: list[AuthorHead] = []
        for _ in range(count):
            author = Author.from_key(bytes(reader.u8() for _ in range(5)))
            seq, n, acc, tip = reader.u64(), reader.u64(), reader.hash32(), reader.hash32()
            if seq < 1:  # a head is an author's with entries: its log holds 1..seq
                raise MalformedError("a head's seq is at least 1")
            # One encoding per message: authors strictly ascending (no repeat).
            if heads and not heads[-1].author < author:
                raise MalformedError("heads are not in strictly ascending author order")
            heads.append(AuthorHead(author, seq, n, acc, tip))
        msg = HeadsReply(Heads(heads))
    elif mtype is MsgType.RANGE_REQUEST:
        author = Author.from_key(bytes(reader.u8() for _ in range(5)))
        msg = RangeRequest(author, reader.u64(), reader.u64())
    elif mtype is MsgType.RANGE:
        msg = RangeReply(reader.u64(), _read_entries(reader))
    elif mtype is MsgType.ANNOUNCE:
        msg = Announce(_read_entries(reader))
    elif mtype is MsgType.PUSHED:
        msg = PushedReply(reader.u32(), reader.u32())
    else:
        msg = ErrorReply(reader.text())
    reader.expect_end()
    return msg
