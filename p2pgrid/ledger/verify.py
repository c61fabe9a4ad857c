"""Check a replica's SQLite file from the outside: ``p2pgrid log verify``.

The file is opened read-only. Every entry it holds is replayed into a fresh,
empty store of the same site (:class:`p2pgrid.ledger.store.LogStore` in a
temporary directory), so each one is checked again exactly as a peer's would
be: its signature, its author's membership and role, its chain (``prev`` of
the entry before), the log's rules (a record written once, revocations). A
defect is any of: SQLite's integrity check failing, the file belonging to
another site, an entry refused on replay (counted by reason), an entry whose
predecessor is missing (held), or an author that signed two entries with one
sequence number (an equivocator). The result carries the replayed log's digest,
the same value every honest replica of the same entries reports.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import sqlite3
from pathlib import Path

from p2pgrid.errors import ConfigError
from p2pgrid.identity import SiteIdentity
from p2pgrid.ledger.outcome import Outcome
from p2pgrid.ledger.store import LogStore

#: Entries replayed per transaction.
BATCH = 500


@dataclasses.dataclass(frozen=True)
class Verdict:
    file: str
    site_id: str
    integrity: str  # "ok" or SQLite's first complaint
    same_site: bool
    entries: int  # in the file's log
    pending_in_file: int  # held by the replica, waiting for a predecessor (not a defect)
    replayed: int  # joined the fresh log
    rejected: dict[str, int]  # reason -> count
    held: int  # still waiting for a predecessor after the replay
    equivocators: list[str]
    digest: str  # hex, of the replayed log

    @property
    def ok(self) -> bool:
        return (
            self.integrity == "ok"
            and self.same_site
            and not self.rejected
            and self.held == 0
            and not self.equivocators
        )


@dataclasses.dataclass(frozen=True)
class ReplicaFile:
    """What a replica's file holds, read once, read-only."""

    path: Path
    integrity: str
    site_hash: bytes
    raws: list[bytes]
    pending: int


def read_replica(path: Path) -> ReplicaFile:
    """Read ``path`` read-only (:class:`ConfigError` if it is not a p2pgrid replica)."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            integrity = str(db.execute("PRAGMA quick_check").fetchone()[0])
            meta = {str(k): bytes(v) for k, v in db.execute("SELECT key, value FROM meta")}
            rows = db.execute("SELECT raw FROM entries ORDER BY seq, author, id").fetchall()
            pending = int(db.execute("SELECT COUNT(*) FROM pending").fetchone()[0])
    except sqlite3.Error as exc:
        raise ConfigError(f"{path}: not a p2pgrid replica: {exc}") from None
    return ReplicaFile(path, integrity, meta.get("site", b""), [bytes(r) for (r,) in rows], pending)


async def verify_replica(replica: ReplicaFile, site: SiteIdentity, work_dir: Path) -> Verdict:
    """Replay ``replica`` into a fresh store of ``site`` under ``work_dir`` (empty)."""
    rejected: collections.Counter[str] = collections.Counter()
    replayed = 0
    raws = replica.raws
    async with await LogStore.open(work_dir / "replay.db", site, name="verify") as store:
        for start in range(0, len(raws), BATCH):
            report = await store.ingest_many(raws[start : start + BATCH])
            replayed += len(report.appended)
            for result in report.results:
                if result.outcome is Outcome.REJECTED and result.reason is not None:
                    rejected[result.reason.value] += 1
        return Verdict(
            file=str(replica.path),
            site_id=site.site_id,
            integrity=replica.integrity,
            same_site=replica.site_hash == site.site_hash,
            entries=len(raws),
            pending_in_file=replica.pending,
            replayed=replayed,
            rejected=dict(rejected),
            held=store.pending_count,
            equivocators=sorted(str(a) for a in store.equivocators),
            digest=store.digest().hex(),
        )
