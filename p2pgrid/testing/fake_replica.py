"""A replica without a network, for unit tests of a device agent.

:class:`LocalReplica` implements :class:`p2pgrid.agent.ports.LogReplica` over one real
:class:`~p2pgrid.ledger.LogStore`: :meth:`~LocalReplica.publish` and
:meth:`~LocalReplica.push` record what the agent announced (nothing leaves the process;
a test that wants peers to see it ingests it into their stores),
:meth:`~LocalReplica.wait_until` waits for the store to change. ``before_wait`` runs
each time the agent starts waiting: there a test plays the rest of the site (the utility
writes the invoice the agent waits for, as replication would deliver it). ``waits``
counts the waits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from p2pgrid.ledger import Entry, LedgerError, LogStore


class LocalReplica:
    def __init__(self, store: LogStore) -> None:
        self.store = store
        self.published: list[Entry] = []
        self.pushed: list[Entry] = []
        self.before_wait: Callable[[], Awaitable[None]] | None = None
        self.waits = 0

    async def publish(self, entries: Sequence[Entry]) -> None:
        self.published.extend(entries)

    async def push(self, entries: Sequence[Entry], peers: Sequence[str] | None = None) -> int:
        self.pushed.extend(entries)
        return 0  # nobody to push to

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        self.waits += 1
        if self.before_wait is not None:
            await self.before_wait()
        digest = self.store.digest()
        while not predicate():
            changed = await self.store.wait_changed(digest)
            if changed == digest:  # the store closed
                raise LedgerError(f"[{self.store.name}] closed while waited on")
            digest = changed
