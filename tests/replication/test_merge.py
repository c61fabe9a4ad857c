"""Merging a device's replica file into its site's shared store (p2pgrid.replication.merge).

Real SQLite stores of one site, real signed entries: two devices each wrote into
a replica file of its own; their files merged into one store hold every entry
once, each author's head where it was, and each writer goes on from there on the
shared store. The merge is an ingest of verified entries: a second merge, or a
file the store already holds, adds nothing; a file of another site is refused
and left as it was; a store that holds less of a device's entries than its
merged file did is refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgrid.errors import ConfigError
from p2pgrid.ledger import Author, LogStore, LogWriter, MeterReading
from p2pgrid.replication import check_not_behind, merge_replica, merged_path
from tests.ledger.ledger_factory import T0_MS, Site

SITE = Site.make(max_device_index=3)


async def written(path: Path, index: int, count: int) -> list[bytes]:
    """Device ``index``'s replica file at ``path`` with ``count`` of its readings."""
    async with await SITE.open(path, f"dev{index}") as store:
        writer = LogWriter(store, SITE.device(index), Author.device(index))
        for i in range(count):
            ts = T0_MS + 900_000 * i
            await writer.append(MeterReading(ts, 900, 10 + index, 100), period=1, timestamp_ms=ts)
        return await store.export()


async def test_two_devices_files_merge_into_one_store_and_their_writers_go_on(
    tmp_path: Path,
) -> None:
    a = await written(tmp_path / "dev0.db", 0, 3)
    b = await written(tmp_path / "dev1.db", 1, 2)
    async with await SITE.open(tmp_path / "site.gateway.db", "site") as shared:
        merged = await merge_replica(shared, tmp_path / "dev0.db")
        assert (merged.entries, merged.stored) == (len(a), 3)  # the genesis was there
        merged = await merge_replica(shared, tmp_path / "dev1.db")
        assert (merged.entries, merged.stored) == (len(b), 2)
        assert sorted(await shared.export()) == sorted(set(a) | set(b))
        heads = shared.heads()
        assert (heads[Author.device(0)].seq, heads[Author.device(1)].seq) == (3, 2)
        assert not (tmp_path / "dev0.db").exists()
        assert merged_path(tmp_path / "dev0.db").is_file()
        # Each device's writer continues its own chain on the shared store.
        for index in (0, 1):
            writer = LogWriter(shared, SITE.device(index), Author.device(index))
            ts = T0_MS + 86_400_000
            entry = await writer.append(MeterReading(ts, 900, 1, 1), period=1, timestamp_ms=ts)
            assert entry.seq == heads[Author.device(index)].seq + 1
            await check_not_behind(shared, merged_path(tmp_path / f"dev{index}.db"), entry.author)
        digest = shared.digest()
    # Reopened (a gateway's restart): the same log, the same heads.
    async with await LogStore.open(tmp_path / "site.gateway.db", SITE.identity, name="s") as again:
        assert again.digest() == digest
        assert again.heads()[Author.device(0)].seq == 4


async def test_a_merge_of_entries_the_store_holds_adds_nothing(tmp_path: Path) -> None:
    raws = await written(tmp_path / "dev0.db", 0, 2)
    async with await SITE.open(tmp_path / "shared.db") as shared:
        await shared.ingest_many(raws)
        digest = shared.digest()
        merged = await merge_replica(shared, tmp_path / "dev0.db")
        assert (merged.entries, merged.stored) == (len(raws), 0)
        assert shared.digest() == digest


async def test_a_file_of_another_site_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    other = Site.make(b"another site", max_device_index=1)
    async with await other.open(tmp_path / "other.db") as store:
        writer = LogWriter(store, other.device(0), Author.device(0))
        await writer.append(MeterReading(T0_MS, 900, 1, 1), period=1, timestamp_ms=T0_MS)
    async with await SITE.open(tmp_path / "shared.db") as shared:
        digest = shared.digest()
        with pytest.raises(ConfigError, match="another site"):
            await merge_replica(shared, tmp_path / "other.db")
        assert shared.digest() == digest
    assert (tmp_path / "other.db").is_file()
    assert not merged_path(tmp_path / "other.db").exists()


async def test_a_store_behind_a_devices_merged_file_is_refused(tmp_path: Path) -> None:
    await written(tmp_path / "dev0.db", 0, 3)
    async with await SITE.open(tmp_path / "elsewhere.db") as elsewhere:
        await merge_replica(elsewhere, tmp_path / "dev0.db")  # its log went there
    async with await SITE.open(tmp_path / "here.db") as here:
        with pytest.raises(ConfigError, match="up to entry 3"):
            await check_not_behind(here, merged_path(tmp_path / "dev0.db"), Author.device(0))
        # Another device's merged file says nothing about device 0's chain.
        await check_not_behind(here, merged_path(tmp_path / "dev0.db"), Author.device(1))
        await check_not_behind(here, tmp_path / "no-such.db.merged", Author.device(0))


async def test_a_file_whose_chain_conflicts_with_the_stores_is_counted_apart_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Device 1's key signed two chains (two files): the second file's entry at
    sequence 1 is an equivocation, not "stored"; the operator is told which."""
    await written(tmp_path / "dev1.db", 1, 2)
    async with await SITE.open(tmp_path / "fork.db", "fork") as fork:  # another reading at 1
        writer = LogWriter(fork, SITE.device(1), Author.device(1))
        await writer.append(MeterReading(T0_MS, 900, 99, 100), period=1, timestamp_ms=T0_MS)
    async with await SITE.open(tmp_path / "site.gateway.db", "site") as shared:
        first = await merge_replica(shared, tmp_path / "dev1.db")
        assert (first.stored, first.equivocations) == (2, 0)
        caplog.clear()
        with caplog.at_level("WARNING"):
            second = await merge_replica(shared, tmp_path / "fork.db")
        assert (second.stored, second.equivocations) == (0, 1)
        merge_log = "p2pgrid.replication.merge"
        [warning] = [r.getMessage() for r in caplog.records if r.name == merge_log]
        assert "device 1 signed another entry at sequence 1" in warning
        assert shared.heads()[Author.device(1)].seq == 2  # nothing else changed
