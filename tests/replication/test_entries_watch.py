"""The entries watch of a running node (real SQLite; the announcer records).

The owner's entries file is written by the owner's own code
(:func:`p2pgrid.config.append_owner_entries`), then broken the ways a file on a
host breaks: a half-finished copy, a line an attacker edited or added, a line
of another site, a missing file. Each is one warning naming the file, and the
store is left as it was; the same entries again are no-ops; a revocation read
from the file refuses the revoked device's later entries.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from p2pgrid.config import append_owner_entries
from p2pgrid.identity import Signer, SiteIdentity
from p2pgrid.ledger import (
    Allocation,
    Author,
    Body,
    DeviceInfo,
    Enrol,
    Entry,
    LogStore,
    MeterReading,
    Outcome,
    OwnerFileError,
    RejectReason,
    Revoke,
    Role,
    parse_owner_file,
    sign_entry,
)
from p2pgrid.ledger.entry import GENESIS_PREV
from p2pgrid.replication import EntriesWatch, Reload
from p2pgrid.service import on_hangup

T0_MS = 1_800_000_000_000
#: Deadline of a test's wait for the watch's own loop.
WATCH_WAIT_S = 10.0


class Announced:
    """The announcer: records what the watch announces, wakes a waiting test."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.changed = asyncio.Event()

    async def publish(self, entries: Sequence[Entry]) -> None:
        self.entries += entries
        self.changed.set()


class Owner:
    """A site: its owner's key, devices' keys, and the owner's entries file."""

    def __init__(self, path: Path) -> None:
        self.signer = Signer.generate()
        self.site = SiteIdentity(self.signer.pubkey)
        self.path = path
        self.devices = {i: Signer.generate() for i in range(3)}
        append_owner_entries(path, self.signer, [self.enrol(0)], create=True)

    def enrol(self, index: int) -> tuple[int, Body]:
        return 0, Enrol(Role.DEVICE, index, self.devices[index].pubkey, "fridge", 0)

    def add(self, *bodies: tuple[int, Body]) -> list[Entry]:
        return append_owner_entries(self.path, self.signer, bodies)

    def device_entry(self, index: int, seq: int, prev: bytes) -> Entry:
        ts = T0_MS + seq * 900_000
        return sign_entry(
            self.devices[index],
            self.site.site_hash,
            author=Author.device(index),
            seq=seq,
            prev=prev,
            period=0,
            timestamp_ms=ts,
            body=MeterReading(ts, 900, 100, 25_000),
        )


@pytest.fixture
def owner(tmp_path: Path) -> Owner:
    return Owner(tmp_path / "site.entries")


@pytest.fixture
async def store(owner: Owner, tmp_path: Path) -> AsyncIterator[LogStore]:
    """A node's store, started from the entries file as it was."""
    store = await LogStore.open(tmp_path / "node.db", owner.site, name="node")
    await store.ingest_many(_raws(owner.path))
    yield store
    await store.close()


def _raws(path: Path) -> list[bytes]:
    return [bytes.fromhex(line) for line in path.read_text().split()]


def _watch(store: LogStore, owner: Owner, announced: Announced, **kw: float) -> EntriesWatch:
    return EntriesWatch(store, announced, owner.path, **kw)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_new_enrolment_and_allocation_join_the_store_and_are_announced(
    owner: Owner, store: LogStore
) -> None:
    announced = Announced()
    watch = _watch(store, owner, announced)
    first = await watch.check()
    assert first == Reload(owner.path)  # the file the node started from: nothing new
    added = owner.add(
        owner.enrol(1), (0, DeviceInfo(1, "fridge", "s1-hvac")), (1, Allocation(1, 5_000))
    )
    reload = await watch.check()
    assert reload is not None
    assert reload.problem is None
    assert reload.refused == ()
    assert list(reload.new) == added
    assert announced.entries == added
    assert store.roster.member(Role.DEVICE, 1) is not None
    assert store.heads()[Author.owner()].seq == len(_raws(owner.path))


async def test_entries_already_known_are_no_ops(owner: Owner, store: LogStore) -> None:
    announced = Announced()
    watch = _watch(store, owner, announced)
    owner.add(owner.enrol(1))
    assert (await watch.check()) is not None
    digest = store.digest()
    assert await watch.check() is None  # unchanged file: not read at all
    again = await watch.check(force=True)  # SIGHUP reads it anyway: nothing new
    assert again == Reload(owner.path)
    # The same entries in a fresh copy of the file (a new inode and mtime).
    copy = owner.path.with_name("copy")
    copy.write_bytes(owner.path.read_bytes())
    copy.replace(owner.path)
    assert await watch.check() == Reload(owner.path)
    assert store.digest() == digest
    assert len(announced.entries) == 1


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        # An attacker flips a byte of the signature of the last line.
        (lambda line: line[:-2] + ("00" if line[-2:] != "00" else "01"), "not signed by the site"),
        # A copy cut short in the middle of the last line.
        (lambda line: line[: len(line) // 2], "not an entry of this site"),
        # Not hex at all.
        (lambda line: "hello owner", "not an entry of this site"),
    ],
    ids=["forged-signature", "half-written", "garbage"],
)
async def test_a_damaged_file_is_one_warning_and_changes_nothing(
    owner: Owner,
    store: LogStore,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[str], str],
    problem: str,
) -> None:
    announced = Announced()
    watch = _watch(store, owner, announced)
    owner.add(owner.enrol(1), (1, Allocation(1, 5_000)))
    lines = owner.path.read_text().splitlines()
    good = "\n".join(lines) + "\n"
    lines[-1] = damage(lines[-1])
    owner.path.write_text("\n".join(lines) + "\n")
    digest = store.digest()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="p2pgrid"):
        reload = await watch.check()
        assert await watch.check() is None  # the same bad file is not reported again
    assert reload is not None
    assert reload.new == ()
    assert reload.problem is not None
    assert problem in reload.problem
    # The enrolment on the line before the damaged one is not taken either.
    assert store.digest() == digest
    assert store.roster.member(Role.DEVICE, 1) is None
    assert announced.entries == []
    [warning] = _warnings(caplog)
    assert str(owner.path) in warning
    assert problem in warning
    # The copy finishes: the whole file is taken.
    owner.path.write_text(good)
    reload = await watch.check()
    assert reload is not None
    assert len(reload.new) == 2
    assert reload.problem is None


