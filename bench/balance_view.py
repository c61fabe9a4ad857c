"""Benchmark of one balance question: the full fold against the BalanceBook.

An agent asks its balance several times per metering interval. Before the
BalanceBook it re-read its whole log from SQLite and folded it each time
(``fold(await store.entries()).account(d, p)``): the baseline, measured in the
same run, with the fold alone (entries already in memory) beside it. The book
follows the store (``BalanceBook.follow``) and answers from per-period states
updated as entries are stored (here fed directly: ``BalanceBook.add``, what
the store's listener calls); a question is timed together with the update of
the entry that came before it. Two arrivals are measured: in order (an agent's
own entries, the common case) and late (a peer's entry delivered after later
ones: its period is re-folded from memory).

Log: ``--entries`` signed entries (default 10,000) over ``--periods`` periods
and ``--devices`` devices (allocations, readings, shares, carry-overs) in a
real SQLite store on a temporary directory.

Usage: .venv/bin/python bench/balance_view.py [--entries 10000] [--periods 10] [--devices 20]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from p2pgrid.identity import Role, Signer, SiteIdentity
from p2pgrid.ledger import (
    Allocation,
    Author,
    BalanceBook,
    Body,
    CarryOver,
    Enrol,
    Entry,
    LogStore,
    MeterReading,
    Share,
    fold,
    sign_entry,
)
from p2pgrid.ledger.entry import GENESIS_PREV

T0_MS = 1_700_000_000_000
QUESTIONS = 30  # medians over this many questions


def bench_key(label: str) -> Signer:
    return Signer.from_secret(hashlib.sha256(f"p2pgrid bench/{label}".encode()).digest())


class Log:
    """Signs entries of the owner and of devices, one clock for all."""

    def __init__(self, site: SiteIdentity, owner: Signer, devices: int) -> None:
        self.site = site
        self.keys = {Author.owner(): owner}
        self.keys.update({Author.device(d): bench_key(f"device {d}") for d in range(devices)})
        self.prev: dict[Author, bytes] = {}
        self.seq: dict[Author, int] = {}
        self.clock = T0_MS
        self.interval = 0  # of the next meter reading: each one its own

    def reading(self) -> MeterReading:
        self.interval += 1
        return MeterReading(T0_MS + self.interval * 900_000, 900, 10, 2_500)

    def sign(self, author: Author, body: Body, period: int, *, ts: int | None = None) -> Entry:
        self.clock += 1_000
        self.seq[author] = self.seq.get(author, 0) + 1
        entry = sign_entry(self.keys[author], self.site.site_hash, author=author,
                           seq=self.seq[author], prev=self.prev.get(author, GENESIS_PREV),
                           period=period, timestamp_ms=self.clock if ts is None else ts,
                           body=body)  # fmt: skip
        self.prev[author] = entry.id
        return entry


def make_log(log: Log, total: int, periods: int, devices: int) -> list[Entry]:
    owner = Author.owner()
    out = [
        log.sign(owner, Enrol(Role.DEVICE, d, log.keys[Author.device(d)].pubkey, "bench", 0), 0)
        for d in range(devices)
    ]
    per_period = (total - len(out)) // periods
    for period in range(periods):
        out += [log.sign(owner, Allocation(d, 10_000_000), period) for d in range(devices)]
        for i in range(per_period - 2 * devices):
            d = i % devices
            body: Body = Share((d + 1) % devices, 1_000, "") if i % 7 == 0 else log.reading()
            out.append(log.sign(Author.device(d), body, period))
        out += [log.sign(Author.device(d), CarryOver(1_000), period) for d in range(devices)]
    return out


def median_ms(costs: list[float]) -> float:
    return statistics.median(costs) * 1000


async def run(total: int, periods: int, devices: int) -> None:
    owner = bench_key("owner")
    site = SiteIdentity(owner.pubkey)
    log = Log(site, owner, devices)
    entries = make_log(log, total, periods, devices)
    last = periods - 1
    with tempfile.TemporaryDirectory() as tmp:
        store = await LogStore.open(Path(tmp) / "log.db", site, name="bench")
        try:
            for offset in range(0, len(entries), 512):
                await store.ingest_many([e.raw for e in entries[offset : offset + 512]])
            held = await store.entries()
            print(f"log: {len(held)} entries, {periods} periods, {devices} devices (real SQLite)")
            full: list[float] = []
            alone: list[float] = []
            for _ in range(QUESTIONS):
                start = time.perf_counter()
                fold(await store.entries(), site_hash=site.site_hash).account(0, last)
                full.append(time.perf_counter() - start)
                start = time.perf_counter()
                fold(held, site_hash=site.site_hash).account(0, last)
                alone.append(time.perf_counter() - start)
        finally:
            await store.close()

    book = BalanceBook(site_hash=site.site_hash)
    start = time.perf_counter()
    book.add(held)
    book.balance(0, last)
    first = time.perf_counter() - start
    in_order: list[float] = []
    late: list[float] = []
    for i in range(QUESTIONS):  # each question follows one new entry: its update is timed too
        fresh = log.sign(Author.device(i % devices), log.reading(), last)
        start = time.perf_counter()
        book.add([fresh])
        book.balance(0, last)
        in_order.append(time.perf_counter() - start)
        held.append(fresh)
    for i in range(QUESTIONS):  # a peer's entry an hour older than the period's newest
        lagging = log.sign(Author.device(i % devices), log.reading(), last,
                           ts=log.clock - 3_600_000)  # fmt: skip
        start = time.perf_counter()
        book.add([lagging])
        book.balance(0, last)
        late.append(time.perf_counter() - start)
        held.append(lagging)
    view = fold(held, site_hash=site.site_hash)
    assert all(book.account(d, last) == view.account(d, last) for d in range(devices))

    base = median_ms(full)
    print(f"full re-read + fold per question:        {base:9.3f} ms (baseline)")
    print(f"fold alone (entries already in memory):  {median_ms(alone):9.3f} ms")
    print(f"book, loading the log once:              {first * 1000:9.3f} ms")
    print(f"book, question after an in-order entry:  {median_ms(in_order):9.4f} ms")
    print(f"book, question after a late entry:       {median_ms(late):9.3f} ms (a re-fold)")
    print(f"ratio book / full, in order:             {median_ms(in_order) / base:9.5f}")
    print(f"ratio book / full, late arrival:         {median_ms(late) / base:9.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--periods", type=int, default=10)
    parser.add_argument("--devices", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.entries, args.periods, args.devices))


if __name__ == "__main__":
    main()
