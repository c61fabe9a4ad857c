"""A gateway's devices of one site share one store: written, resumed, migrated.

In process, on the real lnds of the session stack (each device opens its own
lnd client), real SQLite and real libp2p hosts: a deployed site file of two
devices run as one gateway (:func:`p2pgrid.agent.gateway.run_gateway`).

- An upgrade: each device kept a replica file of its own (``<name>.db``, its
  own entries in it, as a gateway did before); the gateway merges both into the
  one ``store-1.gateway.db`` of the first device's data directory (every entry
  verified), renames them ``.merged``, and each device resumes its chain there
  (its head as it was): the ``digest`` lines of both devices are the one log's.
- The devices' writers (the gateway's own path, :func:`open_device`) write into
  that one store, and a restart resumes every author's head and the log exactly:
  nothing merged again, nothing doubled.
- A device whose log was merged into another gateway's store is refused: its
  store would be behind its own chain (it would sign a second entry 1).
- The device whose host runs the site's replica fails: the site's other device
  of the gateway stops with it (it has no replication left), both reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from p2pgrid.agent import gateway
from p2pgrid.agent.gateway import SiteLogs, open_device, run_gateway, site_log_file
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.agent.setup import AgentSetup
from p2pgrid.config import SiteFile, agent_setup
from p2pgrid.errors import ConfigError, FatalError
from p2pgrid.ledger import Author, LogStore, LogWriter, MeterReading
from p2pgrid.net import TrioBridge
from p2pgrid.regtest import Stack
from p2pgrid.replication import merged_path
from p2pgrid.service import EXIT_FAILED, Command, exit_code
from tests.cli.deployment import DEVICES, deploy
from tests.regtest.nodes import inline

LND = {"s1-fridge": "dev-a", "s1-hvac": "dev-b"}
T0_MS = 1_798_761_600_000  # 2027-01-01, the deployment's clock start


async def write_readings(writer: LogWriter, count: int) -> None:
    """``count`` readings of the writer's device, after those it has."""
    for _ in range(count):
        seq = writer.store.next_position(writer.author)[0]
        ts = T0_MS + 900_000 * seq
        await writer.append(MeterReading(ts, 900, 10, 100), period=1, timestamp_ms=ts)


async def own_file(setup: AgentSetup, count: int) -> None:
    """The device's replica file of its own, as a gateway before this one kept it."""
    path = setup.runtime.data_dir / f"{setup.name}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    async with await LogStore.open(path, setup.identity, name=setup.name) as store:
        await store.ingest_many(list(setup.provision))
        writer = LogWriter(store, setup.signer, Author.device(setup.device.index))
        await write_readings(writer, count)


def heads_of(setups: list[AgentSetup], store: LogStore) -> dict[str, int]:
    return {s.name: store.heads()[Author.device(s.device.index)].seq for s in setups}


async def digests(setups: list[AgentSetup], bridge: TrioBridge) -> dict[str, str]:
    """Run the gateway until each device answered ``digest``; its lines."""

    async def commands() -> AsyncIterator[Command]:
        yield {"cmd": "digest"}

    out: dict[str, str] = {}
    emit = gateway.emit

    def seen(event: str, **fields: Any) -> None:
        emit(event, **fields)
        if event == "digest":
            out[fields["name"]] = fields["digest"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gateway, "emit", seen)
        await run_gateway(setups, commands, bridge=bridge)
    return out


@pytest.fixture
def setups(stack: Stack, tmp_path: Path) -> list[AgentSetup]:
    d = deploy(tmp_path, lnd={name: inline(stack.endpoint(node)) for name, node in LND.items()})
    site = SiteFile(d.site_file)
    return [agent_setup(site, name) for name, _, _ in DEVICES]


async def test_own_files_merge_into_one_store_and_a_restart_resumes_it(
    setups: list[AgentSetup], bridge: TrioBridge
) -> None:
    await own_file(setups[0], 3)
    await own_file(setups[1], 2)
    shared = site_log_file(setups)
    assert shared == setups[0].runtime.data_dir / "store-1.gateway.db"
    assert site_log_file(setups[::-1]) == shared  # whatever the order of --device

    first = await digests(setups, bridge)
    assert set(first) == {"s1-fridge", "s1-hvac"}
    assert len(set(first.values())) == 1
    for s in setups:
        own = s.runtime.data_dir / f"{s.name}.db"
        assert not own.exists()
        assert merged_path(own).is_file()
    assert sorted(p.name for p in setups[1].runtime.data_dir.glob("*.db")) == ["s1-hvac.intents.db"]

    # The gateway's own path: both devices' writers on the one store.
    async with contextlib.AsyncExitStack() as stack:
        logs = SiteLogs(stack, setups)
        site_log = await logs.of(setups[0])
        assert await logs.of(setups[1]) is site_log
        store = site_log.store
        assert heads_of(setups, store) == {"s1-fridge": 3, "s1-hvac": 2}
        for s in setups:
            parts = await stack.enter_async_context(contextlib.AsyncExitStack())
            device = await open_device(parts, s, bridge=bridge, logs=logs)
            assert device.store is store
            await write_readings(device.agent.writer, 2)
        assert heads_of(setups, store) == {"s1-fridge": 5, "s1-hvac": 4}
        digest = store.digest().hex()
        count = store.heads().total

    again = await digests(setups, bridge)  # restarted: nothing merged, nothing doubled
    assert set(again.values()) == {digest}
    async with await LogStore.open(shared, setups[0].identity, name="check") as store:
        assert heads_of(setups, store) == {"s1-fridge": 5, "s1-hvac": 4}
        assert store.heads().total == count


async def test_a_device_whose_log_went_into_another_store_is_refused(
    setups: list[AgentSetup], bridge: TrioBridge
) -> None:
    await own_file(setups[1], 2)
    await digests(setups, bridge)  # merged into the gateway of both
    # The hvac alone now: its log is in the fridge's gateway file, not here.
    with pytest.raises(ConfigError, match="up to entry 2"):
        await digests(setups[1:], bridge)
    assert not (setups[1].runtime.data_dir / "s1-hvac.db").exists()  # nothing written


class FailsAtStart(Paymaster):
    """A paymaster whose intents file is found corrupt when the agent starts."""

    async def recover(self) -> list[Any]:
        raise FatalError("intents file corrupt")


async def test_the_device_running_the_replica_fails_with_its_site(
    setups: list[AgentSetup],
    bridge: TrioBridge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    anchor = setups[0].name  # opened first: its host runs the site's replica

    def make_paymaster(**kwargs: Any) -> Paymaster:
        return (FailsAtStart if kwargs["name"] == anchor else Paymaster)(**kwargs)

    async def commands() -> AsyncIterator[Command]:
        yield {"cmd": "start", "at": time.time() + 86_400}  # the other waits a day
        await asyncio.Event().wait()  # the gateway stops once both failed

    with pytest.raises(ExceptionGroup) as raised:
        await run_gateway(setups, commands, make_paymaster=make_paymaster, bridge=bridge)
    assert exit_code(raised.value) == (EXIT_FAILED, "error: intents file corrupt")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    failed = [(e["name"], e["error"]) for e in events if e["event"] == "failed"]
    assert failed[0] == (anchor, "intents file corrupt")
    assert failed[1][0] == "s1-hvac"
    assert "its host ran the replica" in failed[1][1]
    assert not [e for e in events if e["event"] == "stopped"]
