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
- The device whose host view runs the site's replica fails: it stops alone (a
  ``failed`` line); the view and the replica are the site's and run on for the
  other device (a peer's entry still reaches it), and a restart resumes.
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
from p2pgrid.agent.gateway import (
    GatewayDevice,
    SiteLogs,
    open_device,
    run_gateway,
    site_log_file,
)
from p2pgrid.agent.intents import IntentBook, IntentState, Purpose, PurposeKind
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.agent.setup import AgentSetup
from p2pgrid.config import SiteFile, agent_setup
from p2pgrid.config.keys import read_key
from p2pgrid.errors import ConfigError, FatalError
from p2pgrid.identity import UTILITY_NET_INDEX
from p2pgrid.ledger import (
    SYNC_PROTOCOL_ID,
    Author,
    Body,
    Budget,
    Entry,
    LogStore,
    LogWriter,
    MeterReading,
    Payment,
)
from p2pgrid.lightning import InvoiceState, LndClient, PaymentStatus
from p2pgrid.net import DeviceKey, NetConfig, TrioBridge
from p2pgrid.regtest import Stack
from p2pgrid.replication import NodeSpec, ReplicaConfig, merged_path, open_node_parts
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


async def test_the_device_running_the_replica_fails_alone_and_the_replica_runs_on(
    setups: list[AgentSetup],
    bridge: TrioBridge,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before, the anchor's failure took its site's replica down with its host view,
    and the site's other devices of the gateway with it (each a ``failed`` line,
    the gateway out at once). Now the view and the replica are the site's: the
    anchor stops alone, its view answers its log's sync protocol only, and the
    replica on it still takes in a peer's entry for the device that runs on; a
    restart resumes the log with that entry."""
    anchor, other = setups[0].name, setups[1].name  # index 0: the hub device, opened first
    identity = setups[0].identity
    opened: dict[str, GatewayDevice] = {}
    served: dict[str, frozenset[str]] = {}  # what each device's view answered once open
    open_device = gateway.open_device

    async def recording(*args: Any, **kwargs: Any) -> GatewayDevice:
        device = await open_device(*args, **kwargs)
        opened[device.name] = device
        served[device.name] = device.host.serving
        return device

    monkeypatch.setattr(gateway, "open_device", recording)
    reported = asyncio.Event()
    emit = gateway.emit

    def emit_and_see(event: str, **fields: Any) -> None:
        emit(event, **fields)
        if event == "failed":
            reported.set()

    monkeypatch.setattr(gateway, "emit", emit_and_see)

    def make_paymaster(**kwargs: Any) -> Paymaster:
        return (FailsAtStart if kwargs["name"] == anchor else Paymaster)(**kwargs)

    utility_signer = read_key(tmp_path / "ukeys" / "utility.key")
    budget: list[Entry] = []

    async def commands() -> AsyncIterator[Command]:
        yield {"cmd": "start", "at": time.time() + 86_400}  # the other waits a day
        await reported.wait()
        failed = opened[anchor]
        assert failed.carries_replica
        assert served[anchor] > {SYNC_PROTOCOL_ID}  # the replica's and its agent's
        assert failed.host.serving == {SYNC_PROTOCOL_ID}  # its agent's protocols withdrawn
        assert opened[other].host.serving == served[other]  # the sibling's untouched
        # The utility, a member of the site, writes an entry the gateway lacks and
        # announces it: the site's replica, on the failed anchor's view, takes it in.
        async with contextlib.AsyncExitStack() as parts:
            spec = NodeSpec(
                name="utility",
                db_path=tmp_path / "utility.db",
                site=identity,
                net=NetConfig(bootstrap=failed.host.addrs),
                key=DeviceKey(identity, UTILITY_NET_INDEX, utility_signer),
                replica=ReplicaConfig(),
                provision=list(setups[0].provision),
                bridge=bridge,
            )
            node = await open_node_parts(parts, spec)
            writer = LogWriter(node.store, utility_signer, Author.utility())
            budget.append(await writer.append(Budget(1_000), period=0, timestamp_ms=T0_MS))
            await node.replica.publish(budget)
            store = opened[other].store

            def has_it() -> bool:
                return Author.utility() in store.heads()

            replica = opened[other].site_log.replica
            assert replica is not None
            async with asyncio.timeout(30):  # gossip, or the replica's round on the join
                await replica.wait_until(has_it)
            assert has_it()
        yield {"cmd": "digest"}  # then end of input: the gateway stops

    with pytest.raises(ExceptionGroup) as raised:
        await run_gateway(setups, commands, make_paymaster=make_paymaster, bridge=bridge)
    assert exit_code(raised.value) == (EXIT_FAILED, "error: intents file corrupt")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    seen = [(e["event"], e.get("name")) for e in events if e["event"] != "ready"]
    assert seen == [("failed", anchor), ("digest", other), ("stopped", other)]
    [digest] = [e["digest"] for e in events if e["event"] == "digest"]
    monkeypatch.setattr(gateway, "emit", emit)
    again = await digests(setups, bridge)  # restarted, the anchor sound again: resumed
    assert again == {anchor: digest, other: digest}
    async with await LogStore.open(site_log_file(setups), identity, name="check") as store:
        assert [e.raw for e in await store.entries(author=Author.utility())] == [budget[0].raw]


class LogFailsOnPayment(LogWriter):
    """The anchor's writer: its store breaks as the paid payment's entry is written."""

    def __init__(self, writer: LogWriter) -> None:
        super().__init__(writer.store, writer.signer, writer.author)

    async def append(self, body: Body, *, period: int, timestamp_ms: int) -> Entry:
        if isinstance(body, Payment):
            raise FatalError("the log failed writing the payment")
        return await super().append(body, period=period, timestamp_ms=timestamp_ms)


class PaysAtStart(Paymaster):
    """Pays ``bolt11`` (a real invoice) as the agent starts, after recovering."""

    def __init__(self, *, bolt11: str, payment_hash: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bolt11, self.payment_hash = bolt11, payment_hash

    async def recover(self) -> list[Any]:
        done = await super().recover()
        purpose = Purpose(PurposeKind.INVOICE, AMOUNT_MSAT, device=0)
        await self.pay(self.bolt11, self.payment_hash, period=0, purpose=purpose,
                       fee_limit_msat=10_000)  # fmt: skip
        return done


class Recovered(Paymaster):
    """A paymaster that says when its start's recovery is done."""

    def __init__(self, *, done: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.done = done

    async def recover(self) -> list[Any]:
        try:
            return await super().recover()
        finally:
            self.done.set()


AMOUNT_MSAT = 21_000


async def test_the_anchor_failing_after_lnd_paid_leaves_an_intent_a_restart_logs_once(
    setups: list[AgentSetup],
    bridge: TrioBridge,
    dev_a: LndClient,
    dev_b: LndClient,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Money stays exact across the anchor's failure: lnd paid, the log entry
    failed, the anchor stops alone (its sibling answers on), the payment stays an
    open intent; the gateway started again logs it once from lnd, by its hash."""
    anchor, other = setups[0].name, setups[1].name  # the fridge pays on dev-a
    invoice = await dev_b.add_invoice(AMOUNT_MSAT, "p2pgrid test: paid before the log")

    def failing(**kwargs: Any) -> Paymaster:
        if kwargs["name"] != anchor:
            return Paymaster(**kwargs)
        writer = LogFailsOnPayment(kwargs.pop("writer"))
        return PaysAtStart(bolt11=invoice.payment_request, payment_hash=invoice.payment_hash,
                           writer=writer, **kwargs)  # fmt: skip

    reported = asyncio.Event()
    emit = gateway.emit

    def emit_and_see(event: str, **fields: Any) -> None:
        emit(event, **fields)
        if event == "failed":
            reported.set()

    monkeypatch.setattr(gateway, "emit", emit_and_see)

    async def until_failed() -> AsyncIterator[Command]:
        yield {"cmd": "start", "at": time.time() + 86_400}  # the other waits a day
        await reported.wait()
        yield {"cmd": "digest"}  # then end of input: the gateway stops

    with pytest.raises(ExceptionGroup) as raised:
        await run_gateway(setups, until_failed, make_paymaster=failing, bridge=bridge)
    assert exit_code(raised.value) == (EXIT_FAILED, "error: the log failed writing the payment")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    seen = [(e["event"], e.get("name")) for e in events if e["event"] != "ready"]
    assert seen == [("failed", anchor), ("digest", other), ("stopped", other)]

    paid = [p for p in await dev_a.list_payments() if p.payment_hash == invoice.payment_hash]
    assert [p.status for p in paid] == [PaymentStatus.SUCCEEDED]  # the sats left
    intents_file = setups[0].runtime.data_dir / f"{anchor}.intents.db"

    async def intent_state() -> IntentState:
        book = await IntentBook.open(intents_file, name=anchor)
        try:
            intent = await book.get(invoice.payment_hash)
            assert intent is not None
            return intent.state
        finally:
            await book.close()

    async def payments_logged() -> list[bytes]:
        async with await LogStore.open(site_log_file(setups), setups[0].identity, name="c") as s:
            return [
                e.body.payment_hash
                for e in await s.entries(author=Author.device(setups[0].device.index))
                if isinstance(e.body, Payment)
            ]

    assert await intent_state() is IntentState.OPEN  # not lost: resolved at the next start
    assert await payments_logged() == []

    recovered = asyncio.Event()

    async def restart() -> AsyncIterator[Command]:
        yield {"cmd": "start", "at": time.time() + 86_400}
        await recovered.wait()

    def resumed(**kwargs: Any) -> Paymaster:
        if kwargs["name"] == anchor:
            return Recovered(done=recovered, **kwargs)
        return Paymaster(**kwargs)

    monkeypatch.setattr(gateway, "emit", emit)
    await run_gateway(setups, restart, make_paymaster=resumed, bridge=bridge)
    assert await intent_state() is IntentState.LOGGED
    assert await payments_logged() == [bytes.fromhex(invoice.payment_hash)]  # once
    paid = [p for p in await dev_a.list_payments() if p.payment_hash == invoice.payment_hash]
    assert len(paid) == 1  # and paid once
    settled = await dev_b.lookup_invoice(invoice.payment_hash)
    assert settled.state is InvoiceState.SETTLED
    assert settled.amt_paid_msat == AMOUNT_MSAT
