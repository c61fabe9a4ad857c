"""The utility's period close (real SQLite, fake Lightning and replica).

Each device is invoiced as soon as its period is complete in the replica (its
last reading, or an entry of a later period); in a run until stopped a device
whose readings come after the readings wait is still invoiced in full, and it
holds neither the other devices nor the other sites.

A utility killed mid-invoicing and started again closes the period again: it must
issue only the missing invoices (never a second one, never a second budget) and
must not wait for late readings a second time: the readings wait runs from the
period's end, so a restart within it waits only what is left, and one after it
not at all, or every restart would delay the period's other invoices by the whole
readings wait. Nor may it take an invoice of the period in its log for a wait
that was over (a complete device is invoiced during the wait): it would invoice
the others short.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from p2pgrid.agent.settlement import Settlement
from p2pgrid.billing import PeriodClock, invoice_memo, invoice_preimage
from p2pgrid.errors import ConfigError
from p2pgrid.identity import Signer
from p2pgrid.ledger import Author, Budget, Enrol, Entry, Invoice, LogStore, Revoke, Role
from p2pgrid.lightning import Invoice as LnInvoice
from p2pgrid.lightning import InvoiceError, InvoiceState, LightningNode, NodeUnreachable
from p2pgrid.net import PeerRef
from p2pgrid.replication import NetReplica, ReplicaState, ReplicaStats
from p2pgrid.testing.fake_lightning import FakeNode
from p2pgrid.utility import MAX_INVOICE_REVISIONS, Invoicer, UnloggedInvoiceError
from p2pgrid.utility.node import SYNC_ATTEMPT_S, SiteDesk, UtilityNode
from tests.agent.rig import QUARTER_MS, TARIFF, Rig
from tests.ledger.ledger_factory import T0_MS

#: Long enough that a test waiting for it fails by its own timeout instead.
NEVER_S = 3600.0
CLOSE_S = 10.0
WAIT_S = 0.5


class _Host:
    def peers(self) -> tuple[PeerRef, ...]:
        return ()


class _QuietReplica:
    """A replica on which nothing arrives but what a test ingests into its store
    (the late device). Its site has the hosts ``hosts``; a round with one of them
    (:meth:`sync_once`) succeeds (with nothing new) if ``syncing``, but a round
    with a host in ``gates`` waits for its gate first (one never opened: a stream
    that never opens) and one with a host in ``fails`` fails as many times as
    listed there."""

    def __init__(self, store: LogStore) -> None:
        self.store = store
        self.host = _Host()
        self.hosts = ["device host"]
        self.published: list[Entry] = []
        self.pushed: list[tuple[Entry, str]] = []
        self.syncing = True
        self.gates: dict[str, asyncio.Event] = {}
        self.fails: dict[str, int] = {}
        self.tried: list[str] = []
        self.deadlines: list[float] = []
        self.cancelled: list[str] = []
        self.state = ReplicaState.RUNNING
        self._ended = asyncio.Event()
        self._trying = asyncio.Condition()

    def stats(self) -> ReplicaStats:
        return ReplicaStats()

    def host_peers(self, limit: int | None = None) -> list[str]:
        return self.hosts[:limit]

    async def until_tried(self, count: int) -> None:
        async with self._trying:
            await self._trying.wait_for(lambda: len(self.tried) >= count)

    async def sync_once(self, peer: str, *, timeout_s: float) -> bool:
        async with self._trying:
            self.tried.append(peer)
            self.deadlines.append(timeout_s)
            self._trying.notify_all()
        try:
            if peer in self.gates:
                await self.gates[peer].wait()
            if self.fails.get(peer, 0) > 0:
                self.fails[peer] -= 1
                return False
            return self.syncing
        except asyncio.CancelledError:
            self.cancelled.append(peer)
            raise
        finally:
            self._ended.set()  # as the real one: wait_until looks again

    async def publish(self, entries: list[Entry]) -> None:
        self.published += entries

    def member_peers(self, index: int) -> list[str]:
        return [f"host of device {index}"]

    async def push(self, entries: list[Entry], peers: list[str] | None = None) -> int:
        self.pushed += [(e, p) for e in entries for p in peers or ()]
        return len(peers or ())

    def request_sync(self, peer_id: str) -> None:
        pass

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Looks again at each change of the log and at the end of each round."""
        while not predicate():
            self._ended.clear()
            changed = asyncio.ensure_future(self.store.wait_changed(self.store.digest()))
            ended = asyncio.ensure_future(self._ended.wait())
            try:
                await asyncio.wait({changed, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                ended.cancel()


async def _utility(rig: Rig, tmp: Path, *, late: bool = False) -> tuple[LogStore, SiteDesk]:
    """The utility's replica holding what the devices logged in period 0: device 1
    misses the period's last reading (interval 1); ``late``: its readings are not
    in the replica yet (see :func:`_late`)."""
    dev0, dev1 = await rig.device(0), await rig.device(1)
    await dev0.meter(0, 100, interval=0)
    await dev0.meter(0, 100, interval=1)
    await dev1.meter(0, 300, interval=0)
    store = await rig.site.open(tmp / "utility.db", "utility")
    for dev in (dev0,) if late else (dev0, dev1):
        await store.ingest_many(await dev.store.export())
    writer = rig.utility_writer(store)
    invoicer = Invoicer(
        site=rig.site.identity,
        store=store,
        writer=writer,
        node=rig.utility_node,
        tariff=TARIFF,
        secret=b"s" * 32,
    )
    replica = cast(NetReplica, _QuietReplica(store))
    return store, SiteDesk("site", 900_000, (0, 1), store, writer, replica, invoicer)


def _quiet(desk: SiteDesk) -> _QuietReplica:
    return cast(_QuietReplica, desk.replica)


def _node(desk: SiteDesk, *, ended_s_ago: float = 0.0) -> UtilityNode:
    """The utility of ``desk``: two intervals of 1 s per period, period 0 ended
    ``ended_s_ago`` (its readings wait runs from then)."""
    clock = PeriodClock(2, 1.0, time.time() - 2.0 - ended_s_ago)
    return UtilityNode(
        clock=clock,
        model_ms=lambda i: T0_MS + i * QUARTER_MS,
        sites=[desk],
        readings_wait_s=NEVER_S,
    )


async def test_a_restarted_utility_issues_the_missing_invoices_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path, late=True)
        # Before the kill, past the readings wait (60 s, the period ended 100 s
        # ago): the budget and device 0's invoice; device 1's readings (not its
        # last) reached the replica after that.
        await desk.writer.append(Budget(900_000), period=0, timestamp_ms=T0_MS)
        first = await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        assert [e.body.device for e in first if isinstance(e.body, Invoice)] == [0]
        await store.ingest_many(await rig.devices[1].store.export())
        node = _node(desk, ended_s_ago=100.0)  # the restarted utility, on the same replica
        node.readings_wait_s = 60.0
        async with asyncio.timeout(CLOSE_S):  # not the readings wait again
            await node.run(1)
        entries = await store.entries()
        invoices = [(e.body.device, e.period) for e in entries if isinstance(e.body, Invoice)]
        budgets = [e.period for e in entries if isinstance(e.body, Budget)]
        assert sorted(invoices) == [(0, 0), (1, 0)]  # each once
        assert budgets == [0]
        assert [e.body.device for e in node.invoiced if isinstance(e.body, Invoice)] == [1]
        await store.close()
    finally:
        await rig.close()


async def test_a_utility_restarted_within_the_readings_wait_does_not_invoice_short(
    tmp_path: Path,
) -> None:
    """Killed during the readings wait, after invoicing the complete device 0: the
    restarted utility still waits for device 1's last reading (here the wait is
    endless), then invoices it in full; before, it took device 0's invoice for a
    wait that was over and invoiced device 1 at once for what was logged."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path, late=True)
        await desk.writer.append(Budget(900_000), period=0, timestamp_ms=T0_MS)
        first = await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        assert [e.body.device for e in first if isinstance(e.body, Invoice)] == [0]
        dev1 = await rig.device(1)
        await store.ingest_many(await dev1.store.export())  # its interval 0, not 1
        node = _node(desk)  # restarted, the period just ended
        node.readings_wait_s = NEVER_S
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(WAIT_S * 4):
                await node.run(1)
        assert 1 not in _invoiced(await store.entries())  # not invoiced short
        await dev1.meter(0, 200, interval=1)  # its last reading comes in
        await store.ingest_many(await dev1.store.export())
        node = _node(desk)
        node.readings_wait_s = NEVER_S
        async with asyncio.timeout(CLOSE_S):
            await node.run(1)
        bills = {
            e.body.device: e.body.energy_wh
            for e in await store.entries()
            if isinstance(e.body, Invoice)
        }
        assert bills == {0: 200, 1: 500}  # device 1 in full, each once
        await store.close()
    finally:
        await rig.close()


async def test_a_restart_waits_only_what_is_left_of_the_readings_wait(tmp_path: Path) -> None:
    """The readings wait runs from the period's end: a utility restarted 29.5 s
    into a 30 s wait invoices the incomplete device for what is logged after
    what is left of it, not after another 30 s."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)  # device 1 misses its last reading
        node = _node(desk, ended_s_ago=29.5)
        node.readings_wait_s = 30.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(CLOSE_S):
            await node.run(1)
        assert loop.time() - started < 15.0  # what was left (0.5 s), not the whole wait
        assert sorted(_invoiced(await store.entries())) == [0, 1]
        await store.close()
    finally:
        await rig.close()


async def test_a_fresh_close_still_waits_for_the_last_reading(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        node = _node(desk)
        node.readings_wait_s = WAIT_S
        loop = asyncio.get_running_loop()
        started = loop.time()
        await node.run(1)  # waits for device 1's last reading, then invoices both
        assert loop.time() - started >= WAIT_S
        assert sorted(e.body.device for e in node.invoiced if isinstance(e.body, Invoice)) == [0, 1]
        await store.close()
    finally:
        await rig.close()


async def test_a_replica_that_synced_with_nobody_is_not_invoiced_from(tmp_path: Path) -> None:
    """A utility just restarted whose devices have not redialled it yet: past the
    readings wait it still waits for one sync round, then invoices."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        _quiet(desk).syncing = False
        node = _node(desk)
        node.readings_wait_s = WAIT_S
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(WAIT_S * 4):
                await node.run(1)
        # Device 0's period is complete: invoiced; device 1 is not invoiced short.
        assert [e.body.device for e in node.invoiced if isinstance(e.body, Invoice)] == [0]
        _quiet(desk).syncing = True  # a device redialled: a round went through
        node = _node(desk)
        node.readings_wait_s = WAIT_S
        async with asyncio.timeout(CLOSE_S):
            await node.run(1)
        invoices = [e.body.device for e in await store.entries() if isinstance(e.body, Invoice)]
        assert sorted(invoices) == [0, 1]
        await store.close()
    finally:
        await rig.close()


async def test_a_host_whose_stream_hangs_does_not_hold_the_invoices(tmp_path: Path) -> None:
    """Under load a stream to one host may never open: after the period's end the
    utility syncs with several hosts at once and invoices the incomplete device
    as soon as one of them answered, not after the hung one's deadline."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)  # device 1 misses its last reading
        quiet = _quiet(desk)
        quiet.hosts = ["hung host", "loaded host"]
        quiet.gates = {"hung host": asyncio.Event(), "loaded host": asyncio.Event()}
        node = _node(desk)
        node.readings_wait_s = 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(CLOSE_S), asyncio.TaskGroup() as tasks:
            run = tasks.create_task(node.run(1))
            await _until(store, lambda es: 0 in _invoiced(es))  # complete: at once
            await quiet.until_tried(2)
            assert sorted(quiet.tried) == ["hung host", "loaded host"]  # both at once
            assert 1 not in _invoiced(await store.entries())  # no sync yet: not invoiced
            quiet.gates["loaded host"].set()  # the second host answers
            await run
        assert loop.time() - started < SYNC_ATTEMPT_S  # the hung round's deadline never came
        assert quiet.cancelled == ["hung host"]  # its round is not left running
        assert sorted(_invoiced(await store.entries())) == [0, 1]
        await store.close()
    finally:
        await rig.close()


async def test_hosts_that_fail_the_sync_are_tried_again(tmp_path: Path) -> None:
    """Every host of the site failed the round after the period's end (streams
    that do not open under load): the utility tries again, backing off, and
    invoices after the first round that succeeds."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        quiet = _quiet(desk)
        quiet.hosts = ["a", "b"]
        quiet.fails = {"a": 2, "b": 2}
        node = _node(desk)
        node.readings_wait_s = 0.0
        async with asyncio.timeout(CLOSE_S):
            await node.run(1)
        assert quiet.tried.count("a") == 3  # two attempts failed, the third succeeded
        assert quiet.fails == {"a": 0, "b": 0}
        # A host slower than the first deadline is given longer each attempt.
        assert quiet.deadlines[:4] == [SYNC_ATTEMPT_S] * 2 + [SYNC_ATTEMPT_S * 2] * 2
        assert quiet.deadlines[4] == SYNC_ATTEMPT_S * 4
        assert sorted(_invoiced(await store.entries())) == [0, 1]
        await store.close()
    finally:
        await rig.close()


async def test_a_device_revoked_or_enrolled_while_it_runs_is_not_or_is_waited_for(
    tmp_path: Path,
) -> None:
    """Owner entries reach a running utility (its entries file, replication): the
    readings wait follows them. A revoked device's last reading never comes: it
    is not waited for (the wait here is endless); a device enrolled since the
    start is."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)  # device 1 misses its last reading
        assert desk.awaited_devices() == [0, 1]
        owner = rig.site.chain(Author.owner())
        await store.ingest_many([owner.next(Revoke(Role.DEVICE, 1, 1, "stolen"), period=0).raw])
        assert desk.awaited_devices() == [0]
        node = _node(desk)
        async with asyncio.timeout(CLOSE_S):
            await node.run(1)
        assert sorted(e.body.device for e in node.invoiced if isinstance(e.body, Invoice)) == [0, 1]
        late = Signer.generate()
        enrol = Enrol(Role.DEVICE, rig.site.max_device_index + 1, late.pubkey, "fridge", 0)
        await store.ingest_many([owner.next(enrol, period=0).raw])
        assert desk.awaited_devices() == [0, rig.site.max_device_index + 1]
        await store.close()
    finally:
        await rig.close()


class _GatedNode:
    """The utility's fake lnd, whose invoice of device ``d`` is created only once
    ``gates[d]`` opens (or fails with ``failure`` then); counts the calls in flight."""

    def __init__(self, node: FakeNode, devices: tuple[int, ...]) -> None:
        self.node = node
        self.gates = {d: asyncio.Event() for d in devices}
        self.in_flight: set[int] = set()
        self.both_in_flight = asyncio.Event()
        self.arrived = asyncio.Event()  # a call reached lnd (cleared by the test)
        self.peak = 0  # most calls in flight at once
        self.failure: dict[int, Exception] = {}

    async def add_invoice(
        self, amount_msat: int, memo: str, *, expiry_s: int = 3600, preimage: bytes | None = None
    ) -> LnInvoice:
        device = int(memo.split(" device ")[1].split()[0])
        self.in_flight.add(device)
        self.peak = max(self.peak, len(self.in_flight))
        self.arrived.set()
        if self.in_flight == set(self.gates):
            self.both_in_flight.set()
        try:
            await self.gates[device].wait()
            if device in self.failure:
                raise self.failure[device]
            return await self.node.add_invoice(
                amount_msat, memo, expiry_s=expiry_s, preimage=preimage
            )
        finally:
            self.in_flight.discard(device)


async def test_a_periods_invoices_are_created_at_once_and_each_delivered_when_logged(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        gated = _GatedNode(rig.utility_node, (0, 1))
        desk.invoicer.node = cast(LightningNode, gated)
        delivered: list[Entry] = []
        first_delivered = asyncio.Event()

        async def deliver(entry: Entry) -> None:
            delivered.append(entry)
            first_delivered.set()

        async with asyncio.timeout(CLOSE_S), asyncio.TaskGroup() as tasks:
            issuing = tasks.create_task(
                desk.invoicer.invoice_period(0, timestamp_ms=T0_MS, deliver=deliver)
            )
            await gated.both_in_flight.wait()  # both lnd calls at once, not one after the other
            gated.gates[1].set()
            await first_delivered.wait()
            # Device 1's invoice is logged and delivered while device 0's is still on lnd.
            assert [e.body.device for e in delivered if isinstance(e.body, Invoice)] == [1]
            assert gated.in_flight == {0}
            gated.gates[0].set()
        written = issuing.result()
        assert [e.body.device for e in written if isinstance(e.body, Invoice)] == [
            1,
            0,
        ]  # log order
        assert delivered == written
        await store.close()
    finally:
        await rig.close()


async def test_invoicing_is_bounded_by_its_concurrency(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        gated = _GatedNode(rig.utility_node, (0, 1))
        desk.invoicer.node = cast(LightningNode, gated)
        desk.invoicer.concurrency = 1
        async with asyncio.timeout(CLOSE_S), asyncio.TaskGroup() as tasks:
            issuing = tasks.create_task(desk.invoicer.invoice_period(0, timestamp_ms=T0_MS))
            for _ in range(2):  # one at a time: open the gate of the one that arrived
                await gated.arrived.wait()
                gated.arrived.clear()
                (waiting,) = gated.in_flight
                gated.gates[waiting].set()
        assert len(issuing.result()) == 2
        assert gated.peak == 1
        with pytest.raises(ConfigError):
            Invoicer(site=rig.site.identity, store=store, writer=desk.writer,
                     node=rig.utility_node, tariff=TARIFF, secret=b"s" * 32,
                     concurrency=0)  # fmt: skip
        await store.close()
    finally:
        await rig.close()


async def test_a_crash_mid_invoicing_leaves_each_invoice_issued_once(tmp_path: Path) -> None:
    """lnd fails one invoice while the other is in flight: the call raises that
    error (not a group); the next call issues only what is missing, the invoice
    already created on lnd again under its derived preimage, never a second one."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        gated = _GatedNode(rig.utility_node, (0, 1))
        gated.failure[0] = InvoiceError("lnd refused")
        desk.invoicer.node = cast(LightningNode, gated)
        async with asyncio.timeout(CLOSE_S):
            for gate in gated.gates.values():
                gate.set()
            with pytest.raises(InvoiceError, match="lnd refused"):
                await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        desk.invoicer.node = rig.utility_node  # restarted, lnd well again
        again = await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        third = await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        invoices = [e.body for e in await store.entries() if isinstance(e.body, Invoice)]
        assert sorted(b.device for b in invoices) == [0, 1]  # each once
        assert third == []
        assert len({b.payment_hash for b in invoices}) == 2
        on_lnd = [i for i in rig.ln.invoices.values() if i.node is rig.utility_node]
        assert len(on_lnd) == 2  # one lnd invoice per (device, period)
        assert again  # what the crash left out
        await store.close()
    finally:
        await rig.close()


class _Killed(Exception):
    """The utility killed (in a test)."""


class _KilledAfterLnd:
    """The utility's lnd, with the utility killed right after lnd created the
    invoice of a device in ``devices``, before the invoicer could log it."""

    def __init__(self, node: FakeNode, devices: frozenset[int]) -> None:
        self.node = node
        self.devices = devices

    async def add_invoice(
        self, amount_msat: int, memo: str, *, expiry_s: int = 3600, preimage: bytes | None = None
    ) -> LnInvoice:
        made = await self.node.add_invoice(amount_msat, memo, expiry_s=expiry_s, preimage=preimage)
        if int(memo.split(" device ")[1].split()[0]) in self.devices:
            raise _Killed(f"killed after lnd created {made.payment_hash[:12]}")
        return made


async def _killed_invoicing(rig: Rig, desk: SiteDesk) -> None:
    """The utility, past the readings wait, invoices device 1 for what is logged
    (its last reading missing) and is killed after lnd created that invoice,
    before its entry; device 1's last reading then reaches the replica (and the
    utility is started again, on the same lnd)."""
    desk.invoicer.node = cast(LightningNode, _KilledAfterLnd(rig.utility_node, frozenset({1})))
    with pytest.raises(_Killed):
        await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
    assert 1 not in _invoiced(await desk.store.entries())
    dev1 = rig.devices[1]
    await dev1.meter(0, 200, interval=1)
    await desk.store.ingest_many(await dev1.store.export())
    desk.invoicer.node = rig.utility_node


def _lnd_invoices(rig: Rig, device: int) -> list[LnInvoice]:
    """The utility lnd's invoices of ``device`` (period 0), in creation order."""
    memo = invoice_memo(rig.site_id, device, 0)
    return [
        i.view() for i in rig.ln.invoices.values() if i.node is rig.utility_node and i.memo == memo
    ]


async def test_a_bill_changed_before_a_restart_revises_the_unlogged_invoice(
    tmp_path: Path,
) -> None:
    """The unlogged lnd invoice of the old bill was never delivered: the restarted
    utility cancels it on lnd and invoices the new bill once, under the next
    revision's preimage (before, lnd's "exists" refused it at every restart); the
    device accepts and pays it once."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)  # device 1 misses its last reading
        await rig.start()
        await _killed_invoicing(rig, desk)
        (old,) = _lnd_invoices(rig, 1)
        again = await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        assert 1 in [e.body.device for e in again if isinstance(e.body, Invoice)]
        body = _invoiced(await store.entries())[1].body
        assert isinstance(body, Invoice)
        dev1 = rig.devices[1]
        full = desk.invoicer.due(await dev1.store.entries(), device=1, period=0)
        assert (body.energy_wh, body.amount_msat) == (500, full.amount_msat)
        assert old.value_msat < full.amount_msat  # revision 0 billed the 300 Wh logged then
        revision_1 = invoice_preimage(b"s" * 32, rig.site_id, 1, 0, revision=1)
        assert body.payment_hash == hashlib.sha256(revision_1).digest()
        states = [(i.payment_hash, i.state) for i in _lnd_invoices(rig, 1)]
        assert states == [
            (old.payment_hash, InvoiceState.CANCELED),
            (body.payment_hash.hex(), InvoiceState.OPEN),
        ]
        assert await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS) == []
        await dev1.store.ingest_many(await store.export())
        (paid,) = await rig.settler(dev1).settle(0, timestamp_ms=T0_MS)
        assert paid.outcome is Settlement.PAID
        (again_paid,) = await rig.settler(dev1).settle(0, timestamp_ms=T0_MS)
        assert again_paid.outcome is Settlement.ALREADY_PAID
        report = await rig.reconcile()
        assert report.ok, report.problems
        assert rig.utility_node.local_msat - rig.before["utility"].local_msat == full.amount_msat
        await store.close()
    finally:
        await rig.close()


async def test_an_unlogged_invoice_paid_for_another_bill_stops_the_utility(
    tmp_path: Path,
) -> None:
    """Someone paid the unlogged invoice of the old bill (nobody was given it):
    the restarted utility neither cancels, replaces nor logs it, and stops with
    an error naming it, at every restart; the utility holds that payment only."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        await rig.start()
        await _killed_invoicing(rig, desk)
        (old,) = _lnd_invoices(rig, 1)
        await rig.mallory.pay_invoice(old.payment_request, fee_limit_msat=0)
        for _ in range(2):
            with pytest.raises(UnloggedInvoiceError, match=f"{old.payment_hash} .* is SETTLED"):
                await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        assert 1 not in _invoiced(await store.entries())
        (paid,) = _lnd_invoices(rig, 1)  # no second invoice of the period
        assert (paid.payment_hash, paid.state) == (old.payment_hash, InvoiceState.SETTLED)
        gained = rig.utility_node.local_msat - rig.before["utility"].local_msat
        assert gained == old.value_msat
        await store.close()
    finally:
        await rig.close()


async def test_an_unlogged_invoice_paid_for_the_bill_is_logged_as_is(tmp_path: Path) -> None:
    """The bill did not change: the paid unlogged invoice is the one it asks for,
    logged as is at the restart, no other created; the device cannot pay it
    again (lnd refuses a settled invoice): paid once."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        await rig.start()
        desk.invoicer.node = cast(LightningNode, _KilledAfterLnd(rig.utility_node, frozenset({1})))
        with pytest.raises(_Killed):
            await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        desk.invoicer.node = rig.utility_node
        (old,) = _lnd_invoices(rig, 1)
        await rig.mallory.pay_invoice(old.payment_request, fee_limit_msat=0)
        await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        body = _invoiced(await store.entries())[1].body
        assert isinstance(body, Invoice)
        assert (body.payment_hash.hex(), body.amount_msat) == (old.payment_hash, old.value_msat)
        assert [i.payment_hash for i in _lnd_invoices(rig, 1)] == [old.payment_hash]
        dev1 = rig.devices[1]
        await dev1.store.ingest_many(await store.export())
        (result,) = await rig.settler(dev1).settle(0, timestamp_ms=T0_MS)
        assert result.outcome is Settlement.FAILED
        assert dev1.node.local_msat == rig.before["dev1"].local_msat
        gained = rig.utility_node.local_msat - rig.before["utility"].local_msat
        assert gained == old.value_msat
        await store.close()
    finally:
        await rig.close()


async def test_an_expired_unlogged_invoice_is_replaced_and_the_replacement_found_again(
    tmp_path: Path,
) -> None:
    """lnd cancelled the unlogged invoice (it expired while the utility was down):
    its hash is burned, revision 1 is created; killed again before its entry,
    the next start finds revision 1 (after the cancelled revision 0) and logs it,
    no revision 2."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        killing = cast(LightningNode, _KilledAfterLnd(rig.utility_node, frozenset({1})))
        desk.invoicer.node = killing
        with pytest.raises(_Killed):
            await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        (expired,) = _lnd_invoices(rig, 1)
        await rig.utility_node.cancel_invoice(expired.payment_hash)  # as lnd at expiry
        with pytest.raises(_Killed):
            await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        desk.invoicer.node = rig.utility_node
        await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS)
        body = _invoiced(await store.entries())[1].body
        assert isinstance(body, Invoice)
        revision_1 = hashlib.sha256(
            invoice_preimage(b"s" * 32, rig.site_id, 1, 0, revision=1)
        ).hexdigest()
        on_lnd = [(i.payment_hash, i.state) for i in _lnd_invoices(rig, 1)]
        assert on_lnd == [
            (expired.payment_hash, InvoiceState.CANCELED),
            (revision_1, InvoiceState.OPEN),
        ]
        assert body.payment_hash.hex() == revision_1
        await store.close()
    finally:
        await rig.close()


class _ExpiresAtOnce:
    """A utility lnd on which every invoice is cancelled as soon as it is created."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node

    async def add_invoice(
        self, amount_msat: int, memo: str, *, expiry_s: int = 3600, preimage: bytes | None = None
    ) -> LnInvoice:
        made = await self.node.add_invoice(amount_msat, memo, expiry_s=expiry_s, preimage=preimage)
        await self.node.cancel_invoice(made.payment_hash)
        return await self.node.lookup_invoice(made.payment_hash)


async def test_revisions_are_bounded(tmp_path: Path) -> None:
    """An lnd on which every revision is cancelled does not keep the utility
    creating invoices: it stops after MAX_INVOICE_REVISIONS, nothing logged."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        desk.invoicer.node = cast(LightningNode, _ExpiresAtOnce(rig.utility_node))
        with pytest.raises(UnloggedInvoiceError, match=f"{MAX_INVOICE_REVISIONS} revisions"):
            await desk.invoicer.invoice_period(0, timestamp_ms=T0_MS, skip=frozenset({1}))
        assert _invoiced(await store.entries()) == {}
        assert len(_lnd_invoices(rig, 0)) == MAX_INVOICE_REVISIONS
        await store.close()
    finally:
        await rig.close()


def test_revision_0_of_an_invoice_preimage_is_the_first_derivation() -> None:
    """Logs and lnd invoices of utilities before revisions stay valid: revision 0
    is HMAC-SHA256(secret, "p2pgrid/invoice/v1/<site>/<device>/<period>");
    revision r > 0 appends "/<r>"."""
    secret = b"s" * 32
    first = hmac.new(secret, b"p2pgrid/invoice/v1/0a1b/3/7", hashlib.sha256).digest()
    second = hmac.new(secret, b"p2pgrid/invoice/v1/0a1b/3/7/2", hashlib.sha256).digest()
    assert invoice_preimage(secret, "0a1b", 3, 7) == first
    assert invoice_preimage(secret, "0a1b", 3, 7, revision=0) == first
    assert invoice_preimage(secret, "0a1b", 3, 7, revision=2) == second
    revisions = {invoice_preimage(secret, "0a1b", 3, 7, revision=r) for r in range(4)}
    assert len(revisions) == 4


async def test_the_node_pushes_each_invoice_to_its_device(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        node = _node(desk)
        written = await node.issue(desk, 0)
        pushed = _quiet(desk).pushed
        assert sorted(
            (e.body.device, peer) for e, peer in pushed if isinstance(e.body, Invoice)
        ) == [
            (0, "host of device 0"),
            (1, "host of device 1"),
        ]
        assert sorted(e.seq for e in _quiet(desk).published) == sorted(e.seq for e in written)
        await store.close()
    finally:
        await rig.close()


def _live_node(*desks: SiteDesk, wait_s: float) -> UtilityNode:
    """A utility run until stopped, period 0 just over (a minute per interval:
    period 1 does not end while the test runs)."""
    clock = PeriodClock(2, 60.0, time.time() - 120.0)
    return UtilityNode(
        clock=clock,
        model_ms=lambda i: T0_MS + i * QUARTER_MS,
        sites=list(desks),
        readings_wait_s=wait_s,
    )


async def _until(store: LogStore, predicate: Callable[[list[Entry]], bool]) -> list[Entry]:
    """The store's entries once ``predicate`` holds for them (woken by its changes)."""
    while not predicate(entries := await store.entries()):
        await store.wait_changed(store.digest())
    return entries


def _invoiced(entries: list[Entry], period: int = 0) -> dict[int, Entry]:
    return {e.body.device: e for e in entries if isinstance(e.body, Invoice) and e.period == period}


def _budgets(entries: list[Entry]) -> list[int]:
    return [e.period for e in entries if isinstance(e.body, Budget)]


async def test_a_last_reading_after_the_wait_is_invoiced_in_full_in_a_run_until_stopped(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)  # device 1 misses its last reading
        node = _live_node(desk, wait_s=WAIT_S)
        async with asyncio.timeout(CLOSE_S), asyncio.TaskGroup() as tasks:
            running = tasks.create_task(node.run(None))
            # Past the wait: device 0 invoiced, period 1's budget granted, device 1 not.
            entries = await _until(store, lambda es: 1 in _budgets(es))
            assert sorted(_invoiced(entries)) == [0]
            dev1 = rig.devices[1]
            await dev1.meter(0, 50, interval=1)  # its uplink is back
            await store.ingest_many(await dev1.store.export())
            entries = await _until(store, lambda es: 1 in _invoiced(es))
            running.cancel()
        invoice = _invoiced(entries)[1]
        assert isinstance(invoice.body, Invoice)
        full = desk.invoicer.due(await dev1.store.entries(), device=1, period=0)
        assert (invoice.body.amount_msat, invoice.body.energy_wh) == (full.amount_msat, 350)
        assert _budgets(entries) == [0, 1]
        await store.close()
    finally:
        await rig.close()


async def test_a_device_down_at_the_periods_end_is_complete_with_its_next_entry(
    tmp_path: Path,
) -> None:
    """Device 1 never logs period 0's last interval (it was down); its first
    reading of period 1 ends its period 0: invoiced then, with no readings wait."""
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        node = _live_node(desk, wait_s=NEVER_S)
        async with asyncio.timeout(CLOSE_S), asyncio.TaskGroup() as tasks:
            running = tasks.create_task(node.run(1))
            entries = await _until(store, lambda es: 0 in _invoiced(es))
            assert sorted(_invoiced(entries)) == [0]  # device 0 did not wait for device 1
            dev1 = rig.devices[1]
            await dev1.meter(1, 70, interval=2)
            await store.ingest_many(await dev1.store.export())
            await running  # no readings wait: both complete
        invoices = _invoiced(await store.entries())
        assert sorted(invoices) == [0, 1]
        body = invoices[1].body
        assert isinstance(body, Invoice)
        assert body.energy_wh == 300  # period 0 only
        await store.close()
    finally:
        await rig.close()


async def test_an_incomplete_device_holds_no_other_site(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    waiting, ready = Rig(tmp_path / "a"), Rig(tmp_path / "b")
    try:
        store_a, desk_a = await _utility(waiting, tmp_path / "a")  # device 1 incomplete
        desk_a.name = "a"
        store_b, desk_b = await _utility(ready, tmp_path / "b")
        desk_b.name = "b"
        dev1 = ready.devices[1]
        await dev1.meter(0, 10, interval=1)
        await store_b.ingest_many(await dev1.store.export())
        node = _live_node(desk_a, desk_b, wait_s=NEVER_S)
        async with asyncio.timeout(CLOSE_S), asyncio.TaskGroup() as tasks:
            running = tasks.create_task(node.run(None))
            entries_b = await _until(store_b, lambda es: 1 in _budgets(es))
            entries_a = await _until(store_a, lambda es: 0 in _invoiced(es))
            running.cancel()
        assert sorted(_invoiced(entries_b)) == [0, 1]
        assert sorted(_invoiced(entries_a)) == [0]
        assert _budgets(entries_a) == [0]  # site a still waits (the wait is endless here)
        await store_a.close()
        await store_b.close()
    finally:
        await waiting.close()
        await ready.close()


class _Away:
    """An lnd that never answers."""

    async def add_invoice(self, *args: object, **kwargs: object) -> LnInvoice:
        raise NodeUnreachable("utility-lnd: ConnectError")


async def test_invoicing_waits_for_an_absent_lnd_as_long_as_configured(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    try:
        store, desk = await _utility(rig, tmp_path)
        away = Invoicer(
            site=rig.site.identity,
            store=store,
            writer=desk.writer,
            node=cast(LightningNode, _Away()),
            tariff=TARIFF,
            secret=b"s" * 32,
            lnd_away_wait_s=0.3,
        )
        with pytest.raises(NodeUnreachable, match=r"away for 0\.3s"):
            await away.invoice_period(0, timestamp_ms=T0_MS)
        assert [e for e in await store.entries() if isinstance(e.body, Invoice)] == []
        await store.close()
    finally:
        await rig.close()
