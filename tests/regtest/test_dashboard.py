"""The dashboard in a real headless browser during a real run.

The scenario runs end to end on the shared two-site stack (``two_sites_stack``:
utility and agents as OS processes, real lnd, libp2p and SQLite); Debian's
chromium, driven by Playwright through ``executable_path`` (no browser
download), opens the utility's dashboard as soon as the run starts. While the
run goes on, every device of the scenario shows and a new entry arrives without
a reload; once the run converged, the page's numbers (left, shares, paid) equal
the views folded from the utility's replica, and a screenshot is saved (its
path is printed). The report command then reads the same run's replica: files
for every period, devices by name.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, async_playwright
from rich.console import Console

from p2pgrid.launcher import RunResult, run_deployment
from p2pgrid.ledger import Invoice, LogStore, Payment, fold, invoices_of
from p2pgrid.regtest import Stack
from p2pgrid.reporting import ReportRequest, run_report
from p2pgrid.scenario import Scenario, load_scenario
from tests.regtest.conftest import TWO_SITES
from tests.regtest.deployed import deploy

pytestmark = pytest.mark.slow

SCENARIO = TWO_SITES
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGE_TIMEOUT_MS = 60_000


@dataclasses.dataclass
class Seen:
    """What the browser saw, for the tests to judge."""

    devices_during_run: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    loaded_while_running: bool = False
    entries_at_load: int = 0
    entries_live: int = 0
    reloaded: bool = True
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    screenshot: Path | None = None


class BrowserWatch:
    """A :class:`~p2pgrid.launcher.RunObserver` that hands the run's moments to the browser."""

    def __init__(self) -> None:
        self.dashboards: dict[str, str] = {}
        self.started_event = asyncio.Event()
        self.finished_event = asyncio.Event()
        self.checked = asyncio.Event()
        self.result: RunResult | None = None

    async def started(self, dashboards: dict[str, str]) -> None:
        self.dashboards = dashboards
        self.started_event.set()

    async def finished(self, result: RunResult) -> None:
        self.result = result
        self.finished_event.set()
        await self.checked.wait()  # the processes serve until the browser has looked


