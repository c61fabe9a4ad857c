"""Benchmark: the CPU of one anti-entropy round between two replicas whose logs are equal.

The periodic rounds of a quiet site find nothing to pull: each is a HEADS_REQUEST,
its HEADS reply and the puller's decision. This measures that much, both sides in
this process over :class:`~p2pgrid.testing.loopback.LoopbackNetwork` (the wire
codec, no sockets, no libp2p, no envelope signatures: the replicator's own
share of a round), with ``--devices`` authors that wrote three readings each.

    .venv/bin/python bench/sync_round.py --devices 11 --rounds 2000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from p2pgrid.ledger import Author, LogWriter, MeterReading
from p2pgrid.testing.loopback import LoopbackNetwork
from tests.ledger.ledger_factory import T0_MS, Site


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=11, help="authors with entries (1..63)")
    parser.add_argument("--rounds", type=int, default=2000, help="rounds timed")
    args = parser.parse_args()
    site = Site.make()
    with tempfile.TemporaryDirectory() as tmp:
        net = LoopbackNetwork()
        source = net.join(await site.open(Path(tmp) / "source.sqlite", "source"))
        puller = net.join(await site.open(Path(tmp) / "puller.sqlite", "puller"))
        try:
            for device in range(1, args.devices + 1):
                writer = LogWriter(source.store, site.device(device), Author.device(device))
                for seq in range(1, 4):
                    ts = T0_MS + 60_000 * seq
                    entry = await writer.append(
                        MeterReading(ts, 60, 5, 50), period=1, timestamp_ms=ts
                    )
                    await source.publish([entry])  # the puller gets it by gossip
            assert puller.store.digest() == source.store.digest()
            for _ in range(50):  # warm up
                await puller.sync_with("source")
            cpu = time.process_time()
            for _ in range(args.rounds):
                report = await puller.sync_with("source")
                assert report.appended == 0
            per_round = (time.process_time() - cpu) / args.rounds
        finally:
            await source.store.close()
            await puller.store.close()
    authors = len(source.store.heads())
    print(f"{authors} authors, {args.rounds} rounds with equal logs")
    print(f"CPU per round (puller and server): {per_round * 1e6:.0f} us")


if __name__ == "__main__":
    asyncio.run(main())
