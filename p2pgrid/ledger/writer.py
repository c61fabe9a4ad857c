"""Writing one's own entries: the next sequence number and link come from the store.

An agent writes only through its :class:`LogWriter`, one at a time, and the
entry is stored, synced to disk (``synchronous=FULL``, see
:mod:`p2pgrid.ledger.store`, "Durability"), before :meth:`LogWriter.append`
returns, so before it is published or counted; so a restarted agent, even
after a power cut, continues its chain from what it stored and never signs two
entries with the same sequence number.

What it stored is not all its chain when its log file is older than its last
entry (restored from a backup, lost, emptied): its peers hold the rest. A
writer given ``before_first`` awaits it before its first entry, under the
writer's lock: a node's replica takes the author's chain back from its peers
there (:meth:`p2pgrid.replication.NetReplica.take_own_chain`), and the entry
then continues that chain. Until it returns, no entry is signed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from p2pgrid.identity import Signer
from p2pgrid.ledger.bodies import Body
from p2pgrid.ledger.entry import Author, Entry, sign_entry
from p2pgrid.ledger.errors import LedgerError
from p2pgrid.ledger.outcome import Outcome
from p2pgrid.ledger.periods import period_allowed
from p2pgrid.ledger.store import LogStore


class LogWriter:
    """Signs and stores the entries of one author."""

    def __init__(
        self,
        store: LogStore,
        signer: Signer,
        author: Author,
        *,
        before_first: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``before_first``: awaited before the first entry this writer signs (again
        at the next append if it raised)."""
        if store.membership.pubkey(author) != signer.pubkey:
            raise LedgerError(f"the signer's key is not {author}'s key in this site")
        self.store = store
        self.signer = signer
        self.author = author
        self._lock = asyncio.Lock()
        self._before_first = before_first

    async def append(self, body: Body, *, period: int, timestamp_ms: int) -> Entry:
        """Sign ``body`` as the author's next entry and store it.

        ``period`` is the period of what the entry records (of the obligation,
        for a payment), not of the wall clock. A timestamp earlier than the
        previous entry's is raised to it (the chain is ordered; a clock that
        stepped back must not break it). A period earlier than the previous
        entry's is a :class:`LedgerError`, except for the kinds that settle an
        older obligation (:data:`p2pgrid.ledger.periods.OBLIGATION_KINDS`).
        """
        async with self._lock:
            if self._before_first is not None:
                await self._before_first()
                self._before_first = None
            seq, prev, min_ts, min_period = self.store.next_position(self.author)
            if not period_allowed(body.KIND, period, min_period):
                raise LedgerError(f"{self.author} already wrote in period {min_period} > {period}")
            entry = sign_entry(
                self.signer,
                self.store.membership.site_hash,
                author=self.author,
                seq=seq,
                prev=prev,
                period=period,
                timestamp_ms=max(timestamp_ms, min_ts),
                body=body,
            )
            report = await self.store.ingest(entry.raw, durable=True)  # before anyone reads it
            result = report.results[0]
            if result.outcome is not Outcome.STORED:
                raise LedgerError(f"own entry {entry} not stored: {result.outcome} {result.reason}")
            return entry
