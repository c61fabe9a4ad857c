"""The local replica of a site's log: one SQLite database (WAL) per agent.

Ingest verifies every entry (format, body schema, membership, role, signature,
chain link, time order) before it touches the database, and writes a batch in
one transaction, so a crash at any moment leaves the log as it was before or
after the batch, never in between. Inserting an entry twice is one entry.

Membership comes from the log itself (:mod:`p2pgrid.ledger.membership`): the
store owns the site's :class:`~p2pgrid.identity.Roster` and applies the owner's
``enrol`` and ``revoke`` entries as they join the log. So a batch places the
owner's entries first and checks every other entry against the roster at the
moment it is placed. An entry whose author is not enrolled (yet) is refused
(``non_member``), not held: anti-entropy offers it again once the enrolment is
here. A revocation drops the member's stored and pending entries above its
``last_seq``, so every replica ends with the same log whatever came first.

Tables: ``entries`` is the log (per author, entries 1..n with each ``prev`` the
id of a stored predecessor, plus equivocating siblings kept as evidence);
``pending`` holds verified entries whose predecessor has not arrived yet.
Heads (see :mod:`p2pgrid.ledger.heads`) are kept in memory, rebuilt from
``entries`` on open, updated with each batch and restored if it rolls back;
the frozen :class:`Heads` and the digest that :meth:`LogStore.heads` and
:meth:`LogStore.digest` return are built once per change, not per call (every
anti-entropy round asks for both).
So is the index of *records* (:meth:`Body.record_key`): an entry whose key an
ancestor in its author's chain already recorded is refused as
``duplicate_record`` (a second reading of an interval, budget of a period,
invoice of a device and period), so no view can ever count one twice.
Batches and queries take turns (one lock), so queries see committed entries.

Listeners (:meth:`LogStore.subscribe`) hear of each committed batch as a
:class:`LogChange`: the entries it appended and the revocations it applied
(whose dropped entries they must forget), synchronously, right after the
commit and before any other task runs, so a view fed by them (e.g.
:class:`~p2pgrid.ledger.balances.BalanceBook`) is never behind the log a query
reads. The roster changes with the batch the same way: its enrolments and
revocations are a draft that only the batch's own checks read, published right
after the commit (the roster's watchers, e.g. the net layer re-reading its
peers' hellos, hear of it then, once) and dropped if the batch rolls back. A
rolled-back batch notifies nobody.

Durability. The database is in WAL mode, where a committed batch survives a
killed process whatever ``synchronous`` says; ``synchronous`` decides what a
power cut or an OS crash keeps (:mod:`p2pgrid.commit_sync`). A batch of entries
this process signed (``ingest(..., durable=True)``: every
:meth:`~p2pgrid.ledger.writer.LogWriter.append`, so the agent's, the utility's
and each device's of a gateway's shared store) is committed with
``synchronous=FULL``: on disk before the call returns, so before the entry can
be read by anyone: published or handed to a peer (the agents and the utility
hand the net layer, or a receipt, the entry the append returned or what
:meth:`fetch_range` reads after it; a peer's pull reads it through the same
lock, after the commit), or taken as the record of a payment
(:mod:`p2pgrid.agent.paymaster` marks the payment's intent ``logged`` after its
entries' append returned). So a power cut never takes back an entry that a peer
may hold or an intent counts on: the restarted writer continues its chain after
it and never signs another entry at its sequence number. Peers' entries (sync,
gossip, the owner's entries file) are committed with ``synchronous=NORMAL``: a
power cut may lose the last of those batches (never a later one without an
earlier one: the WAL keeps a prefix of the commits), and anti-entropy fetches
them again from the peers that hold them. Each synced commit syncs every
earlier one with it. The heads in memory move with a batch before its commit
(their digest may name an entry not yet synced); its bytes leave only through
queries, which wait for the commit.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from types import TracebackType

import aiosqlite

from p2pgrid.commit_sync import CommitSync
from p2pgrid.finish import to_the_end
from p2pgrid.identity import Roster, SiteIdentity
from p2pgrid.ledger.bodies import BodyError, EntryKind, Revoke, Role
from p2pgrid.ledger.codec import HASH_LEN
from p2pgrid.ledger.entry import Author, Entry, OversizedError, decode_entry
from p2pgrid.ledger.errors import CorruptLogError, LedgerError, MalformedError
from p2pgrid.ledger.heads import ZERO_ACC, AuthorHead, Heads, xor32
from p2pgrid.ledger.membership import Membership
from p2pgrid.ledger.outcome import IngestReport, IngestResult, Outcome
from p2pgrid.ledger.outcome import RejectReason as Reason
from p2pgrid.ledger.periods import period_allowed

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_MAX_PENDING = 10_000
_ID_CHUNK = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id BLOB PRIMARY KEY, author BLOB NOT NULL, seq INTEGER NOT NULL, prev BLOB NOT NULL,
    period INTEGER NOT NULL, ts INTEGER NOT NULL, kind INTEGER NOT NULL, raw BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_author_seq ON entries (author, seq);
CREATE INDEX IF NOT EXISTS entries_kind_period ON entries (kind, period);
CREATE TABLE IF NOT EXISTS pending (
    id BLOB PRIMARY KEY, author BLOB NOT NULL, seq INTEGER NOT NULL, raw BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_author_seq ON pending (author, seq);
"""
_INSERT_ENTRY = "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_PENDING = "INSERT INTO pending VALUES (?, ?, ?, ?)"
_DELETE_PENDING = "DELETE FROM pending WHERE id = ?"
_JOINED = frozenset({Outcome.STORED, Outcome.EQUIVOCATION})
_RECORD_KINDS = (
    EntryKind.METER_READING.value,
    EntryKind.BUDGET.value,
    EntryKind.INVOICE.value,
    EntryKind.ORDER.value,
    EntryKind.CLEARED.value,
    EntryKind.DELIVERED.value,
    EntryKind.SITE_SALE.value,
)
_ANCESTORS = """
WITH RECURSIVE anc(id, prev, seq) AS (
    SELECT id, prev, seq FROM entries WHERE id = ?
    UNION ALL
    SELECT e.id, e.prev, e.seq FROM entries e JOIN anc ON e.id = anc.prev WHERE anc.seq > ?
) SELECT id FROM anc
"""
#: (author, kind, key) of a record -> the (seq, id) of the entries holding it
_RecordIndex = dict[tuple[Author, EntryKind, tuple[int, ...]], list[tuple[int, bytes]]]


