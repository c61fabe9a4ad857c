"""New owner entries reach a running site without a restart, over REAL nodes.

Two nodes, each opened the way ``agent run`` opens one
(:func:`p2pgrid.replication.open_node_parts`: a SQLite log, a py-libp2p host on
127.0.0.1, a replica, and the watch on its own copy of the owner's entries
file). The owner then signs a new enrolment, its description and a period's
allocations into node A's file only (with the owner's own code,
:func:`p2pgrid.config.append_owner_entries`): A takes them while running and
replication brings them to B, whose file never changed. The new device may
write at once; the owner revokes it the same way, and from then on both nodes
refuse its later entries. Waits are on the replicas' events under deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
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
    MeterReading,
    Outcome,
    RejectReason,
    Revoke,
    Role,
    read_owner_file,
    sign_entry,
)
from p2pgrid.ledger.entry import GENESIS_PREV
from p2pgrid.net import DeviceKey, NetConfig, TrioBridge
from p2pgrid.replication import NodeParts, NodeSpec, ReplicaConfig, open_node_parts

pytestmark = pytest.mark.slow

#: Deadline for the two hosts to see each other on the log topic.
JOIN_S = 20.0
#: Deadline for an owner entry written to A's file to be in B's replica.
REACH_S = 30.0
T0_MS = 1_800_000_000_000


async def _open(
    parts: contextlib.AsyncExitStack,
    bridge: TrioBridge,
    tmp_path: Path,
    name: str,
    index: int,
    signer: Signer,
    site: SiteIdentity,
    entries: Path,
    bootstrap: tuple[str, ...] = (),
) -> NodeParts:
    return await open_node_parts(
        parts,
        NodeSpec(
            name=name,
            db_path=tmp_path / f"{name}.db",
            site=site,
            net=NetConfig(bootstrap=bootstrap),
            key=DeviceKey(site, index, signer),
            replica=ReplicaConfig(anti_entropy_interval_s=1.0, seed=index),
            provision=[e.raw for e in read_owner_file(entries, site)],
            bridge=bridge,
            entries_file=entries,
            entries_check_s=0.2,
        ),
    )


async def test_owner_entries_written_to_one_nodes_file_reach_the_other_node(
    bridge: TrioBridge, tmp_path: Path
) -> None:
    owner = Signer.generate()
    site = SiteIdentity(owner.pubkey)
    devices = {i: Signer.generate() for i in range(3)}

    def enrol(index: int) -> list[tuple[int, Body]]:
        return [
            (0, Enrol(Role.DEVICE, index, devices[index].pubkey, "fridge", 0)),
            (0, DeviceInfo(index, "fridge", f"s1-dev{index}")),
        ]

    a_file, b_file = tmp_path / "a" / "site.entries", tmp_path / "b" / "site.entries"
    append_owner_entries(a_file, owner, [*enrol(0), *enrol(1)], create=True)
    b_file.parent.mkdir()
    shutil.copy(a_file, b_file)
    b_before = b_file.read_bytes()

    async with contextlib.AsyncExitStack() as parts:
        a = await _open(parts, bridge, tmp_path, "node-a", 0, devices[0], site, a_file)
        b = await _open(
            parts, bridge, tmp_path, "node-b", 1, devices[1], site, b_file, a.host.addrs
        )
        await a.host.wait_for_peer(b.host.peer_id, a.replica.topic, timeout_s=JOIN_S)
        await b.host.wait_for_peer(a.host.peer_id, b.replica.topic, timeout_s=JOIN_S)

        # The owner enrols device 2 and allocates period 1, in A's file only.
        added = append_owner_entries(
            a_file,
            owner,
            [*enrol(2), *((1, Allocation(i, 10_000)) for i in range(3))],
        )
        last = added[-1].seq

        def owner_head_is(store_seq: int) -> bool:
            heads = b.store.heads()
            return Author.owner() in heads and heads[Author.owner()].seq >= store_seq

        async with asyncio.timeout(REACH_S):
            await b.replica.wait_until(lambda: owner_head_is(last))
        held = {e.id for e in await b.store.entries()}
        assert {e.id for e in added} <= held
        assert b.store.roster.member(Role.DEVICE, 2) is not None
        assert b_file.read_bytes() == b_before  # B learnt it by replication alone

        # The new member may write at once: its first reading is taken by B...
        first, second = _readings(devices[2], site)
        [taken] = (await b.store.ingest_many([first.raw])).results
        assert taken.outcome is Outcome.STORED

        # ...until the owner revokes it after that reading, again in A's file.
        [revoke] = append_owner_entries(a_file, owner, [(0, Revoke(Role.DEVICE, 2, 1, "stolen"))])
        async with asyncio.timeout(REACH_S):
            await b.replica.wait_until(lambda: owner_head_is(revoke.seq))
        member = b.store.roster.member(Role.DEVICE, 2)
        assert member is not None
        assert member.last_seq == 1
        for node in (a, b):
            [refused] = (await node.store.ingest_many([second.raw])).results
            assert refused.reason is RejectReason.REVOKED, node.store.name


def _readings(signer: Signer, site: SiteIdentity) -> tuple[Entry, Entry]:
    """Device 2's first two readings (seq 1 and 2)."""
    entries = []
    prev = GENESIS_PREV
    for seq in (1, 2):
        ts = T0_MS + seq * 900_000
        entry = sign_entry(
            signer,
            site.site_hash,
            author=Author.device(2),
            seq=seq,
            prev=prev,
            period=0,
            timestamp_ms=ts,
            body=MeterReading(ts, 900, 100, 25_000),
        )
        entries.append(entry)
        prev = entry.id
    return entries[0], entries[1]
