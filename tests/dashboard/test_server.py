"""The dashboard server over a real SQLite replica: the snapshot equals the
views, the event stream pushes an appended entry, and the token guards it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from p2pgrid.dashboard import Dashboard, DashboardConfig, SiteFeed
from p2pgrid.errors import ConfigError
from p2pgrid.ledger import (
    Allocation,
    Author,
    Curtailment,
    DeviceInfo,
    LogStore,
    MeterReading,
    Share,
    fold,
)
from tests.ledger.ledger_factory import T0_MS, Chain, Site

EVENT_TIMEOUT_S = 10.0
SiteStore = tuple[Site, LogStore, dict[Author, Chain]]


@pytest.fixture
async def site_store(tmp_path: Path) -> AsyncIterator[SiteStore]:
    site = Site.make(b"dashboard test")
    chains = {a: site.chain(a) for a in (Author.owner(), Author.device(0), Author.device(1))}
    owner = chains[Author.owner()]
    entries = [
        owner.next(DeviceInfo(0, "fridge", "kitchen-fridge")),
        owner.next(DeviceInfo(1, "hvac", "office-hvac")),
        owner.next(Allocation(0, 100_000)),
        owner.next(Allocation(1, 50_000)),
        chains[Author.device(0)].next(Share(1, 20_000, "help"), ts=T0_MS + 10_000),
        chains[Author.device(1)].next(MeterReading(T0_MS, 900, 200, 50_000), ts=T0_MS + 20_000),
        chains[Author.device(0)].next(Curtailment(0, T0_MS, 900, 0), ts=T0_MS + 21_000),
    ]
    store = await site.open(tmp_path / "site.db", name="replica-a")
    async with store:
        await store.ingest_many([e.raw for e in entries])
        yield site, store, chains


async def test_snapshot_equals_the_views_and_names_devices(site_store: SiteStore) -> None:
    _, store, _ = site_store
    async with Dashboard("node-a", (SiteFeed("shop", store),), DashboardConfig()) as dash:
        assert dash.url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient() as client:
            page = await client.get(dash.url)
            snap = (await client.get(dash.url.rstrip("/") + "/api/snapshot")).json()
    assert page.status_code == 200
    assert "app.js" in page.text
    view = fold(await store.entries())
    (shop,) = snap["sites"]
    rows = {d["name"]: d for d in shop["devices"]}
    assert set(rows) == {"kitchen-fridge", "office-hvac"}
    for name, index in (("kitchen-fridge", 0), ("office-hvac", 1)):
        acc = view.account(index, 1)
        assert rows[name]["left_msat"] == acc.balance_msat
        assert rows[name]["given_msat"] == acc.given_msat
        assert rows[name]["received_msat"] == acc.received_msat
    assert shop["flows"][0]["from"] == "kitchen-fridge"
    assert shop["flows"][0]["to"] == "office-hvac"
    assert shop["curtailments"][0]["name"] == "kitchen-fridge"
    assert shop["digest"] == store.digest().hex()
    assert shop["agree"] is None  # no peer heard from
    assert [f["name"] for f in shop["findings"]] == ["office-hvac"]
    assert "received shares" in shop["findings"][0]["reason"]


async def test_an_appended_entry_is_pushed_live(site_store: SiteStore) -> None:
    _, store, chains = site_store
    async with Dashboard("node-a", (SiteFeed("shop", store),), DashboardConfig()) as dash:
        base = dash.url.rstrip("/")
        async with httpx.AsyncClient() as client, client.stream("GET", base + "/events") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            snapshots = _snapshots(resp.aiter_lines())
            first = await anext(snapshots)
            assert first["sites"][0]["entries"] == len(await store.entries())
            share = chains[Author.device(0)].next(Share(1, 5_000, "more"), ts=T0_MS + 30_000)
            await store.ingest(share.raw)
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                second = await anext(snapshots)
    assert second["sites"][0]["entries"] == first["sites"][0]["entries"] + 1
    assert second["sites"][0]["flows"][0]["msat"] == 5_000


async def _snapshots(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, object]]:
    async for line in lines:
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


async def test_a_token_guards_a_dashboard_beyond_loopback(site_store: SiteStore) -> None:
    _, store, _ = site_store
    with pytest.raises(ConfigError, match="token"):
        DashboardConfig(host="0.0.0.0")
    config = DashboardConfig(host="127.0.0.1", token="s3cret-token-0123456789")
    async with Dashboard("node-a", (SiteFeed("shop", store),), config) as dash:
        base = dash.url.split("?")[0].rstrip("/")
        async with httpx.AsyncClient() as client:
            refused = await client.get(base + "/api/snapshot")
            wrong = await client.get(base + "/api/snapshot", params={"token": "nope"})
            bearer = await client.get(
                base + "/api/snapshot", headers={"Authorization": f"Bearer {config.token}"}
            )
            page = await client.get(dash.url)
    assert (refused.status_code, wrong.status_code) == (401, 401)
    assert bearer.status_code == 200
    assert page.status_code == 200