async def _site_numbers(page: Page) -> dict[str, Any]:
    return await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("section[data-site]")].map(
            (s) => [s.dataset.site, {
              digest: s.dataset.digest, period: Number(s.dataset.period),
              devices: Object.fromEntries([...s.querySelectorAll("tr[data-device]")].map(
                (r) => [r.dataset.index, Object.fromEntries(
                  ["left", "received", "given", "paid"].map(
                    (c) => [c, Number(r.querySelector(`td[data-col=${c}] span`).dataset.msat)]))])),
            }]))"""
    )


async def _browse(scenario: Scenario, watch: BrowserWatch, shots: Path, seen: Seen) -> None:
    try:
        await watch.started_event.wait()
        url = watch.dashboards[scenario.utility.name]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1500, "height": 1000})
                page.set_default_timeout(PAGE_TIMEOUT_MS)
                await page.goto(url)
                for site in scenario.sites:
                    for device in site.devices:
                        await page.wait_for_selector(
                            f'section[data-site="{site.name}"] tr[data-device="{device.name}"]'
                        )
                seen.loaded_while_running = not watch.finished_event.is_set()
                seen.devices_during_run = await page.evaluate(
                    """() => Object.fromEntries([...document.querySelectorAll("section[data-site]")]
                      .map((s) => [s.dataset.site,
                        [...s.querySelectorAll("tr[data-device]")]
                          .map((r) => r.dataset.device)]))"""
                )
                await page.evaluate("() => { window.loadedOnce = true; }")
                seen.entries_at_load = int(await page.evaluate("document.body.dataset.entries"))
                await page.wait_for_function(
                    f"Number(document.body.dataset.entries) > {seen.entries_at_load}"
                )
                seen.entries_live = int(await page.evaluate("document.body.dataset.entries"))
                seen.reloaded = not await page.evaluate("() => window.loadedOnce === true")
                await watch.finished_event.wait()
                assert watch.result is not None
                final = {s: next(iter(d.values())) for s, d in watch.result.digests.items()}
                await page.wait_for_function(
                    """(final) => [...document.querySelectorAll("section[data-site]")]
                        .every((s) => s.dataset.digest === final[s.dataset.site])""",
                    arg=final,
                )
                # The node hears its peers' digests in its next anti-entropy rounds.
                await page.wait_for_selector('section[data-agree="false"]', state="detached")
                await page.wait_for_selector('section[data-agree="null"]', state="detached")
                seen.numbers = await _site_numbers(page)
                seen.screenshot = shots / "dashboard.png"
                await page.screenshot(path=str(seen.screenshot), full_page=True)
            finally:
                await browser.close()
    finally:
        watch.checked.set()


@pytest.fixture(scope="module")
async def browsed(
    two_sites_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Scenario, RunResult, Seen]:
    tmp = tmp_path_factory.mktemp("dashboard")
    scenario = load_scenario(SCENARIO)
    watch, seen = BrowserWatch(), Seen()
    deployment = await deploy(SCENARIO, two_sites_stack, tmp / "run")
    async with asyncio.TaskGroup() as group:
        group.create_task(_browse(scenario, watch, tmp, seen))
        run = group.create_task(run_deployment(deployment, observer=watch, start_when_ready=True))
    return scenario, run.result(), seen


def test_every_device_shows_while_the_run_goes_on(
    browsed: tuple[Scenario, RunResult, Seen],
) -> None:
    scenario, _, seen = browsed
    assert seen.loaded_while_running
    assert seen.devices_during_run == {
        site.name: [d.name for d in sorted(site.devices, key=lambda d: d.index)]
        for site in scenario.sites
    }


def test_a_new_entry_arrives_without_a_reload(browsed: tuple[Scenario, RunResult, Seen]) -> None:
    _, _, seen = browsed
    assert seen.entries_live > seen.entries_at_load
    assert not seen.reloaded


async def test_the_page_numbers_equal_the_views(browsed: tuple[Scenario, RunResult, Seen]) -> None:
    scenario, result, seen = browsed
    memberships = {}
    logs = {}
    for site in scenario.sites:  # the utility's replicas: every site's log and members
        db = result.work_dir / scenario.utility.name / f"{scenario.utility.name}-{site.name}.db"
        async with await LogStore.open(db, result.sites[site.name], name="check") as store:
            logs[site.name] = (await store.entries(), store.digest().hex())
            memberships[site.name] = store.membership
    for site in scenario.sites:
        entries, digest = logs[site.name]
        peers = {m.site_hash: m for name, m in memberships.items() if name != site.name}
        view = fold(entries, site_hash=result.sites[site.name].site_hash, peer_sites=peers)
        shown = seen.numbers[site.name]
        assert shown["digest"] == digest
        period = shown["period"]
        assert period == max(e.period for e in entries)
        paid = {
            e.body.payment_hash: e.body.amount_msat for e in entries if isinstance(e.body, Payment)
        }
        for device in site.devices:
            acc = view.account(device.index, period)
            invoices = invoices_of(entries, device=device.index, period=period)
            assert shown["devices"][str(device.index)] == {
                "left": acc.balance_msat,
                "received": acc.received_msat,
                "given": acc.given_msat,
                "paid": sum(
                    paid.get(i.body.payment_hash, 0)
                    for i in invoices
                    if isinstance(i.body, Invoice)
                ),
            }, device.name


def test_a_screenshot_is_saved(
    browsed: tuple[Scenario, RunResult, Seen], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, seen = browsed
    assert seen.screenshot is not None
    data = seen.screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with capsys.disabled():
        print(f"\ndashboard screenshot: {seen.screenshot}")


async def test_the_report_of_the_run_has_every_period(
    browsed: tuple[Scenario, RunResult, Seen],
) -> None:
    scenario, result, _ = browsed
    console = Console(record=True, width=200)
    for site in scenario.sites:
        request = ReportRequest(
            scenario=SCENARIO,
            site=site.name,
            periods=None,
            db=None,
            work_dir=result.work_dir,
            out_dir=result.work_dir / "report",
        )
        written = await run_report(console, request)
        for period in range(scenario.periods):
            stem = result.work_dir / "report" / f"{site.name}-p{period}"
            assert {stem.with_suffix(x) for x in (".csv", ".json", ".png")} <= set(written)
            assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            rows = list(csv.DictReader(io.StringIO(stem.with_suffix(".csv").read_text())))
            assert [r["name"] for r in rows] == [
                d.name for d in sorted(site.devices, key=lambda d: d.index)
            ]
    text = console.export_text()
    assert all(d.name in text for s in scenario.sites for d in s.devices)
