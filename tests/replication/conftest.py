"""Fixtures of the replication tests: the ledger tests' deterministic site."""

from __future__ import annotations

import pytest

from tests.ledger.ledger_factory import Site


@pytest.fixture(scope="session")
def site() -> Site:
    return Site.make()