def _record_of(entry: Entry) -> tuple[Author, EntryKind, tuple[int, ...]] | None:
    key = entry.body.record_key(entry.period)
    return None if key is None else (entry.author, entry.kind, key)


@dataclasses.dataclass(frozen=True, slots=True)
class LogChange:
    """What one committed batch did to the log."""

    appended: tuple[Entry, ...]
    #: (author, last_seq) of each revocation applied: the author's entries above
    #: ``last_seq`` left the log (including ones appended by earlier batches).
    revoked: tuple[tuple[Author, int], ...] = ()


#: Hears of each committed batch; runs synchronously after the commit and must not raise.
LogListener = Callable[[LogChange], None]


@dataclasses.dataclass(slots=True)
class _Head:
    seq: int = 0
    count: int = 0
    acc: bytes = ZERO_ACC
    tips: dict[bytes, tuple[int, int]] = dataclasses.field(default_factory=dict)  # id->(ts,period)

    def frozen(self, author: Author) -> AuthorHead:
        tip = ZERO_ACC
        for eid in self.tips:
            tip = xor32(tip, eid)
        return AuthorHead(author, self.seq, self.count, self.acc, tip)


class LogStore:
    """One agent's replica. Open with :meth:`open` (or ``async with``); close last."""

    def __init__(self, conn: aiosqlite.Connection, site: SiteIdentity, name: str) -> None:
        self._conn = conn
        self._sync = CommitSync(conn, full=False)  # set to NORMAL by _setup
        #: This replica's own view of who is a member (never shared with another store).
        self.membership = Membership(site)
        self.name = name
        self.max_pending = DEFAULT_MAX_PENDING
        self.rejections: collections.Counter[Reason] = collections.Counter()
        self._heads: dict[Author, _Head] = {}
        #: ``heads()`` and its digest as of the last change of ``_heads`` (None: stale).
        self._frozen: tuple[Heads, bytes] | None = None
        self._pending: dict[Author, dict[int, int]] = {}  # author -> seq -> how many
        self._flagged: set[Author] = set()
        self._records: _RecordIndex = {}
        self._ops: list[tuple[str, tuple[object, ...]]] = []
        self._closed = False
        self._lock = asyncio.Lock()
        self._appended = asyncio.Event()  # set (and replaced) by each batch that appends
        self._listeners: list[LogListener] = []
        self._revoked: list[tuple[Author, int]] = []  # applied by the batch in flight

    @classmethod
    async def open(
        cls, path: Path, site: SiteIdentity, *, name: str, max_pending: int | None = None
    ) -> LogStore:
        """Open (or create) the database at ``path`` and check it belongs to ``site``."""
        conn = await aiosqlite.connect(path, isolation_level=None)
        store = cls(conn, site, name)
        if max_pending is not None:
            store.max_pending = max_pending
        try:
            await store._setup()
        except BaseException:
            await conn.close()
            raise
        return store

    async def __aenter__(self) -> LogStore:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def roster(self) -> Roster:
        """The site's members as this replica's log enrols them (the net layer reads it)."""
        return self.membership.roster

    async def close(self) -> None:
        """Close the database. Safe to call twice."""
        if self._closed:
            return
        self._closed = True  # refuse new batches, let the one in flight finish
        async with self._lock:
            await self._conn.close()
        self._appended.set()  # wakes the readers waiting in wait_changed

    def subscribe(self, listener: LogListener) -> None:
        """Tell ``listener`` of every batch committed from now on."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: LogListener) -> None:
        """Stop telling ``listener``; safe to call for one that is not subscribed."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def wait_changed(self, digest: bytes) -> bytes:
        """Wait until the log's digest differs from ``digest`` (an entry was
        appended) or the store closed; returns the digest then. The caller owns
        the deadline."""
        while self.digest() == digest and not self._closed:
            await self._appended.wait()
        return self.digest()

    async def _setup(self) -> None:
        await self._conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a process crash; a power cut may lose
        # the last commits but never leaves a torn log. A batch of the writer's
        # own entries is synced (``durable``; see the module's "Durability").
        await self._conn.execute("PRAGMA synchronous=NORMAL")
        await self._conn.executescript(_SCHEMA)
        site = self.membership.site_hash
        async with self._conn.execute("SELECT key, value FROM meta") as cur:
            meta = {str(k): bytes(v) for k, v in await cur.fetchall()}
        if not meta:
            await self._conn.execute("BEGIN IMMEDIATE")
            await self._conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [("schema", SCHEMA_VERSION.to_bytes(4, "big")), ("site", site)],
            )
            await self._conn.execute("COMMIT")
        elif meta.get("site") != site:
            raise CorruptLogError(f"[{self.name}] database belongs to another site")
        elif int.from_bytes(meta.get("schema", b""), "big") != SCHEMA_VERSION:
            raise CorruptLogError(f"[{self.name}] unknown schema version")
        await self._check_integrity()
        await self._load_state()

    async def _check_integrity(self) -> None:
        async with self._conn.execute("PRAGMA quick_check") as cur:
            row = await cur.fetchone()
        if row is None or row[0] != "ok":
            raise CorruptLogError(f"[{self.name}] SQLite quick_check failed: {row}")
        query = (
            "SELECT COUNT(*) FROM entries e WHERE (e.seq = 1 AND e.prev != ?) OR (e.seq > 1 AND"
            " NOT EXISTS (SELECT 1 FROM entries p WHERE p.author = e.author"
            " AND p.seq = e.seq - 1 AND p.id = e.prev))"
        )
        async with self._conn.execute(query, (bytes(HASH_LEN),)) as cur:
            row = await cur.fetchone()
        if row is None or row[0]:
            raise CorruptLogError(f"[{self.name}] {row and row[0]} entries without predecessor")

    async def _load_state(self) -> None:
        self._heads = {}
        self._pending = {}
        rows = await self._conn.execute_fetchall(
            "SELECT author, seq, id, ts, period FROM entries ORDER BY author, seq"
        )
        floor: dict[Author, int] = {}  # the highest period of each author's chain so far
        for author_key, seq, eid, ts, period in rows:
            author = Author.from_key(bytes(author_key))
            head = self._heads.setdefault(author, _Head())
            eid = bytes(eid)
            head.count += 1
            head.acc = xor32(head.acc, eid)
            floor[author] = max(floor.get(author, 0), period)
            if seq > head.seq:
                head.seq, head.tips = seq, {}
            if seq == head.seq:
                head.tips[eid] = (ts, floor[author])
        self._heads_changed()
        self._flagged = {a for a, h in self._heads.items() if h.count > h.seq}
        site = self.membership.site_hash
        for (raw,) in await self._conn.execute_fetchall(
            "SELECT raw FROM entries WHERE author = ? ORDER BY seq, id", (Author.owner().key,)
        ):
            self.membership.learn(decode_entry(bytes(raw), site))
        for author_key, seq, count in await self._conn.execute_fetchall(
            "SELECT author, seq, COUNT(*) FROM pending GROUP BY author, seq"
        ):
            self._pending.setdefault(Author.from_key(bytes(author_key)), {})[seq] = count
        await self._load_records()

    async def _load_records(self) -> None:
        """Rebuild the index of records from the log (on open, after a rollback)."""
        self._records = {}
        marks = ",".join("?" * len(_RECORD_KINDS))
        site = self.membership.site_hash
        for seq, raw in await self._conn.execute_fetchall(
            f"SELECT seq, raw FROM entries WHERE kind IN ({marks}) ORDER BY author, seq, id",
            _RECORD_KINDS,
        ):
            entry = decode_entry(bytes(raw), site)
            record = _record_of(entry)
            if record is not None:
                self._records.setdefault(record, []).append((int(seq), entry.id))

    # -- reading --------------------------------------------------------------

    def heads(self) -> Heads:
        """The per-author heads of the log (not of pending entries)."""
        return self._frozen_heads()[0]

    def digest(self) -> bytes:
        """A hash over the heads: equal digests mean equal logs."""
        return self._frozen_heads()[1]

    def _frozen_heads(self) -> tuple[Heads, bytes]:
        if self._frozen is None:
            heads = Heads(h.frozen(a) for a, h in self._heads.items())
            self._frozen = heads, heads.digest()
        return self._frozen

    def _heads_changed(self) -> None:
        """Call on every change of ``_heads``: the next ``heads()`` rebuilds them."""
        self._frozen = None

    @property
    def equivocators(self) -> frozenset[Author]:
        """Authors that signed two different entries with the same sequence number."""
        return frozenset(self._flagged)

    @property
    def pending_count(self) -> int:
        return sum(sum(by_seq.values()) for by_seq in self._pending.values())

    async def fetch_range(self, author: Author, first: int, last: int) -> list[bytes]:
        """Wire bytes of the author's log entries with ``first <= seq <= last``, in
        order of (seq, id): all siblings of a sequence number come together."""
        rows = await self._read(
            "SELECT raw FROM entries WHERE author = ? AND seq BETWEEN ? AND ? ORDER BY seq, id",
            (author.key, first, last),
        )
        return [bytes(r[0]) for r in rows]

    async def tip_at(self, author: Author, seq: int) -> bytes:
        """XOR of the ids of the author's log entries at ``seq`` (zeros if none)."""
        acc = ZERO_ACC
        for (eid,) in await self._read(
            "SELECT id FROM entries WHERE author = ? AND seq = ?", (author.key, seq)
        ):
            acc = xor32(acc, bytes(eid))
        return acc

    async def entries(
        self,
        *,
        period: int | None = None,
        kinds: Collection[EntryKind] | None = None,
        author: Author | None = None,
    ) -> list[Entry]:
        """Log entries (with equivocation evidence), in fold order: by timestamp,
        author, seq, id. Each author's entries keep their chain order. Only those
        of ``period``, of one of ``kinds``, of ``author``, if given (the others are
        not decoded: a payer looking for its payments reads only those)."""
        where: list[str] = []
        params: list[object] = []
        if period is not None:
            where.append("period = ?")
            params.append(period)
        if kinds is not None:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            params.extend(int(k) for k in kinds)
        if author is not None:
            where.append("author = ?")
            params.append(author.key)
        query = "SELECT raw FROM entries"
        if where:
            query += " WHERE " + " AND ".join(where)
        rows = await self._read(query + " ORDER BY ts, author, seq, id", params)
        site = self.membership.site_hash
        return [decode_entry(bytes(r[0]), site) for r in rows]

    async def export(self) -> list[bytes]:
        """The log (not pending entries) in (author, seq, id) order: every entry
        comes after its predecessor, so ingesting it elsewhere merges this log
        into that replica, whatever that replica already holds."""
        rows = await self._read("SELECT raw FROM entries ORDER BY author, seq, id")
        return [bytes(r[0]) for r in rows]

    async def ids(self) -> tuple[frozenset[bytes], frozenset[bytes]]:
        """The ids in the log and in pending (for tests and diagnostics)."""
        out = []
        for table in ("entries", "pending"):
            rows = await self._read(f"SELECT id FROM {table}")
            out.append(frozenset(bytes(r[0]) for r in rows))
        return out[0], out[1]

    def next_position(self, author: Author) -> tuple[int, bytes, int, int]:
        """For writing the author's next entry: (seq, prev, min timestamp, min period)."""
        head = self._heads.get(author)
        if head is None or not head.tips:
            return 1, bytes(HASH_LEN), 0, 0
        prev = min(head.tips)
        ts, period = head.tips[prev]
        return head.seq + 1, prev, ts, period

    # -- ingest ---------------------------------------------------------------

    async def ingest(self, raw: bytes, *, durable: bool = False) -> IngestReport:
        return await self.ingest_many([raw], durable=durable)

    async def ingest_many(self, raws: Sequence[bytes], *, durable: bool = False) -> IngestReport:
        """Verify and store a batch in one transaction; see :class:`Outcome`.

        ``durable``: the batch is on disk when this returns (committed with
        ``synchronous=FULL``), as an entry this process signed must be before
        anyone reads it (:class:`~p2pgrid.ledger.writer.LogWriter`); without it
        (peers' entries) a power cut may lose the batch, and sync brings its
        entries again (see the module's "Durability")."""
        if self._closed:
            raise LedgerError(f"[{self.name}] store is closed")
        results: list[IngestResult | None] = [None] * len(raws)
        candidates: list[tuple[int, Entry]] = []
        seen: set[bytes] = set()
        for i, raw in enumerate(raws):
            entry, reason = self._verify(raw)
            if entry is None or reason is not None:
                results[i] = self._reject(reason or Reason.MALFORMED, entry, None)
            elif entry.id in seen:
                results[i] = IngestResult(Outcome.DUPLICATE, entry.id)
            else:
                seen.add(entry.id)
                candidates.append((i, entry))
        # The owner's entries first: they may enrol the authors of the others.
        candidates.sort(key=lambda c: c[1].author.role is not Role.OWNER)
        # Once started, a batch runs to its end even if the caller is cancelled
        # (a replica stopping mid-pull): aiosqlite finishes every statement it was
        # handed whatever happens to the awaiting task, so a cancel landing while
        # COMMIT runs would otherwise roll the in-memory heads back under a
        # committed batch.
        return await to_the_end(self._write_batch(candidates, results, durable))

    async def _write_batch(
        self,
        candidates: list[tuple[int, Entry]],
        results: list[IngestResult | None],
        durable: bool,
    ) -> IngestReport:
        async with self._lock:  # one batch at a time: gossip and pulls interleave
            if self._closed:
                raise LedgerError(f"[{self.name}] store is closed")
            held = await self._existing_ids([e.id for _, e in candidates if self._may_hold(e)])
            appended: list[Entry] = []
            heads_before = {
                a: dataclasses.replace(h, tips=dict(h.tips)) for a, h in self._heads.items()
            }
            pending_before = {a: dict(s) for a, s in self._pending.items()}
            flagged_before = set(self._flagged)
            self._revoked = []
            await self._sync.before_transaction(full=durable)  # refused inside a transaction
            await self._conn.execute("BEGIN IMMEDIATE")
            self.roster.begin()  # readers and watchers see the batch's members once committed
            try:
                for i, entry in candidates:
                    if entry.id in held:
                        results[i] = IngestResult(Outcome.DUPLICATE, entry.id)
                    elif (reason := self._check_member(entry)) is not None:
                        results[i] = self._reject(reason, entry, None)
                    else:
                        results[i] = await self._place_and_promote(entry, appended)
                await self._flush()
                await self._conn.execute("COMMIT")
            except BaseException:
                self._ops.clear()
                self._heads, self._pending, self._flagged = (
                    heads_before,
                    pending_before,
                    flagged_before,
                )
                self._heads_changed()
                self.roster.rollback()
                await self._conn.execute("ROLLBACK")
                await self._load_records()
                raise
            # Still under the lock and with no await before it: no query or batch
            # runs between the commit and the roster's watchers and listeners.
            self.roster.commit()
            change = LogChange(tuple(appended), tuple(self._revoked))
            if change.appended or change.revoked:
                for listener in list(self._listeners):
                    listener(change)
        done = tuple(r for r in results if r is not None)
        assert len(done) == len(results)
        if appended:
            self._appended.set()
            self._appended = asyncio.Event()
        return IngestReport(done, tuple(appended))

    def _verify(self, raw: bytes) -> tuple[Entry | None, Reason | None]:
        try:
            entry = decode_entry(raw, self.membership.site_hash)
        except OversizedError:
            return None, Reason.OVERSIZED
        except BodyError:
            return None, Reason.BAD_BODY
        except MalformedError:
            return None, Reason.MALFORMED
        if entry.author.role is Role.OWNER:  # the owner's key is the site: check now
            return entry, self.membership.check(entry)
        return entry, None  # checked against the roster when placed (_check_member)

    def _check_member(self, entry: Entry) -> Reason | None:
        if entry.author.role is Role.OWNER:
            return None  # checked in _verify
        return self.membership.check(entry)

    def _reject(self, reason: Reason, entry: Entry | None, detail: str | None) -> IngestResult:
        self.rejections[reason] += 1
        what = str(entry) if entry is not None else "undecodable entry"
        log.info(
            "[%s] rejected %s: %s%s", self.name, what, reason, f" ({detail})" if detail else ""
        )
        return IngestResult(Outcome.REJECTED, entry.id if entry else None, reason)

    async def _read(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        """A query outside ingest: waits for the batch in flight, so that it only
        sees committed entries."""
        async with self._lock:
            if self._closed:
                raise LedgerError(f"[{self.name}] store is closed")
            return list(await self._conn.execute_fetchall(sql, params))

    def _may_hold(self, entry: Entry) -> bool:
        """False when the entry's (author, seq) is neither in the log nor pending,
        so that it cannot be held already (saves a lookup per entry on sync)."""
        head = self._heads.get(entry.author)
        if head is not None and entry.seq <= head.seq:
            return True
        return bool(self._pending.get(entry.author, {}).get(entry.seq))

    async def _existing_ids(self, ids: Iterable[bytes]) -> set[bytes]:
        found: set[bytes] = set()
        id_list = list(ids)
        for start in range(0, len(id_list), _ID_CHUNK):
            chunk = id_list[start : start + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            for table in ("entries", "pending"):
                rows = await self._conn.execute_fetchall(
                    f"SELECT id FROM {table} WHERE id IN ({marks})",
                    chunk,
                )
                found.update(bytes(r[0]) for r in rows)
        return found

    async def _place_and_promote(self, entry: Entry, appended: list[Entry]) -> IngestResult:
        """Place an entry, then every pending entry that it (transitively) unblocks.

        Iterative, not recursive: a gap of thousands of pending entries may close
        at once. All siblings of a seq are placed before the next seq is tried.
        """
        result = await self._place(entry, appended)
        todo = [(entry.author, entry.seq + 1)] if result.outcome in _JOINED else []
        while todo:
            author, seq = todo.pop()
            for promoted in await self._take_pending(author, seq):
                # Its signature was checked when it was held; a revocation may
                # have come since.
                if (reason := self.membership.admits(promoted)) is not None:
                    self._reject(reason, promoted, "while pending")
                elif (await self._place(promoted, appended)).outcome in _JOINED:
                    todo.append((author, seq + 1))
        return result

    async def _place(self, entry: Entry, appended: list[Entry]) -> IngestResult:
        """Put a verified, new entry in the log, in pending, or reject it."""
        head = self._heads.get(entry.author) or _Head()
        if entry.seq > head.seq + 1:
            return self._hold(entry)
        if entry.seq == head.seq + 1:
            preds = head.tips if entry.seq > 1 else {}
        else:
            preds = await self._predecessors(entry)
        link: tuple[int, int] | None = None  # the predecessor's (timestamp, period floor)
        if entry.seq > 1:
            link = preds.get(entry.prev)
            if link is None:
                return self._reject(
                    Reason.BROKEN_CHAIN, entry, "prev is not the stored predecessor"
                )
            if entry.timestamp_ms < link[0] or not period_allowed(
                entry.body.KIND, entry.period, link[1]
            ):
                return self._reject(Reason.TIME_REGRESSION, entry, "earlier than its predecessor")
        record = _record_of(entry)
        if record is not None:
            if await self._recorded_before(entry, record):
                return self._reject(
                    Reason.DUPLICATE_RECORD, entry, f"{entry.kind.name.lower()} {record[2]} again"
                )
            self._records.setdefault(record, []).append((entry.seq, entry.id))
        self._ops.append((_INSERT_ENTRY, _row(entry)))
        appended.append(entry)
        sibling = entry.seq <= head.seq
        self._heads_changed()
        head = self._heads.setdefault(entry.author, head)
        head.count += 1
        head.acc = xor32(head.acc, entry.id)
        if entry.seq > head.seq:
            head.seq, head.tips = entry.seq, {}
        if entry.seq == head.seq:  # the chain's highest period so far (see ledger.periods)
            head.tips[entry.id] = (entry.timestamp_ms, max(entry.period, link[1] if link else 0))
        if sibling:
            if entry.author not in self._flagged:
                log.warning("[%s] %s equivocated at seq %d", self.name, entry.author, entry.seq)
            self._flagged.add(entry.author)
            outcome = Outcome.EQUIVOCATION
        else:
            outcome = Outcome.STORED
        revocation = self.membership.learn(entry)
        if revocation is not None:
            await self._drop_revoked(revocation, appended)
        return IngestResult(outcome, entry.id)

    async def _drop_revoked(self, revocation: Revoke, appended: list[Entry]) -> None:
        """Remove the revoked member's entries above ``last_seq`` from the log and
        from pending, and rebuild its head: the log a replica ends with does not
        depend on whether the revocation came before or after those entries."""
        author = Author(Role(revocation.role), revocation.index)
        last = revocation.last_seq
        self._revoked.append((author, last))
        await self._flush()
        for table in ("entries", "pending"):
            await self._conn.execute(
                f"DELETE FROM {table} WHERE author = ? AND seq > ?", (author.key, last)
            )
        appended[:] = [e for e in appended if e.author != author or e.seq <= last]
        rows = await self._conn.execute_fetchall(
            "SELECT seq, id, ts, period FROM entries WHERE author = ? ORDER BY seq",
            (author.key,),
        )
        head = _Head()
        for seq, eid, ts, period in rows:
            head.count += 1
            head.acc = xor32(head.acc, bytes(eid))
            if seq > head.seq:
                head.seq, head.tips = seq, {}
            head.tips[bytes(eid)] = (ts, period)
        self._heads_changed()
        if head.count:
            self._heads[author] = head
        else:
            self._heads.pop(author, None)
        by_seq = {s: n for s, n in self._pending.get(author, {}).items() if s <= last}
        if by_seq:
            self._pending[author] = by_seq
        else:
            self._pending.pop(author, None)
        if head.count <= head.seq:
            self._flagged.discard(author)
        for record in [r for r in self._records if r[0] == author]:
            kept = [(seq, eid) for seq, eid in self._records[record] if seq <= last]
            if kept:
                self._records[record] = kept
            else:
                del self._records[record]
        log.warning(
            "[%s] %s revoked after seq %d: log now holds its entries 1..%d",
            self.name,
            author,
            last,
            head.seq,
        )

    async def _recorded_before(
        self, entry: Entry, record: tuple[Author, EntryKind, tuple[int, ...]]
    ) -> bool:
        """Whether an ancestor of ``entry`` (in its author's chain) holds ``record``.

        Ancestors, not arrival order, decide: so every replica refuses the same
        entries whatever order they came in. An author that never equivocated
        has one chain, so each of its earlier entries is an ancestor.
        """
        earlier = [(s, i) for s, i in self._records.get(record, ()) if s < entry.seq]
        if not earlier:
            return False
        if entry.author not in self._flagged:
            return True
        await self._flush()
        lowest = min(s for s, _ in earlier)
        rows = await self._conn.execute_fetchall(_ANCESTORS, (entry.prev, lowest))
        ancestors = {bytes(r[0]) for r in rows}
        return any(i in ancestors for _, i in earlier)

    def _hold(self, entry: Entry) -> IngestResult:
        if self.pending_count >= self.max_pending:
            return self._reject(Reason.PENDING_FULL, entry, f"{self.max_pending} held")
        self._ops.append((_INSERT_PENDING, (entry.id, entry.author.key, entry.seq, entry.raw)))
        by_seq = self._pending.setdefault(entry.author, {})
        by_seq[entry.seq] = by_seq.get(entry.seq, 0) + 1
        return IngestResult(Outcome.PENDING, entry.id)

    async def _predecessors(self, entry: Entry) -> dict[bytes, tuple[int, int]]:
        if entry.seq == 1:
            return {}
        await self._flush()
        rows = await self._conn.execute_fetchall(
            "SELECT id, ts, (SELECT MAX(period) FROM entries WHERE author = ? AND seq < ?)"
            " FROM entries WHERE author = ? AND seq = ?",
            (entry.author.key, entry.seq, entry.author.key, entry.seq - 1),
        )
        return {bytes(r[0]): (int(r[1]), int(r[2])) for r in rows}

    async def _take_pending(self, author: Author, seq: int) -> list[Entry]:
        """Remove and return the pending entries of ``author`` at ``seq``."""
        by_seq = self._pending.get(author)
        if not by_seq or seq not in by_seq:
            return []
        del by_seq[seq]
        if not by_seq:
            del self._pending[author]
        await self._flush()
        rows = await self._conn.execute_fetchall(
            "SELECT id, raw FROM pending WHERE author = ? AND seq = ? ORDER BY id",
            (author.key, seq),
        )
        entries = []
        for eid, raw in rows:
            self._ops.append((_DELETE_PENDING, (bytes(eid),)))
            # Verified when it was held; decoding again only rebuilds the object.
            entries.append(decode_entry(bytes(raw), self.membership.site_hash))
        return entries

    async def _flush(self) -> None:
        ops, self._ops = self._ops, []
        start = 0
        while start < len(ops):
            sql = ops[start][0]
            end = start
            while end < len(ops) and ops[end][0] == sql:
                end += 1
            await self._conn.executemany(sql, [params for _, params in ops[start:end]])
            start = end


def _row(entry: Entry) -> tuple[object, ...]:
    return (
        entry.id,
        entry.author.key,
        entry.seq,
        entry.prev,
        entry.period,
        entry.timestamp_ms,
        int(entry.kind),
        entry.raw,
    )
