"""A test that leaves an aiosqlite connection open fails the session, loudly, at
its end (``tests/open_stores.py``), where before pytest hung at exit.

Run here on a throw-away session of one such test, in a child pytest. Without the
plugin the same session never exits (checked by hand:
``timeout 60 python -m pytest -p no:cacheprovider FILE``, with FILE the test below,
ends by the timeout's exit status 124 after its "1 passed")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: A child pytest on a loaded machine: seconds to import and run one test.
CHILD_TIMEOUT_S = 120.0

LEAKY_TEST = """
import asyncio

import aiosqlite

LEFT_OPEN = []


def test_leaves_a_connection_open(tmp_path):
    async def main():
        LEFT_OPEN.append(await aiosqlite.connect(tmp_path / "left-open.sqlite"))

    asyncio.run(main())
"""


def test_a_connection_left_open_fails_the_session_by_name(tmp_path: Path) -> None:
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    args = ["-p", "tests.open_stores", "-p", "no:cacheprovider", "-q"]
    args += ["--basetemp", str(tmp_path / "basetemp"), "test_leaky.py"]
    child = subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,  # the hang this guards against fails here, not forever
        check=False,
    )
    out = child.stdout + child.stderr
    assert "1 passed" in out, out
    assert child.returncode == 1, out
    assert "1 aiosqlite connection(s) left open after the last test:" in out
    left = next(line for line in out.splitlines() if "left-open.sqlite" in line)
    assert "held by no object (a bare connection)" in left
    assert "opened in test_leaky.py::test_leaves_a_connection_open" in left
