"""Benchmark of the replicated log: ingest+verify rate and a fresh replica's sync.

Measures, in one run on one machine:

1. the raw BIP340 verification rate of coincurve (libsecp256k1) over the very
   entries used below, keys parsed once, and the raw insert rate of the same rows
   into the same SQLite schema (stdlib ``sqlite3``, WAL, one transaction per 256
   rows): together, "verify + bulk insert", the floor of what a replica that checks
   every signature and stores every entry must do, one entry after the other;
2. the rate at which ``LogStore.ingest_many`` decodes, verifies (signature,
   membership, schema, chain) and commits entries, in batches of 256 (the size of
   one sync reply), and its ratio to (1) (the target is 0.8);
3. the time for a fresh replica to sync all entries from a replica that holds
   them, through ``LoopbackNetwork`` -- the in-memory, in-process fake transport:
   no sockets, no libp2p; every byte still goes through the wire codec;
4. the same over two REAL py-libp2p hosts (``NetReplica`` on ``PeerHost``, TCP on
   127.0.0.1, Noise, mplex, signed envelopes), both in this process on one
   TrioBridge: from the fresh replica's start (its peer-joined round) until its
   digest equals the source's.

Usage: .venv/bin/python bench/ledger_ingest.py [--entries 100000] [--devices 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import sqlite3
import tempfile
import time
from pathlib import Path

import coincurve

from p2pgrid.identity import Role, Signer, SiteIdentity
from p2pgrid.ledger import (
    Author,
    Enrol,
    Entry,
    LogStore,
    Membership,
    MeterReading,
    sign_entry,
)
from p2pgrid.ledger.entry import GENESIS_PREV
from p2pgrid.ledger.store import _INSERT_ENTRY as INSERT_ENTRY_SQL
from p2pgrid.ledger.store import _SCHEMA as SCHEMA_SQL
from p2pgrid.ledger.store import _row as row_of
from p2pgrid.net import DeviceKey, NetConfig, PeerHost, TrioBridge
from p2pgrid.replication import NetReplica, ReplicaConfig, log_net_topic
from p2pgrid.testing.loopback import LoopbackNetwork

#: Deadline of the sync over real hosts.
NET_SYNC_TIMEOUT_S = 600.0

BATCH = 256
T0_MS = 1_700_000_000_000


def bench_key(label: str) -> Signer:
    """Benchmark keys: each its own hash of a label (never derived from another)."""
    return Signer.from_secret(hashlib.sha256(f"p2pgrid bench/{label}".encode()).digest())


def enrolments(owner: Signer, site: SiteIdentity, devices: int) -> list[Entry]:
    """The owner's entries that enrol devices ``0..devices-1`` (ingested first everywhere)."""
    entries: list[Entry] = []
    for d in range(devices):
        entries.append(
            sign_entry(
                owner,
                site.site_hash,
                author=Author.owner(),
                seq=d + 1,
                prev=entries[-1].id if entries else GENESIS_PREV,
                period=0,
                timestamp_ms=T0_MS,
                body=Enrol(Role.DEVICE, d, bench_key(f"device {d}").pubkey, "bench", 0),
            )
        )
    return entries


def make_entries(membership: Membership, total: int, devices: int) -> list[Entry]:
    """``total`` meter readings, round-robin over ``devices`` chains."""
    signers = [bench_key(f"device {d}") for d in range(devices)]
    prev = [GENESIS_PREV] * devices
    entries: list[Entry] = []
    for n in range(total):
        d, seq = n % devices, n // devices + 1
        entry = sign_entry(
            signers[d],
            membership.site_hash,
            author=Author.device(d),
            seq=seq,
            prev=prev[d],
            period=1,
            timestamp_ms=T0_MS + seq * 60_000,
            body=MeterReading(T0_MS + seq * 60_000, 60, 5, 500),
        )
        prev[d] = entry.id
        entries.append(entry)
    return entries


def raw_verify_rate(membership: Membership, entries: list[Entry]) -> float:
    keys = {
        e.author: coincurve.PublicKeyXOnly(membership.pubkey(e.author)[1:]) for e in entries[:1000]
    }
    work = [(keys[e.author], e.signature, e.id) for e in entries]
    start = time.perf_counter()
    ok = all(key.verify(sig, msg) for key, sig, msg in work)
    elapsed = time.perf_counter() - start
    assert ok
    return len(work) / elapsed


def raw_insert_rate(entries: list[Entry], folder: Path) -> float:
    """Rows per second into the store's own schema, in transactions of BATCH rows."""
    conn = sqlite3.connect(folder / "raw.sqlite", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA_SQL)
        rows = [row_of(e) for e in entries]
        start = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_ENTRY_SQL, rows[i : i + BATCH])
            conn.execute("COMMIT")
        return len(rows) / (time.perf_counter() - start)
    finally:
        conn.close()


