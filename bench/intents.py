"""Benchmark of a payment's intent: opened before lnd pays, resolved after.

Per payment the paymaster commits its intent twice in the agent's
``<name>.intents.db`` (:mod:`p2pgrid.agent.intents`): ``record`` (open, synced:
it must survive a power cut before any sat moves) and ``resolve`` (logged).
Measured in one run, on the same disk, with the same schema and WAL mode,
``--payments`` cycles each (open + resolve of one payment hash), p50 per cycle,
the three run in turn in ``--rounds`` alternating rounds (the machine's load
changes during a run):

1. raw SQLite, both commits synced (stdlib ``sqlite3``, ``synchronous=FULL``):
   what an intent cost before its resolution went unsynced;
2. raw SQLite, the open commit synced, the resolution not (``synchronous``
   switched to ``NORMAL`` around it): the floor of the book's way;
3. ``IntentBook.record`` + ``IntentBook.resolve(LOGGED)`` of this tree, through
   aiosqlite; its ratio to (2) and to (1) is printed.

Usage: .venv/bin/python bench/intents.py [--payments 400] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from p2pgrid.agent.intents import (
    _SCHEMA,
    IntentBook,
    IntentState,
    PaymentIntent,
    Purpose,
    PurposeKind,
)

PURPOSE = Purpose(PurposeKind.INVOICE, 5_000)
INSERT = "INSERT INTO payment_intents VALUES (?, ?, ?, ?, ?, ?)"
RESOLVE = "UPDATE payment_intents SET state = ?, detail = ? WHERE payment_hash = ?"


def _hash(i: int) -> str:
    return f"{i:064x}"


def raw(db: sqlite3.Connection, hashes: range, *, resolve_synced: bool) -> list[float]:
    """Seconds per cycle of the two commits on stdlib sqlite3."""
    took = []
    for i in hashes:
        start = time.perf_counter()
        db.execute(INSERT, (_hash(i), "lnbc", 1, PURPOSE.to_json(), "open", ""))
        db.commit()
        if not resolve_synced:
            db.execute("PRAGMA synchronous=NORMAL")
        db.execute(RESOLVE, ("logged", "", _hash(i)))
        db.commit()
        if not resolve_synced:
            db.execute("PRAGMA synchronous=FULL")
        took.append(time.perf_counter() - start)
    return took


def raw_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(_SCHEMA)
    db.commit()
    return db


async def book(intents: IntentBook, hashes: range) -> list[float]:
    """Seconds per cycle of ``IntentBook.record`` + ``resolve``."""
    took = []
    for i in hashes:
        start = time.perf_counter()
        await intents.record(PaymentIntent(_hash(i), "lnbc", 1, PURPOSE))
        await intents.resolve(_hash(i), IntentState.LOGGED)
        took.append(time.perf_counter() - start)
    return took


async def measure(tmp: Path, payments: int, rounds: int) -> tuple[float, float, float]:
    """p50 ms of (1), (2) and (3), run in ``rounds`` alternating rounds."""
    both: list[float] = []
    one: list[float] = []
    ours: list[float] = []
    intents = await IntentBook.open(tmp / "book.intents.db", name="bench")
    try:
        with (
            contextlib.closing(raw_db(tmp / "both.db")) as synced,
            contextlib.closing(raw_db(tmp / "one.db")) as unsynced,
        ):
            per = payments // rounds
            for r in range(rounds):
                hashes = range(r * per, (r + 1) * per)
                both += raw(synced, hashes, resolve_synced=True)
                one += raw(unsynced, hashes, resolve_synced=False)
                ours += await book(intents, hashes)
    finally:
        await intents.close()
    return _ms(both), _ms(one), _ms(ours)


def _ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=10, help="alternations of the three")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        both, one, ours = asyncio.run(measure(Path(tmp), args.payments, args.rounds))
    print(f"payments: {args.payments}, p50 ms per payment (open + resolve)")
    print(f"raw sqlite3, both commits synced (FULL, FULL):  {both:8.3f}")
    print(f"raw sqlite3, open synced (FULL, NORMAL):        {one:8.3f}")
    print(f"IntentBook.record + resolve:                    {ours:8.3f}")
    print(f"ratio IntentBook / raw (FULL, NORMAL):          {ours / one:8.2f}")
    print(f"ratio IntentBook / raw (FULL, FULL):            {ours / both:8.2f}")


if __name__ == "__main__":
    main()
