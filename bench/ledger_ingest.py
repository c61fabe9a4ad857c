"""Benchmark of the replicated log: ingest+verify rate and a fresh replica's sync.

Measures, in one run on one machine:

1. the raw BIP340 verification rate of coincurve (libsecp256k1) over the very
   entries used below, keys parsed once: the upper bound for ingest;
2. the rate at which ``LogStore.ingest_many`` decodes, verifies (signature,
   membership, schema, chain) and commits entries, in batches of 256 (the size of
   one sync reply), and its ratio to (1);
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

            net = LoopbackNetwork()
            net.join(source)
            replica = net.join(fresh)
            start = time.perf_counter()
            report = await replica.sync_with("source")
            elapsed = time.perf_counter() - start
            assert fresh.digest() == source.digest()
            print(
                f"fresh replica sync of {report.appended} entries via LoopbackNetwork "
                f"(in-memory fake transport): {elapsed:.1f} s "
                f"({report.appended / elapsed:,.0f} /s, {report.requests} requests)"
            )
            over_net = await LogStore.open(Path(tmp) / "net.sqlite", site, name="net")
            await over_net.ingest_many(genesis)
            try:
                await sync_over_hosts(source, over_net)
            finally:
                await over_net.close()
        finally:
            await fresh.close()
            await source.close()


async def sync_over_hosts(source: LogStore, fresh: LogStore) -> None:
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
                f"{stats.rounds} round(s), {stats.rounds_failed} failed)"
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
