"""A gateway (or a device alone) holds the lock of every log file it writes and
of its devices' intents files: a second process given one of its devices is
refused before it opens anything (no lnd dialled, no store, no intents file
made, no earlier file merged), with a ConfigError naming the file and its holder."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from p2pgrid.agent.gateway import SiteLogs, run_gateway, site_log_file
from p2pgrid.agent.setup import AgentSetup
from p2pgrid.config import SiteFile, agent_setup
from p2pgrid.ledger import StoreInUse, lock_store
from p2pgrid.scenario import load_scenario
from p2pgrid.service import Command
from tests.config.test_deployment import LIGHT, deploy, fake_lnd


@pytest.fixture
def setups(tmp_path: Path) -> dict[str, AgentSetup]:
    """store-1's devices of the demo's deployment, as its site file builds them."""
    scenario = load_scenario(LIGHT)
    d = deploy(scenario, tmp_path, fake_lnd(scenario), LIGHT)
    site = SiteFile(d.site_files["store-1"])
    return {name: agent_setup(site, name) for name in ("s1-fridge", "s1-hvac", "s1-ev")}


async def no_commands() -> AsyncIterator[Command]:
    return
    yield  # pragma: no cover


def files(setup: AgentSetup) -> list[str]:
    return sorted(p.name for p in setup.runtime.data_dir.glob("*") if p.suffix != ".lock")


@pytest.mark.parametrize("names", [["s1-fridge", "s1-hvac"], ["s1-hvac"]])
async def test_a_second_process_on_the_same_log_is_refused_before_it_opens_anything(
    setups: dict[str, AgentSetup],
    names: list[str],
) -> None:
    members = [setups[n] for n in names]
    held = site_log_file(members)  # <site>.gateway.db, or <name>.db for a device alone
    held.parent.mkdir(parents=True, exist_ok=True)
    before = [files(s) for s in members]
    with lock_store(held), pytest.raises(StoreInUse, match=f"^{held}: in use by"):
        await run_gateway(members, no_commands)  # its lnd clients would fail: never reached
    assert [files(s) for s in members] == before
    assert not held.exists()


async def test_an_earlier_file_another_process_writes_is_not_merged(
    setups: dict[str, AgentSetup],
) -> None:
    fridge, hvac = setups["s1-fridge"], setups["s1-hvac"]
    alone = hvac.runtime.data_dir / "s1-hvac.db"  # the hvac runs alone somewhere
    alone.parent.mkdir(parents=True, exist_ok=True)
    alone.write_bytes(b"")
    with lock_store(alone), pytest.raises(StoreInUse, match=f"^{alone}: "):
        async with contextlib.AsyncExitStack() as stack:
            await SiteLogs(stack, [fridge, hvac]).of(fridge)
    assert alone.exists()  # not renamed .merged
    assert not site_log_file([fridge, hvac]).exists()
    async with contextlib.AsyncExitStack() as stack:  # the locks went with the refusal
        SiteLogs(stack, [fridge, hvac]).claim()


async def test_two_gateways_that_share_a_device_are_refused(
    setups: dict[str, AgentSetup],
) -> None:
    """Their log files differ (each in its first device's directory); the shared
    device's intents file is the one both would write."""
    fridge, hvac, ev = setups["s1-fridge"], setups["s1-hvac"], setups["s1-ev"]
    assert site_log_file([fridge, hvac]) != site_log_file([hvac, ev])
    shared = hvac.runtime.data_dir / "s1-hvac.intents.db"
    async with contextlib.AsyncExitStack() as stack:
        SiteLogs(stack, [fridge, hvac]).claim()
        with pytest.raises(StoreInUse, match=f"^{shared}: in use by this process"):
            async with contextlib.AsyncExitStack() as other:
                SiteLogs(other, [hvac, ev]).claim()
        assert not shared.exists()