async def test_an_entry_signed_by_another_key_or_not_the_owners_is_refused(
    owner: Owner, store: LogStore
) -> None:
    announced = Announced()
    watch = _watch(store, owner, announced)
    [last] = parse_owner_file(owner.path.read_text(), owner.site, source=owner.path)
    intruder = Signer.generate()  # signs as the owner, with its own key
    forged = sign_entry(
        intruder,
        owner.site.site_hash,
        author=Author.owner(),
        seq=last.seq + 1,
        prev=last.id,
        period=0,
        timestamp_ms=last.timestamp_ms + 1,
        body=Enrol(Role.DEVICE, 2, intruder.pubkey, "fridge", 0),
    )
    device_line = owner.device_entry(0, 1, GENESIS_PREV)  # a device's entry in the file
    for extra, problem in (
        (forged, "not signed by the site's owner"),
        (device_line, "not the site owner's"),
    ):
        owner.path.write_text(f"{last.raw.hex()}\n{extra.raw.hex()}\n")
        reload = await watch.check()
        assert reload is not None
        assert reload.problem is not None
        assert problem in reload.problem
    assert store.roster.member(Role.DEVICE, 2) is None
    assert announced.entries == []


def test_lines_out_of_chain_order_or_of_another_site_are_refused(owner: Owner) -> None:
    owner.add(owner.enrol(1), owner.enrol(2))
    lines = owner.path.read_text().splitlines()
    swapped = "\n".join([lines[0], lines[2], lines[1]])
    with pytest.raises(OwnerFileError, match=r":2: .* does not follow the line before"):
        parse_owner_file(swapped, owner.site, source=owner.path)
    with pytest.raises(OwnerFileError, match=r":1: .* does not follow"):
        parse_owner_file(lines[1], owner.site, source=owner.path)  # not from seq 1
    other = SiteIdentity(Signer.generate().pubkey)
    with pytest.raises(OwnerFileError, match=r":1: .* not signed by the site's owner"):
        parse_owner_file(lines[0], other, source=owner.path)  # signed for another site


async def test_a_missing_file_is_one_warning_and_the_node_runs_on(
    owner: Owner, store: LogStore, caplog: pytest.LogCaptureFixture
) -> None:
    watch = _watch(store, owner, Announced())
    owner.path.unlink()
    with caplog.at_level(logging.INFO, logger="p2pgrid"):
        reload = await watch.check()
    assert reload is not None
    assert reload.problem is not None
    assert "cannot read" in reload.problem
    assert [w for w in _warnings(caplog) if str(owner.path) in w] == _warnings(caplog) != []


async def test_a_revocation_refuses_the_devices_later_entries(
    owner: Owner, store: LogStore
) -> None:
    watch = _watch(store, owner, Announced())
    first = owner.device_entry(0, 1, GENESIS_PREV)
    second = owner.device_entry(0, 2, first.id)
    third = owner.device_entry(0, 3, second.id)
    report = await store.ingest_many([first.raw, second.raw])
    assert [r.outcome for r in report.results] == [Outcome.STORED, Outcome.STORED]
    owner.add((0, Revoke(Role.DEVICE, 0, 1, "stolen")))
    reload = await watch.check()
    assert reload is not None
    assert [e.kind.name for e in reload.new] == ["REVOKE"]
    ids = {e.id for e in await store.entries()}
    assert first.id in ids
    assert second.id not in ids
    [result] = (await store.ingest_many([third.raw])).results
    assert result.reason is RejectReason.REVOKED


async def test_the_running_watch_reads_a_changed_file_by_itself(
    owner: Owner, store: LogStore
) -> None:
    announced = Announced()
    watch = _watch(store, owner, announced, interval_s=0.05)
    await watch.start()
    try:
        added = owner.add(owner.enrol(1))
        await _announced(announced, added)
    finally:
        await watch.stop()
        await watch.stop()  # twice is fine


async def test_sighup_makes_the_running_watch_read_at_once(owner: Owner, store: LogStore) -> None:
    announced = Announced()
    # Its own look is an hour away: only the signal can make it read now.
    watch = _watch(store, owner, announced, interval_s=3600.0)
    await watch.start()
    try:
        added = owner.add(owner.enrol(1), (1, Allocation(1, 7_000)))
        with on_hangup(watch.poke):
            os.kill(os.getpid(), signal.SIGHUP)
            await _announced(announced, added)
    finally:
        await watch.stop()


async def _announced(announced: Announced, entries: list[Entry]) -> None:
    async with asyncio.timeout(WATCH_WAIT_S):
        while announced.entries != entries:
            await announced.changed.wait()
            announced.changed.clear()
