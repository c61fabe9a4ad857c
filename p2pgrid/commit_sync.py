"""Which SQLite commits are on disk when they return: ``synchronous``, per transaction.

Both of an agent's SQLite files (its log, :mod:`p2pgrid.ledger.store`, and its
payment intents, :mod:`p2pgrid.agent.intents`) are in WAL mode. There a commit
survives a killed process whatever ``synchronous`` says (it is in the OS's
cache); ``synchronous`` decides what a power cut or an OS crash keeps:

- ``FULL``: the WAL is synced (fsync) at the commit, before it returns; the
  commit and every earlier one of the file are on disk then (a sync writes
  every frame appended before it).
- ``NORMAL``: no sync at the commit; the WAL is synced at the next ``FULL``
  commit or at a checkpoint. A power cut keeps a *prefix* of the commits
  (the WAL is appended in order and its frames are chained by checksums, so
  recovery stops at the first frame not written), which holds every ``FULL``
  one.

SQLite refuses to change ``synchronous`` inside a transaction, so a
:class:`CommitSync` sets it before the transaction starts, and only when it
changes (a pragma is a round trip to the connection's thread). Its owner runs
one transaction at a time on the connection (a lock) and calls
:meth:`CommitSync.before_transaction` under that lock.

What holds with ``FULL`` is what the disk promises: a disk (or a virtual
machine's) that acknowledges a flush it has not done can still lose a synced
commit.
"""

from __future__ import annotations

import aiosqlite


class CommitSync:
    """The ``synchronous`` level of one connection, switched between transactions."""

    def __init__(self, conn: aiosqlite.Connection, *, full: bool) -> None:
        """``full``: the level the connection has now (its owner set it on open)."""
        self._conn = conn
        self._full = full

    @property
    def full(self) -> bool:
        """Whether the next commit is synced (``FULL``), as last set."""
        return self._full

    async def before_transaction(self, *, full: bool) -> None:
        """Make the next commit synced (``full``) or not; call with no
        transaction open (SQLite raises inside one)."""
        if full != self._full:
            await self._conn.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            self._full = full
