"""A pytest plugin: a session that leaves an aiosqlite connection open fails loudly
instead of hanging at exit.

aiosqlite runs each connection on a worker thread of its own that is not a daemon
thread and ends only when the connection is closed. A store that a test leaves
open (a missing ``close``, or a store kept alive by a failed test's traceback)
keeps the interpreter from exiting after the last test: pytest hangs there, where
pytest-timeout no longer watches.

The plugin notes, for each test, the worker threads that started while it ran
(its setup, call and teardown). When the session finishes, every fixture is torn
down, so a worker still alive is a connection left open: the plugin names it (its
database file, who held it and the test it was opened in), closes it, and makes
the session fail. ``tests/conftest.py`` loads it; ``tests/test_open_stores.py``
shows a session with a connection left open end with exit status 1 and the name.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import sys
import threading
from collections.abc import Generator

import aiosqlite
import pytest

#: aiosqlite 0.22 starts each connection's thread on ``_connection_worker_thread``;
#: Python names an unnamed thread after its target: "Thread-7 (<target>)".
WORKER_SUFFIX = "(_connection_worker_thread)"
#: How long closing a connection left open may take before it is only told to stop.
CLOSE_TIMEOUT_S = 10.0


def open_workers() -> set[threading.Thread]:
    """The aiosqlite worker threads alive now (one per open connection)."""
    return {t for t in threading.enumerate() if t.name.endswith(WORKER_SUFFIX)}


def _holders(conn: aiosqlite.Connection) -> list[str]:
    """Who holds ``conn`` as an attribute (a ``LogStore`` 'a', an ``IntentBook`` ...)."""
    found = []
    for ref in gc.get_referrers(conn):
        if not isinstance(ref, dict):
            continue
        for owner in gc.get_referrers(ref):
            if getattr(owner, "__dict__", None) is ref:
                name = getattr(owner, "name", None)
                found.append(type(owner).__name__ + (f" {name!r}" if name else ""))
    return found


async def _close(conn: aiosqlite.Connection) -> str:
    """Close ``conn``; return the database file(s) it had open."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            rows = await conn.execute_fetchall("PRAGMA database_list")
            await conn.close()
    except (TimeoutError, sqlite3.Error, ValueError) as exc:
        conn.stop()  # at least its thread ends once its queue is done
        return f"a database not read back ({exc!r})"
    return ", ".join(str(row[2]) for row in rows if row[2]) or "an in-memory database"


class OpenStores:
    """Tracks aiosqlite worker threads per test; fails the session on one left open."""

    def __init__(self) -> None:
        self.opened_in: dict[threading.Thread, str] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        before = open_workers()
        try:
            return (yield)
        finally:
            for thread in open_workers() - before:
                self.opened_in.setdefault(thread, item.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        left = open_workers()
        if not left:
            return
        conns = [
            obj
            for obj in gc.get_objects()
            if isinstance(obj, aiosqlite.Connection) and obj._thread in left
        ]
        lines = [f"{len(left)} aiosqlite connection(s) left open after the last test:"]
        for conn in conns:
            holders = ", ".join(_holders(conn)) or "no object (a bare connection)"
            opened_in = self.opened_in.get(conn._thread, "outside any test")
            database = asyncio.run(_close(conn))
            lines.append(f"  {database}: held by {holders}; opened in {opened_in}; closed now")
        if len(conns) < len(left):
            lines.append(f"  {len(left) - len(conns)} more whose connection was not found")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")  # after the progress line of the last test
        for line in lines:
            if reporter is not None:
                reporter.write_line(line, red=True, bold=True)
            else:
                print(line, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(OpenStores(), "p2pgrid-open-stores")