async def run(total: int, devices: int) -> None:
    owner = bench_key("owner")
    site = SiteIdentity(owner.pubkey)
    genesis = [e.raw for e in enrolments(owner, site, devices)]
    membership = Membership(site)
    membership.learn_from(enrolments(owner, site, devices))
    start = time.perf_counter()
    entries = make_entries(membership, total, devices)
    print(f"signed {total} entries of {devices} devices in {time.perf_counter() - start:.1f} s")

    raw_rate = raw_verify_rate(membership, entries)
    print(f"raw coincurve BIP340 verify:        {raw_rate:10,.0f} /s")

    with tempfile.TemporaryDirectory() as tmp:
        insert_rate = raw_insert_rate(entries, Path(tmp))
        floor_rate = 1 / (1 / raw_rate + 1 / insert_rate)
        print(f"raw sqlite3 insert (same schema):   {insert_rate:10,.0f} /s")
        print(f"raw verify + bulk insert:           {floor_rate:10,.0f} /s")
        source = await LogStore.open(Path(tmp) / "source.sqlite", site, name="source")
        fresh = await LogStore.open(Path(tmp) / "fresh.sqlite", site, name="fresh")
        try:
            for store in (source, fresh):  # the site's membership: same start everywhere
                await store.ingest_many(genesis)
            raws = [e.raw for e in entries]
            start = time.perf_counter()
            for i in range(0, total, BATCH):
                await source.ingest_many(raws[i : i + BATCH])
            elapsed = time.perf_counter() - start
            assert source.heads().total == total + devices
            rate = total / elapsed
            print(f"ingest+verify (batches of {BATCH}):  {rate:10,.0f} /s")
            print(f"ratio ingest / raw verify:          {rate / raw_rate:10.2f}")
            print(f"ratio ingest / (verify + insert):   {rate / floor_rate:10.2f}  (target 0.8)")

            net = LoopbackNetwork()
            net.join(source)
            replica = net.join(fresh)
            start = time.perf_counter()
            report = await replica.sync_with("source")
            elapsed = time.perf_counter() - start
            assert fresh.digest() == source.digest()
            floor_s = report.appended / floor_rate
            print(
                f"fresh replica sync of {report.appended} entries via LoopbackNetwork "
                f"(in-memory fake transport): {elapsed:.1f} s "
                f"({report.appended / elapsed:,.0f} /s, {report.requests} requests), "
                f"{elapsed / floor_s:.2f}x verify + insert (target <= 2)"
            )
            over_net = await LogStore.open(Path(tmp) / "net.sqlite", site, name="net")
            await over_net.ingest_many(genesis)
            try:
                await sync_over_hosts(source, over_net, floor_rate)
            finally:
                await over_net.close()
        finally:
            await fresh.close()
            await source.close()


async def sync_over_hosts(source: LogStore, fresh: LogStore, floor_rate: float) -> None:
    """Time a fresh NetReplica pulling everything from a serving one over real hosts."""
    site = source.membership.site
    config = ReplicaConfig(anti_entropy_interval_s=3600.0)  # only the joined-peer round
    bridge = TrioBridge()
    await bridge.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            serving = PeerHost(
                NetConfig(),
                DeviceKey(site, 0, bench_key("device 0")),
                [log_net_topic(source.roster)],
                bridge=bridge,
            )
            await stack.enter_async_context(serving)
            client = PeerHost(
                NetConfig(bootstrap=serving.addrs),
                DeviceKey(site, 1, bench_key("device 1")),
                [log_net_topic(fresh.roster)],
                bridge=bridge,
            )
            await stack.enter_async_context(client)
            await stack.enter_async_context(NetReplica(source, serving, config))
            held = fresh.heads().total  # the enrolments it started with
            start = time.perf_counter()
            replica = await stack.enter_async_context(NetReplica(fresh, client, config))
            target = source.digest()
            async with asyncio.timeout(NET_SYNC_TIMEOUT_S):
                await replica.wait_until(lambda: fresh.digest() == target)
            elapsed = time.perf_counter() - start
            stats = replica.stats()
            n = fresh.heads().total - held
            print(
                f"fresh replica sync of {n} entries over 2 real py-libp2p hosts "
                f"(TCP 127.0.0.1, one process): {elapsed:.1f} s ({n / elapsed:,.0f} /s, "
                f"{stats.rounds} round(s), {stats.rounds_failed} failed), "
                f"{elapsed / (n / floor_rate):.2f}x verify + insert (target <= 2)"
            )
    finally:
        await bridge.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.entries, args.devices))


if __name__ == "__main__":
    main()
