"""Benchmark of the dashboard: the cost of one snapshot against the log's length.

Each time a replica appends, the dashboard rebuilds its snapshot from the
whole log (read from SQLite, folded, read for people). This measures one
snapshot (:func:`p2pgrid.dashboard.node_snapshot`) over a real SQLite log of
meter readings and shares, for growing logs, with the baseline of the bare
read of the same entries (``LogStore.entries``) measured in the same run.

Usage: .venv/bin/python bench/dashboard_snapshot.py [--entries 1000 10000 50000] [--devices 20]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from pathlib import Path

from p2pgrid.dashboard import SiteFeed, node_snapshot
from p2pgrid.identity import Role, Signer, SiteIdentity
from p2pgrid.ledger import (
    Author,
    Body,
    DeviceInfo,
    Enrol,
    Entry,
    LogStore,
    MeterReading,
    Share,
    sign_entry,
)
from p2pgrid.ledger.entry import GENESIS_PREV

T0_MS = 1_700_000_000_000
BATCH = 256
REPEAT = 5


def bench_key(label: str) -> Signer:
    """Benchmark keys: each its own hash of a label."""
    return Signer.from_secret(hashlib.sha256(f"p2pgrid bench/{label}".encode()).digest())


def make_entries(owner: Signer, site: SiteIdentity, total: int, devices: int) -> list[Entry]:
    """The owner's enrolments and labels, then ``total`` readings and shares
    round-robin over ``devices``."""
    prev: dict[Author, bytes] = {}
    seqs: dict[Author, int] = {}
    keys = {d: bench_key(f"device {d}") for d in range(devices)}

    def sign(author: Author, body: Body, ts: int) -> Entry:
        signer = owner if author == Author.owner() else keys[author.index]
        seqs[author] = seqs.get(author, 0) + 1
        period = 0 if author == Author.owner() else 1
        entry = sign_entry(signer, site.site_hash, author=author, seq=seqs[author],
                           prev=prev.get(author, GENESIS_PREV), period=period,
                           timestamp_ms=ts, body=body)  # fmt: skip
        prev[author] = entry.id
        return entry

    entries = [
        sign(Author.owner(), Enrol(Role.DEVICE, d, keys[d].pubkey, "bench", 0), T0_MS)
        for d in range(devices)
    ]
    entries += [
        sign(Author.owner(), DeviceInfo(d, "hvac", f"dev-{d}"), T0_MS) for d in range(devices)
    ]
    for n in range(total):
        d, ts = n % devices, T0_MS + (n // devices + 1) * 60_000
        body: Body = (
            Share((d + 1) % devices, 1_000, "") if n % 10 == 0 else MeterReading(ts, 60, 5, 500)
        )
        entries.append(sign(Author.device(d), body, ts))
    return entries


async def run(sizes: list[int], devices: int) -> None:
    owner = bench_key("owner")
    site = SiteIdentity(owner.pubkey)
    print(f"{'entries':>8} {'read ms':>9} {'snapshot ms':>12} {'ratio':>6}")
    for total in sizes:
        entries = make_entries(owner, site, total, devices)
        with tempfile.TemporaryDirectory() as tmp:
            async with await LogStore.open(Path(tmp) / "s.db", site, name="s") as store:
                raws = [e.raw for e in entries]
                for i in range(0, len(raws), BATCH):
                    await store.ingest_many(raws[i : i + BATCH])
                assert store.heads().total == len(entries), "entries refused"
                start = time.perf_counter()
                for _ in range(REPEAT):
                    await store.entries()
                read = (time.perf_counter() - start) / REPEAT
                feeds = (SiteFeed("site", store),)
                start = time.perf_counter()
                for _ in range(REPEAT):
                    await node_snapshot("bench", feeds)
                snap = (time.perf_counter() - start) / REPEAT
        print(f"{total:>8} {read * 1000:>9.1f} {snap * 1000:>12.1f} {snap / read:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--devices", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.entries, args.devices))


if __name__ == "__main__":
    main()
