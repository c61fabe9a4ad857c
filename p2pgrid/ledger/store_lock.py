"""One writer process per log file: an exclusive advisory lock held while a node uses it.

A node (an agent alone, a gateway of several devices, the utility) holds
:func:`lock_store`'s lock on each log file it opens to write (and a gateway on
each device's intents file), for as long as the store is open: an exclusive
:func:`fcntl.flock` on the sibling file ``<db>.lock``, taken without waiting.
A second process (or a second open of the file in the same process: ``flock``
belongs to the open file description) that asks for it is refused at once
with :class:`StoreInUse`, a :class:`~p2pgrid.errors.ConfigError` (exit 2) that
names the file and the process that holds it (the pid the holder wrote into
the lock file), before it has opened or changed anything.

SQLite's own locking does not serve here: it refuses a second writer only while
a transaction is open (``database is locked`` after a busy timeout), and two
processes that take turns would both sign entries for the same authors. The
lock file is left in place when the lock is released (removing it would let a
third process lock a file the second one still holds); it holds only the pid of
its last holder. The kernel releases the lock when the process ends, however it
ends, so a crash never leaves a stale lock behind. Readers (``p2pgrid log
verify``, reports) open the log without the lock: SQLite keeps their reads
consistent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from p2pgrid.ledger.errors import StoreInUse

#: The suffix of a log file's lock file (``<db>.lock``).
LOCK_SUFFIX = ".lock"


def lock_path(db: Path) -> Path:
    """The lock file of the log file ``db``."""
    return db.with_name(db.name + LOCK_SUFFIX)


@contextlib.contextmanager
def lock_store(db: Path) -> Iterator[Path]:
    """Hold the exclusive lock of the log file ``db`` (see the module's
    contract) until the block ends; :class:`StoreInUse` at once if it is held."""
    path = lock_path(db)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            raise StoreInUse(
                f"{db}: in use by {holder} (it holds {path}): one process writes "
                "this file (a device runs in one process); stop that one first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it (``pid N``), or that it is not known."""
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    if text.isdigit():
        return f"another process (pid {text})" if int(text) != os.getpid() else "this process"
    return "another process"
