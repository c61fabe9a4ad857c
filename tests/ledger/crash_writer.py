"""Run as a process by test_store: writes entries until it is killed (-9).

Prints the batch number after each committed batch; the test kills it after a
few, at whatever point of the next batch it happens to be.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from p2pgrid.ledger import Author, LogWriter, MeterReading
from tests.ledger.ledger_factory import T0_MS, Site


async def main(path: Path) -> None:
    site = Site.make()
    store = await site.open(path, "crasher")
    writer = LogWriter(store, site.device(1), Author.device(1))
    other = site.chain(Author.device(2))
    n = 0
    while True:
        n += 1
        await writer.append(MeterReading(T0_MS + n, 60, n, n), period=1, timestamp_ms=T0_MS + n)
        # one reading per interval: a log refuses a second reading of an interval
        batch = [
            other.next(MeterReading(T0_MS + 60_000 * (20 * n + i), 60, 1, 1)).raw for i in range(20)
        ]
        await store.ingest_many(batch)
        print(n, flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
