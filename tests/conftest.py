"""Session-wide test set-up. Real daemons come from ``tests/regtest/conftest.py``."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator

import pytest

# bitcoinlib 0.7 warns at import time (SQLAlchemy 2.0 deprecations, a config file
# it opens without closing). Tests turn warnings into errors, so import it once
# here with those warnings silenced; warnings from our own code stay errors.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import bitcoinlib.keys  # noqa: F401

# After bitcoinlib's silenced import (p2pgrid.net imports it too).
from p2pgrid.net import TrioBridge

#: A store left open fails the session by name instead of hanging pytest at exit.
pytest_plugins = ("tests.open_stores",)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Options of the fault suite (``tests/faults``): here, because pytest reads
    options only from the conftest files it loads first."""
    group = parser.getgroup("faults", "the fault suite (tests/faults)")
    group.addoption(
        "--trials", type=int, default=3, help="fault trials to run (default 3: the short run)"
    )
    group.addoption(
        "--partition-trials",
        type=int,
        default=1,
        help="partitions judged against an uncut run (default 1: the short run)",
    )
    group.addoption(
        "--fault-seed",
        default="100",
        help="seed of faults, victims and moments (default 100, so that the test command "
        "is reproducible; 'random' draws one and prints it)",
    )
    group.addoption(
        "--fault-report", default=None, help="write the trials' figures to this JSON file"
    )


@pytest.fixture(scope="session")
async def bridge() -> AsyncIterator[TrioBridge]:
    """The session's one trio guest run (trio allows one per thread), shared by the
    net and replication tests' hosts."""
    bridge = TrioBridge()
    await bridge.start()
    yield bridge
    await bridge.stop()
