"""Merging older replica files into a store: how the devices of a site gateway
move from a replica file each to their site's one store (docs/operations.md,
"Files on disk").

:func:`merge_replica` ingests every entry of the replica file at a path into a
store, each verified as a peer's entry is (signature, membership, role, chain,
the log's rules): a merge adds only what the file's log holds and the store does
not, so merging twice, or a file whose entries the store already holds, changes
nothing. Once merged, the file (and its SQLite sidecars) is renamed
``<file>.merged``: never merged nor run from again, kept for the operator. An
entry refused (another site's file, a corrupt one) refuses the merge with a
:class:`~p2pgrid.errors.ConfigError` naming the file and the reasons; the file
stays as it was, and the store holds only entries that passed every check, as
after any peer's batch. :func:`retire_replica` renames a merged file, for a
caller that merges several and renames them only once all passed. An entry of
the file that conflicts with the store's chain of its author (an equivocation,
two entries at one sequence number) is kept as the log keeps any (evidence, its
author flagged), logged as a warning naming the author and the sequence, and
counted apart (:attr:`Merged.equivocations`), not as stored.

:func:`check_not_behind` refuses a store that holds less of a device's own
entries than the device's merged file did: the device's log went into another
store (another gateway's), and writing from this one would sign a second entry
for a sequence number it already used (an equivocation).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

from p2pgrid.errors import ConfigError
from p2pgrid.ledger import Author, LogStore, decode_entry
from p2pgrid.ledger.errors import CorruptLogError
from p2pgrid.ledger.outcome import Outcome

log = logging.getLogger(__name__)

#: What a merged replica file is renamed to: ``<file><MERGED_SUFFIX>``.
MERGED_SUFFIX = ".merged"
#: SQLite's files beside a database in WAL mode, renamed with it.
SIDECARS = ("-wal", "-shm")


@dataclasses.dataclass(frozen=True)
class Merged:
    """What one merge did."""

    path: Path  # the file as it was named (now ``<path>.merged``)
    entries: int  # in the file's log
    stored: int  # joined the store (the others it held already), equivocations apart
    #: Entries that conflict with the store's chain of their author (a second
    #: entry at one sequence number): kept as evidence, their author flagged.
    equivocations: int = 0


def merged_path(path: Path) -> Path:
    """Where the replica file at ``path`` is once merged."""
    return path.with_name(path.name + MERGED_SUFFIX)


async def merge_replica(store: LogStore, path: Path, *, retire: bool = True) -> Merged:
    """Ingest the log of the replica file at ``path`` into ``store``, verified, and
    rename the file ``<path>.merged`` (see the module's contract); with ``retire``
    false the caller renames it (:func:`retire_replica`) once all its checks passed."""
    try:
        old = await LogStore.open(path, store.membership.site, name=f"merge:{path.name}")
    except CorruptLogError as exc:  # a replica of another site
        raise ConfigError(f"{path}: cannot merge this replica file: {exc}") from exc
    async with old:
        raws = await old.export()
    report = await store.ingest_many(raws)
    refused = sorted({r.reason.value for r in report.results if r.reason is not None})
    if refused:
        raise ConfigError(
            f"{path}: merging this replica file into {store.name} refused "
            f"{sum(r.reason is not None for r in report.results)} of {len(raws)} entries "
            f"({', '.join(refused)}); nothing was renamed: check the file with "
            "`p2pgrid log verify`, or move it away to start this device from its peers"
        )
    stored = sum(r.outcome is Outcome.STORED for r in report.results)
    forks = [
        decode_entry(raw, store.membership.site_hash)
        for raw, result in zip(raws, report.results, strict=True)
        if result.outcome is Outcome.EQUIVOCATION
    ]
    for fork in forks:
        log.warning(
            "[%s] %s: %s %d signed another entry at sequence %d than this store holds "
            "(an equivocation: kept as evidence, the author flagged)",
            store.name,
            path,
            fork.author.role.name.lower(),
            fork.author.index,
            fork.seq,
        )
    if retire:
        await retire_replica(path)
    return Merged(path, len(raws), stored, len(forks))


async def retire_replica(path: Path) -> None:
    """Rename the merged replica file at ``path`` (and its sidecars) ``.merged``."""
    await asyncio.to_thread(_rename_merged, path)


def remove_replica(path: Path) -> None:
    """Delete the replica file at ``path`` and its sidecars (a store just made, refused)."""
    for suffix in ("", *SIDECARS):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _rename_merged(path: Path) -> None:
    for suffix in ("", *SIDECARS):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(merged_path(part))


async def check_not_behind(store: LogStore, merged: Path, author: Author) -> None:
    """Refuse ``store`` if it holds fewer of ``author``'s entries than the merged
    replica file ``merged`` did (see the module's contract)."""
    if not await asyncio.to_thread(merged.is_file):
        return
    async with await LogStore.open(
        merged, store.membership.site, name=f"merged:{merged.name}"
    ) as old:
        then = old.heads().get(author)
    now = store.heads().get(author)
    if then is not None and (now is None or now.seq < then.seq):
        raise ConfigError(
            f"{merged}: this device's log (up to entry {then.seq} of {author}) was merged into "
            f"another store, and {store.name} holds only up to {0 if now is None else now.seq}: "
            "run the device in the gateway that holds its log (its site's `.gateway.db`), "
            "or move that file here"
        )
