"""One writer process per log file (:mod:`p2pgrid.ledger.store_lock`): a second
holder, in another process or through another open file in this one, is refused
at once with a ConfigError that names the log file and the holder's pid; the lock
goes when its holder ends, however it ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgrid.errors import ConfigError
from p2pgrid.ledger import StoreInUse, lock_path, lock_store
from p2pgrid.service import EXIT_CONFIG, exit_code

#: Holds the lock of the file argv[1] until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from p2pgrid.ledger import lock_store
with lock_store(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_open_in_this_process_is_refused_and_the_lock_goes_with_its_holder(
    tmp_path: Path,
) -> None:
    db = tmp_path / "fridge.db"
    with lock_store(db) as held:
        assert held == lock_path(db) == tmp_path / "fridge.db.lock"
        assert held.read_text() == f"{os.getpid()}\n"
        with pytest.raises(StoreInUse) as refused, lock_store(db):
            pytest.fail("locked twice")
        assert isinstance(refused.value, ConfigError)
        assert str(refused.value).startswith(f"{db}: in use by this process")
        assert str(held) in str(refused.value)
        assert exit_code(refused.value) == (EXIT_CONFIG, f"error: {refused.value}")
    assert not db.exists()  # the lock never makes the log file
    with lock_store(db):  # released: the next holder gets it
        pass


def test_another_process_holding_the_lock_is_named(tmp_path: Path) -> None:
    db = tmp_path / "store-1.gateway.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as holder:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        by_holder = rf"in use by another process \(pid {holder.pid}\)"
        with pytest.raises(StoreInUse, match=by_holder), lock_store(db):
            pytest.fail("locked while another process holds it")
        assert lock_path(db).read_text() == f"{holder.pid}\n"  # the refusal changed nothing
        holder.kill()  # no clean exit: the kernel releases the lock all the same
    with lock_store(db):
        assert lock_path(db).read_text() == f"{os.getpid()}\n"
