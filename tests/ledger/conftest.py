"""Fixtures of the ledger tests: one deterministic site, stores on tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.ledger import LogStore
from tests.ledger.ledger_factory import OpenStore, Site


@pytest.fixture(scope="session")
def site() -> Site:
    return Site.make()


@pytest.fixture
async def open_store(site: Site, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Open stores named ``name`` under tmp_path; all are closed after the test."""
    stores: list[LogStore] = []

    async def opener(name: str) -> LogStore:
        store = await site.open(tmp_path / f"{name}.sqlite", name)
        stores.append(store)
        return store

    yield opener
    for store in stores:
        await store.close()
