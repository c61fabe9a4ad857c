"""What an SQLite connection committed, and with which ``synchronous`` level.

A :class:`CommitTrace` hears every statement the connection runs (SQLite's
trace, with the parameters bound) and splits them into transactions: each
:class:`Commit` holds the statements between ``BEGIN`` and ``COMMIT`` (or,
for a connection that lets Python's sqlite3 open its transactions, between
two commits) and the level the last ``PRAGMA synchronous`` before it set.
SQLite refuses a pragma inside a transaction (an error to the caller, not
traced); :meth:`CommitTrace.levels` fails the test should one ever run there.
Events of several traces (and of the test) can share one :class:`Timeline`, to
check their order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import aiosqlite

_PRAGMA = "PRAGMA SYNCHRONOUS="


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    level: str  # FULL or NORMAL: the connection's synchronous when it committed
    statements: tuple[str, ...]

    def inserts(self, table: str, key: bytes) -> bool:
        """Whether the transaction inserts into ``table`` a row whose first
        column is ``key`` (a blob: a log entry's id)."""
        start = f"INSERT INTO {table} VALUES (x'{key.hex()}'".lower()
        return any(s.lower().startswith(start) for s in self.statements)

    def writes(self, text: str) -> bool:
        return any(text in s for s in self.statements)


@dataclasses.dataclass
class Timeline:
    """Events in the order they happened: ``(source, what)``."""

    events: list[tuple[str, object]] = dataclasses.field(default_factory=list)

    def add(self, source: str, what: object) -> None:
        self.events.append((source, what))

    def index(self, source: str, matches: Callable[[object], bool]) -> int:
        """The position of the first event of ``source`` for which ``matches(what)``."""
        for i, (src, what) in enumerate(self.events):
            if src == source and matches(what):
                return i
        raise AssertionError(f"no event of {source} matches; events: {self.events}")


class CommitTrace:
    """The transactions of one connection since :meth:`attach`."""

    def __init__(self, level: str, *, source: str = "", timeline: Timeline | None = None) -> None:
        """``level``: the connection's ``synchronous`` when the trace starts."""
        self.level = level
        self.source = source
        self.timeline = timeline
        self.commits: list[Commit] = []
        self._open: list[str] = []
        self.pragma_in_transaction: list[str] = []

    async def attach(self, conn: aiosqlite.Connection) -> CommitTrace:
        await conn.set_trace_callback(self._statement)
        return self

    def _statement(self, sql: str) -> None:  # on the connection's thread
        text = sql.strip()
        if text.upper().startswith(_PRAGMA):
            if self._open:
                self.pragma_in_transaction.append(text)
            self.level = text[len(_PRAGMA) :].strip().upper()
        elif text.upper().startswith("BEGIN"):
            self._open = []
        elif text.upper() == "COMMIT":
            commit = Commit(self.level, tuple(self._open))
            self.commits.append(commit)
            self._open = []
            if self.timeline is not None:
                self.timeline.add(self.source, commit)
        elif text.upper().startswith(("INSERT", "UPDATE", "DELETE")):
            self._open.append(text)

    def levels(self) -> list[str]:
        assert not self.pragma_in_transaction, self.pragma_in_transaction
        return [c.level for c in self.commits]
