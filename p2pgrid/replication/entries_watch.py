"""A running node's watch on the owner's entries file: new owner entries, live.

The owner signs enrolments, allocations and revocations into the site's
entries file (:mod:`p2pgrid.ledger.owner_file`) and copies it to the hosts.
An :class:`EntriesWatch` lets a running agent or utility take them without a
restart: it looks at the file's size, modification time and inode every
``interval_s`` (and at once when :meth:`EntriesWatch.poke` is called: the
process's SIGHUP), and when they changed it reads the file whole, ingests its
entries into the node's store through the same verified ingest as replicated
entries (:meth:`p2pgrid.ledger.LogStore.ingest_many`: signatures, the owner's
key, membership rules), and announces those that were new on the log topic, so
replication spreads them to the rest of the site.

What it promises:

- A file that is not the owner's whole signed chain (a half-copied file, a
  line an attacker edited, entries of another site) is one WARNING naming the
  file and the problem, and nothing of it is ingested; the node runs on. The
  same unchanged file is not reported again (a SIGHUP reads it again).
- Entries the store already holds are no-ops; a file with nothing new logs
  nothing.
- An entry the store refuses (an owner who signed two different entries at one
  seq, say) is one WARNING naming the file, the entry and the reason.
- A revocation joins the store's roster as it is ingested: the revoked
  device's later entries are refused from then on, here and on every replica
  it reaches.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from p2pgrid.errors import ConfigError
from p2pgrid.ledger import Entry, LogStore, Outcome, OwnerFileError, read_owner_file

log = logging.getLogger(__name__)

#: How often a running node looks whether its entries file changed.
ENTRIES_CHECK_S = 2.0


class Announcer(Protocol):
    """Where the new entries are announced (a :class:`~p2pgrid.replication.NetReplica`)."""

    async def publish(self, entries: Sequence[Entry]) -> None: ...


@dataclasses.dataclass(frozen=True)
class Reload:
    """What one read of the entries file did."""

    path: Path
    #: Entries that joined the store (and were announced).
    new: tuple[Entry, ...] = ()
    #: Entries of the file the store refused, with the outcome's reason.
    refused: tuple[tuple[Entry, str], ...] = ()
    #: Why nothing of the file was taken (None: it was read whole).
    problem: str | None = None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class EntriesWatch:
    """Re-reads one entries file into one store while the node runs (see the module)."""

    def __init__(
        self,
        store: LogStore,
        announcer: Announcer,
        path: Path,
        *,
        interval_s: float = ENTRIES_CHECK_S,
    ) -> None:
        if interval_s <= 0:
            raise ConfigError(f"[{store.name}] entries check interval must be > 0: {interval_s}")
        self.store = store
        self.announcer = announcer
        self.path = path
        self.interval_s = interval_s
        self._read = False  # not read yet: the first check reads whatever the stamp
        self._seen: tuple[int, int, int] | None = None  # the stamp at the last read (None: absent)
        self._poked = asyncio.Event()
        self._lock = asyncio.Lock()  # one read at a time: the loop and direct calls
        self._runner: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.store.name

    async def start(self) -> None:
        """Read the file once (what changed since the node's setup read it), then
        watch it; returns once watching."""
        if self._runner is not None:
            raise RuntimeError(f"[{self.name}] entries watch already started")
        await self.check()
        self._runner = asyncio.create_task(self._run(), name=f"entries-{self.name}")

    async def stop(self) -> None:
        """Stop watching (a read in flight finishes its batch first). Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    def poke(self) -> None:
        """Read the file now, even if it looks unchanged (SIGHUP)."""
        self._poked.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._poked.wait()
            force = self._poked.is_set()
            self._poked.clear()
            await self.check(force=force)

    async def check(self, *, force: bool = False) -> Reload | None:
        """Read the file if it changed since the last read (or ``force``) and
        ingest what is new; None if it was not read."""
        async with self._lock:
            stamp = _stamp(self.path)
            if self._read and stamp == self._seen and not force:
                return None
            self._read, self._seen = True, stamp
            return await self._reload()

    async def _reload(self) -> Reload:
        try:
            entries = read_owner_file(self.path, self.store.membership.site)
        except OwnerFileError as exc:
            log.warning("[%s] entries file not taken, nothing changed: %s", self.name, exc)
            return Reload(self.path, problem=str(exc))
        report = await self.store.ingest_many([e.raw for e in entries])
        refused = tuple(
            (entry, str(result.reason or result.outcome))
            for entry, result in zip(entries, report.results, strict=True)
            if result.outcome not in (Outcome.STORED, Outcome.DUPLICATE)
        )
        if refused:
            log.warning(
                "[%s] entries file %s: %d entries refused: %s",
                self.name,
                self.path,
                len(refused),
                ", ".join(f"{entry} ({why})" for entry, why in refused),
            )
        new = report.appended
        if new:
            kinds = collections.Counter(e.kind.name.lower() for e in new)
            log.info(
                "[%s] entries file %s: %d new owner entries (%s): ingested, announcing",
                self.name,
                self.path,
                len(new),
                ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())),
            )
            await self.announcer.publish(new)
        return Reload(self.path, new=new, refused=refused)
