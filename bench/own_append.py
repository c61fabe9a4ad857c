"""Benchmark of a node's own log entries: each one committed synced.

``LogWriter.append`` signs an entry and commits it to the log with
``synchronous=FULL`` (:mod:`p2pgrid.ledger.store`, "Durability"): one fsync of
the WAL per entry, before it is published. Peers' entries are ingested without
a sync. Measured in one run, on the same disk (one temporary directory), with
the log's schema and WAL mode, ``--appends`` entries each, one per transaction,
the four run in turn in ``--rounds`` alternating rounds (the machine's load
changes during a run):

1. raw SQLite, ``synchronous=FULL`` (stdlib ``sqlite3``): one row of a signed
   entry inserted and committed: the floor of a synced own entry on this disk;
2. raw SQLite, the same with ``synchronous=NORMAL``: an unsynced commit;
3. ``LogWriter.append`` of this tree (sign, verify, store, synced commit),
   through aiosqlite; its ratio to (1) is printed;
4. ``LogStore.ingest`` of one signed entry per batch, not synced: what an own
   append cost before it was synced (less the signing), and a peer's entry's
   cost now.

Usage: .venv/bin/python bench/own_append.py [--appends 400] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from p2pgrid.identity import Role, Signer, SiteIdentity
from p2pgrid.ledger import Author, Enrol, Entry, LogStore, LogWriter, MeterReading, sign_entry
from p2pgrid.ledger.entry import GENESIS_PREV
from p2pgrid.ledger.store import _INSERT_ENTRY as INSERT_ENTRY_SQL
from p2pgrid.ledger.store import _SCHEMA as SCHEMA_SQL
from p2pgrid.ledger.store import _row as row_of

T0_MS = 1_700_000_000_000
WRITER, PEER = 0, 1  # device indices: the writing one, and the one whose entries are ingested


def bench_key(label: str) -> Signer:
    """Benchmark keys: each its own hash of a label (never derived from another)."""
    return Signer.from_secret(hashlib.sha256(f"p2pgrid bench/{label}".encode()).digest())


def chain(
    signer: Signer, site: SiteIdentity, author: Author, bodies: list[Enrol] | list[MeterReading]
) -> list[Entry]:
    """``bodies`` signed by ``signer`` as ``author``'s chain from its start."""
    entries: list[Entry] = []
    for i, body in enumerate(bodies):
        entries.append(
            sign_entry(
                signer,
                site.site_hash,
                author=author,
                seq=i + 1,
                prev=entries[-1].id if entries else GENESIS_PREV,
                period=1 if author.role is Role.DEVICE else 0,
                timestamp_ms=T0_MS + i,
                body=body,
            )
        )
    return entries


def _reading(i: int) -> MeterReading:
    return MeterReading(T0_MS + 60_000 * i, 60, 10, 100)


def raw_db(path: Path, level: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={level}")
    db.executescript(SCHEMA_SQL)
    return db


def raw(db: sqlite3.Connection, entries: list[Entry]) -> list[float]:
    """Seconds per entry inserted and committed on its own."""
    took = []
    for entry in entries:
        start = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute(INSERT_ENTRY_SQL, row_of(entry))
        db.execute("COMMIT")
        took.append(time.perf_counter() - start)
    return took


async def append(writer: LogWriter, readings: range) -> list[float]:
    """Seconds per ``LogWriter.append``."""
    took = []
    for i in readings:
        start = time.perf_counter()
        await writer.append(_reading(i), period=1, timestamp_ms=T0_MS + i)
        took.append(time.perf_counter() - start)
    return took


async def ingest(store: LogStore, entries: list[Entry]) -> list[float]:
    """Seconds per ``LogStore.ingest`` of one entry (not synced)."""
    took = []
    for entry in entries:
        start = time.perf_counter()
        await store.ingest(entry.raw)
        took.append(time.perf_counter() - start)
    return took


async def measure(tmp: Path, appends: int, rounds: int) -> dict[str, float]:
    """Appends per second (from the p50) of (1) to (4), in ``rounds`` alternating rounds."""
    owner = bench_key("owner")
    site = SiteIdentity(owner.pubkey)
    enrol = [Enrol(Role.DEVICE, d, bench_key(f"device {d}").pubkey, "bench", 0) for d in (0, 1)]
    genesis = [e.raw for e in chain(owner, site, Author.owner(), enrol)]
    peer = Author.device(PEER)
    ahead = chain(bench_key(f"device {PEER}"), site, peer, [_reading(i) for i in range(appends)])
    samples: dict[str, list[float]] = {"full": [], "normal": [], "append": [], "ingest": []}
    writing = await LogStore.open(tmp / "append.db", site, name="writer")
    ingesting = await LogStore.open(tmp / "ingest.db", site, name="ingest")
    try:
        await writing.ingest_many(genesis)
        await ingesting.ingest_many(genesis)
        writer = LogWriter(writing, bench_key(f"device {WRITER}"), Author.device(WRITER))
        with (
            contextlib.closing(raw_db(tmp / "full.db", "FULL")) as full,
            contextlib.closing(raw_db(tmp / "normal.db", "NORMAL")) as normal,
        ):
            per = appends // rounds
            for r in range(rounds):
                part = range(r * per, (r + 1) * per)
                chunk = ahead[part.start : part.stop]
                samples["full"] += raw(full, chunk)
                samples["normal"] += raw(normal, chunk)
                samples["append"] += await append(writer, part)
                samples["ingest"] += await ingest(ingesting, chunk)
    finally:
        await writing.close()
        await ingesting.close()
    return {name: 1 / statistics.median(took) for name, took in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=10, help="alternations of the four")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rate = asyncio.run(measure(Path(tmp), args.appends, args.rounds))
    print(f"entries: {args.appends}, one per commit, per second (from the p50)")
    print(f"raw sqlite3 insert + commit, FULL:          {rate['full']:10,.0f}")
    print(f"raw sqlite3 insert + commit, NORMAL:        {rate['normal']:10,.0f}")
    print(f"LogWriter.append:                           {rate['append']:10,.0f}")
    print(f"LogStore.ingest of one entry (NORMAL):      {rate['ingest']:10,.0f}")
    print(f"ratio LogWriter.append / raw FULL:          {rate['append'] / rate['full']:10.2f}")


if __name__ == "__main__":
    main()
