"""Benchmark: a period's settlement end to end vs a raw lnd payment on the same channel.

Brings up its own regtest stack (a utility and ``--devices`` devices, one channel
each to the utility; or uses ``--stack NAME`` if it is up) and, in the same run:

- **baseline**: raw lnd payments, device -> utility over the device's channel:
  the utility's lnd makes a fresh invoice (not timed), the device pays it with
  one raw httpx call to ``/v2/router/send`` (timed): once per round from one
  device (``sequential``), and from every device at once (``N at once``);
- **settlement**: the product's path over real parts, all in this process:
  one libp2p host, SQLite replica and :class:`~p2pgrid.replication.NetReplica`
  per party (the utility and each device), the utility's
  :class:`~p2pgrid.utility.node.UtilityNode` issuing a period's invoices
  (:meth:`~p2pgrid.utility.node.UtilityNode.issue`) and each device's
  :class:`~p2pgrid.agent.device.DeviceAgent` settling it
  (:meth:`~p2pgrid.agent.device.DeviceAgent.settle_when_invoiced`: wait for the
  invoice entry, check it against its replica and on its lnd, pay through the
  paymaster, log and announce the ``payment`` entry). Before each round the
  devices log a meter reading of the round's period and the utility's replica
  receives it (not timed); a round is one period, its invoices issued while
  every device waits for its own.

Every replica's store tells the bench when each invoice and payment entry joins
it (:meth:`~p2pgrid.ledger.LogStore.subscribe`), and each device's Lightning
node is wrapped to note when its check (``decode``) and its payment end. Per
invoice it prints the phases, as p50 over rounds and devices:

    issue       invoicing of the period began -> invoice entry in the utility's log
    to device   invoice entry logged -> in the device's replica
    check       in the device's replica -> decoded and checked (bill, lnd decode)
    pay (lnd)   checked -> lnd reports the payment succeeded
    log         lnd succeeded -> payment entry in the device's log
    spread      payment entry logged -> in every replica (utility and devices)
    end to end  invoice entry logged -> payment entry in every replica

and the ratio end to end / raw payment of the same mode (target of issue 14: 1.5),
and the CPU time this process spent per round. ``--flood-publish alternate``
switches every host's flood publishing (docs/protocol-net.md, section 1) off
and on in alternate rounds and prints each setting apart: off is the old path
(the mesh at once, pushes to the members outside it), under the same load;
``--first-hop alternate`` does the same with ``NetConfig.first_hop_claims``
(off: every relay goes to the whole mesh, as py-libp2p relays; on: not to the
peers the author sent the message to, docs/protocol-net.md section 1).
``--replicas R`` adds R devices that use nothing (a host and a replica each, no
lnd): with more than 6 peers a host's gossipsub mesh (degree 6) no longer holds
every peer, which is where waiting for gossip costs a heartbeat.

    .venv/bin/python bench/settlement.py --devices 3 --replicas 7 --rounds 10

It also prints the gossipsub RPCs all parties sent and the sync requests they
served per round. ``--anti-entropy-interval`` sets every replica's periodic
anti-entropy (default: the product's, as deployed; the bench ran at 2 s before
2026-12-02), ``--mesh-degree`` every host's gossipsub degree, and ``--profile
PATH`` writes a cProfile of the settlement rounds of each mode.

All parties share this process's event loop (and the machine's cores with the
lnds and btcd); in a deployment each agent is its own process. ``--processes``
runs each of the ``--replicas`` members in its own OS process
(``bench/settlement_replica.py``: a host, a replica and a store, as above), as
deployed; the utility and the paying devices stay in this process (the probes of
check and payment are there). A member reports on its stdout when each invoice
and payment entry joins its store, stamped with ``time.time()``: every mark of
the bench is on that wall clock (one machine, one clock), so ``spread`` ends when
the last process, this one or a member's, holds the entry. The CPU line then
adds the members' processes' CPU per round (from ``/proc``), and the RPC counts
include theirs.

    .venv/bin/python bench/settlement.py --devices 4 --replicas 6 --rounds 10 --processes

The CPU lines read every process a round runs on: this one, the members' and the
stack's daemons (btcd and every lnd, ``/proc/PID/stat``), for the raw payments, the
whole round and its timed part (from the invoicing until every payment entry is in
every replica), each with its **floor**, the CPU divided by the machine's cores (a
round cannot take less wall time), next to the target (1.5 x the raw p50); after
the rounds, every process's CPU per second while nothing is settled.
``--keep-connections alternate`` closes the lnd clients' payment streams at their
final update in alternate rounds (``lnd.STREAM_END_S = 0``, as before 2026-12-02:
the next call opens a new TLS connection).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import hashlib
import json
import logging
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from lnd_payments import raw_payer  # the baseline: one /v2/router/send per payment
from settlement_replica import MemberSpec, net_config

from p2pgrid.agent.device import AgentParts, DeviceAgent, DeviceProfile, Metering
from p2pgrid.agent.intents import IntentBook
from p2pgrid.agent.paymaster import Paymaster
from p2pgrid.billing import BillingPeriod, FlatTariff, PeriodClock
from p2pgrid.identity import UTILITY_NET_INDEX, Role, Signer, SiteIdentity
from p2pgrid.jsonlines import MAX_LINE_BYTES, STOP_TIMEOUT_S, ChildProcess, ProcessFailed
from p2pgrid.ledger import (
    Author,
    Body,
    Enrol,
    Entry,
    Invoice,
    LogChange,
    LogStore,
    LogWriter,
    MeterReading,
    Payment,
    sign_entry,
)
from p2pgrid.ledger.entry import GENESIS_PREV
from p2pgrid.lightning import (
    DecodedInvoice,
    LndClient,
    NodeWatch,
    WatchedNode,
)
from p2pgrid.lightning import Invoice as LnInvoice
from p2pgrid.lightning import Payment as LnPayment
from p2pgrid.lightning import lnd as lnd_module
from p2pgrid.lightning.lnd import STREAM_END_S
from p2pgrid.market import Priority, SurplusPolicy
from p2pgrid.meter import SeriesSource
from p2pgrid.net import DeviceKey, NetConfig, TrioBridge
from p2pgrid.regtest import Stack, StackConfig, ensure_daemons
from p2pgrid.regtest import process as regtest_process
from p2pgrid.regtest.topology import utility_star
from p2pgrid.replication import NodeParts, NodeSpec, ReplicaConfig, open_node_parts
from p2pgrid.testing.probe_driver import cpu_seconds
from p2pgrid.utility import Invoicer
from p2pgrid.utility.node import SiteDesk, UtilityNode

TARIFF = FlatTariff(250_000)  # msat per kWh: 250 msat per Wh
ENERGY_WH = 4_000  # per device and period: a 1,000 sat invoice
T0_MS = 1_700_000_000_000
QUARTER_MS = 900_000
#: Deadline of one round (every payment entry in every replica).
ROUND_TIMEOUT_S = 120.0
#: Per member process: an interpreter importing p2pgrid and libp2p (~3 s of CPU),
#: on a machine whose two cores other work shares.
START_S_PER_PROCESS = 30.0
PHASES = ("issue", "to device", "check", "pay (lnd)", "log", "spread", "end to end")


def owner_chain(owner: Signer, identity: SiteIdentity, bodies: Sequence[Body]) -> list[Entry]:
    """The owner's chain of ``bodies`` (its enrolments), signed in order from genesis."""
    chain: list[Entry] = []
    for body in bodies:
        chain.append(
            sign_entry(
                owner,
                identity.site_hash,
                author=Author.owner(),
                seq=len(chain) + 1,
                prev=chain[-1].id if chain else GENESIS_PREV,
                period=0,
                timestamp_ms=T0_MS + len(chain),
                body=body,
            )
        )
    return chain


def device_names(n: int) -> tuple[str, ...]:
    return tuple(f"dev-{chr(ord('a') + i)}" for i in range(n))


# -- the baseline: raw lnd ---------------------------------------------------------


async def raw_round(
    utility: LndClient, payers: list[Callable[[str], Awaitable[None]]]
) -> list[float]:
    """Each payer pays one fresh 1,000 sat invoice, all at once; their latencies (s)."""
    invoices = [
        (await utility.add_invoice(ENERGY_WH * 250, "bench raw")).payment_request for _ in payers
    ]

    async def timed(pay: Callable[[str], Awaitable[None]], request: str) -> float:
        t0 = time.perf_counter()
        await pay(request)
        return time.perf_counter() - t0

    return list(await asyncio.gather(*(timed(p, r) for p, r in zip(payers, invoices, strict=True))))


# -- the probes --------------------------------------------------------------------


@dataclasses.dataclass
class Marks:
    """When each invoice and payment entry joined each store (``time.time()`` seconds:
    the members in child processes stamp theirs on the same clock)."""

    invoice_at: dict[bytes, dict[str, float]] = dataclasses.field(default_factory=dict)
    payment_at: dict[bytes, dict[str, float]] = dataclasses.field(default_factory=dict)
    checked_at: dict[str, float] = dataclasses.field(default_factory=dict)  # hex hash
    paid_at: dict[str, float] = dataclasses.field(default_factory=dict)

    def listener(self, store_name: str) -> Callable[[LogChange], None]:
        def heard(change: LogChange) -> None:
            now = time.time()
            for entry in change.appended:
                body = entry.body
                if isinstance(body, Invoice):
                    self.mark("invoice", body.payment_hash, store_name, now)
                elif isinstance(body, Payment):
                    self.mark("payment", body.payment_hash, store_name, now)

        return heard

    def mark(self, kind: str, payment_hash: bytes, store_name: str, at: float) -> None:
        """The entry of ``kind`` (invoice, payment) joined ``store_name``'s store ``at``."""
        of_kind = self.invoice_at if kind == "invoice" else self.payment_at
        of_kind.setdefault(payment_hash, {}).setdefault(store_name, at)


class TimedWallet:
    """A device's Lightning node that notes when the check's decode and the payment end."""

    def __init__(self, node: WatchedNode, marks: Marks) -> None:
        self.node = node
        self.marks = marks

    async def add_invoice(
        self,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        private: bool = False,
        preimage: bytes | None = None,
    ) -> LnInvoice:
        return await self.node.add_invoice(
            amount_msat, memo, expiry_s=expiry_s, private=private, preimage=preimage
        )

    async def decode_invoice(self, payment_request: str) -> DecodedInvoice:
        decoded = await self.node.decode_invoice(payment_request)
        self.marks.checked_at.setdefault(decoded.payment_hash, time.time())
        return decoded

    async def lookup_invoice(self, payment_hash: str) -> LnInvoice:
        return await self.node.lookup_invoice(payment_hash)

    async def cancel_invoice(self, payment_hash: str) -> None:
        await self.node.cancel_invoice(payment_hash)

    async def add_hold_invoice(
        self,
        payment_hash: str,
        amount_msat: int,
        memo: str,
        *,
        expiry_s: int = 3600,
        cltv_expiry: int = 80,
        private: bool = False,
    ) -> LnInvoice:
        return await self.node.add_hold_invoice(
            payment_hash, amount_msat, memo, expiry_s=expiry_s, cltv_expiry=cltv_expiry,
            private=private,
        )  # fmt: skip

    async def settle_invoice(self, preimage: bytes) -> None:
        await self.node.settle_invoice(preimage)

    async def pay_invoice(
        self, payment_request: str, *, fee_limit_msat: int, timeout_s: int = 60
    ) -> LnPayment:
        paid = await self.node.pay_invoice(
            payment_request, fee_limit_msat=fee_limit_msat, timeout_s=timeout_s
        )
        self.marks.paid_at.setdefault(paid.payment_hash, time.time())
        return paid

    async def track_payment(self, payment_hash: str) -> LnPayment:
        return await self.node.track_payment(payment_hash)

    async def list_payments(self) -> list[LnPayment]:
        return await self.node.list_payments()


# -- the members in their own processes (--processes) ------------------------------


class RemoteMember:
    """An idle member in its own OS process (``bench/settlement_replica.py``), seen
    from the bench: its entry events go into the bench's marks as they come."""

    def __init__(self, name: str, child: ChildProcess, marks: Marks) -> None:
        self.name = name
        self.child = child
        self.marks = marks
        self.peer_id = ""
        self._changed = asyncio.Condition()
        self._stats: asyncio.Future[tuple[int, int]] | None = None
        self._stopping = False
        self._done = asyncio.Event()

    @classmethod
    async def spawn(cls, spec: MemberSpec, tmp: Path, marks: Marks) -> RemoteMember:
        spec_path = tmp / f"{spec.name}.json"
        spec_path.write_text(json.dumps(dataclasses.asdict(spec)))
        log_path = tmp / f"{spec.name}.stderr"
        with log_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(Path(__file__).with_name("settlement_replica.py")),
                str(spec_path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=MAX_LINE_BYTES,
            )
        return cls(spec.name, ChildProcess(spec.name, proc, log_path), marks)

    async def ready(self) -> None:
        """Wait (under the caller's deadline) until it is on the log topic."""
        self.peer_id = (await self.child.expect("ready"))["peer_id"]

    async def read(self) -> None:
        """Fold its events into the marks until it stops."""
        try:
            while True:
                try:
                    event = await self.child.next_event()
                except ProcessFailed:
                    if self._stopping:
                        return
                    raise
                match event["event"]:
                    case "entry":
                        self.marks.mark(
                            event["kind"], bytes.fromhex(event["hash"]), self.name, event["at"]
                        )
                        async with self._changed:
                            self._changed.notify_all()
                    case "stats" if self._stats is not None:
                        self._stats.set_result(tuple(event[key] for key in TRAFFIC))
                    case "stopped":
                        return
                    case "error":
                        raise ProcessFailed(f"{self.name}: {event} (see {self.child.log_path})")
        finally:
            self._done.set()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def traffic(self) -> tuple[int, ...]:
        """:data:`TRAFFIC` of its host and replica so far."""
        self._stats = asyncio.get_running_loop().create_future()
        await self.child.send("stats")
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            return await self._stats

    def cpu_s(self) -> float:
        return cpu_seconds(self.child.pid)

    async def stop(self) -> None:
        self._stopping = True
        await self.child.send("stop")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self._done.wait()
        await self.child.kill()


# -- the site ----------------------------------------------------------------------


def bench_key(run: bytes, label: str) -> Signer:
    return Signer.from_secret(hashlib.sha256(run + label.encode()).digest())


@dataclasses.dataclass
class Party:
    name: str
    parts: NodeParts
    writer: LogWriter


@dataclasses.dataclass
class Site:
    utility: UtilityNode
    desk: SiteDesk
    parties: list[Party]  # the utility first
    agents: list[DeviceAgent]
    remotes: list[RemoteMember]  # the idle members in their own processes

    @property
    def stores(self) -> list[LogStore]:
        return [p.parts.store for p in self.parties]


async def open_site(
    exits: contextlib.AsyncExitStack,
    stack: Stack,
    names: tuple[str, ...],
    tmp: Path,
    marks: Marks,
    *,
    replicas: int,
    flood_publish: bool = True,
    anti_entropy_interval_s: float = ReplicaConfig.anti_entropy_interval_s,
    mesh_degree: int | None = None,
    processes: bool = False,
) -> Site:
    run = secrets.token_bytes(16)  # fresh keys and invoice secret: no preimage of a past run
    owner = bench_key(run, "owner")
    identity = SiteIdentity(owner.pubkey)
    utility_key = bench_key(run, "utility")
    keys = [bench_key(run, f"device {i}") for i in range(len(names) + replicas)]
    readers = [f"replica-{i}" for i in range(replicas)]
    bodies = [Enrol(Role.UTILITY, 0, utility_key.pubkey, "utility", 0)]
    bodies += [
        Enrol(Role.DEVICE, i, k.pubkey, [*names, *readers][i], 0) for i, k in enumerate(keys)
    ]
    provision = [e.raw for e in owner_chain(owner, identity, bodies)]
    bridge = TrioBridge()
    await bridge.start()
    exits.push_async_callback(bridge.stop)

    async def node(name: str, index: int, signer: Signer, bootstrap: tuple[str, ...]) -> NodeParts:
        parts = await open_node_parts(
            exits,
            NodeSpec(
                name=name,
                db_path=tmp / f"{name}.db",
                site=identity,
                net=net_config(bootstrap, flood_publish=flood_publish, mesh_degree=mesh_degree),
                key=DeviceKey(identity, index, signer),
                replica=ReplicaConfig(anti_entropy_interval_s=anti_entropy_interval_s),
                provision=provision,
                bridge=bridge,
            ),
        )
        parts.store.subscribe(marks.listener(name))
        return parts

    utility_lnd = await exits.enter_async_context(stack.client("utility"))
    utility_pubkey = (await utility_lnd.get_info()).pubkey
    u_parts = await node("utility", UTILITY_NET_INDEX, utility_key, ())
    u_writer = LogWriter(u_parts.store, utility_key, Author.utility())
    desk = SiteDesk(
        name="bench",
        budget_msat=0,
        devices=tuple(range(len(names))),
        store=u_parts.store,
        writer=u_writer,
        replica=u_parts.replica,
        invoicer=Invoicer(
            site=identity,
            store=u_parts.store,
            writer=u_writer,
            node=utility_lnd,
            tariff=TARIFF,
            secret=secrets.token_bytes(32),
            name="utility/bench",
        ),
    )
    clock = PeriodClock(intervals_per_period=4)
    un = UtilityNode(clock=clock, model_ms=lambda i: T0_MS + i * QUARTER_MS, sites=[desk])
    parties = [Party("utility", u_parts, u_writer)]
    agents = []
    for i, name in enumerate(names):
        parts = await node(name, i, keys[i], u_parts.host.addrs)
        writer = LogWriter(parts.store, keys[i], Author.device(i))
        client = await exits.enter_async_context(stack.client(name))
        watch = NodeWatch(name)
        wallet = TimedWallet(WatchedNode(client, watch), marks)
        intents = await IntentBook.open(tmp / f"{name}.intents.db", name=name)
        exits.push_async_callback(intents.close)
        agent = DeviceAgent(
            DeviceProfile(
                name, i, identity.site_id, Priority.NORMAL, SurplusPolicy.CARRY_OVER, utility_pubkey
            ),
            AgentParts(
                store=parts.store,
                writer=writer,
                replica=parts.replica,
                peers=parts.host,
                node=wallet,
                paymaster=Paymaster(node=wallet, writer=writer, intents=intents, name=name),
                watch=watch,
            ),
            Metering(TARIFF, SeriesSource((0,)), lambda interval: interval),
            clock,
        )
        agent.install()
        await agent.recover()
        parties.append(Party(name, parts, writer))
        agents.append(agent)
    remotes: list[RemoteMember] = []
    for j, reader in enumerate(readers):  # devices that use nothing: replicas only
        i = len(names) + j
        if not processes:
            parts = await node(reader, i, keys[i], u_parts.host.addrs)
            parties.append(Party(reader, parts, LogWriter(parts.store, keys[i], Author.device(i))))
            continue
        spec = MemberSpec(
            name=reader,
            index=i,
            secret=keys[i].secret.hex(),
            owner_pubkey=owner.pubkey.hex(),
            provision=[raw.hex() for raw in provision],
            bootstrap=list(u_parts.host.addrs),
            utility_peer_id=u_parts.host.peer_id,
            db_path=str(tmp / f"{reader}.db"),
            flood_publish=flood_publish,
            mesh_degree=mesh_degree,
            anti_entropy_interval_s=anti_entropy_interval_s,
        )
        remote = await RemoteMember.spawn(spec, tmp, marks)
        exits.push_async_callback(remote.child.kill)  # if it never gets ready
        remotes.append(remote)
    if remotes:
        tasks = await exits.enter_async_context(asyncio.TaskGroup())
        async with asyncio.timeout(START_S_PER_PROCESS * len(remotes)):
            for remote in remotes:
                await remote.ready()
        for remote in remotes:
            tasks.create_task(remote.read())
            exits.push_async_callback(remote.stop)  # before the task group ends
    topic = u_parts.replica.topic
    for party in parties[1:]:  # every device on the log topic with the utility
        await party.parts.host.wait_for_peer(u_parts.host.peer_id, topic, timeout_s=60)
        await u_parts.host.wait_for_peer(party.parts.host.peer_id, topic, timeout_s=60)
    for remote in remotes:  # each has waited for the utility before it got ready
        await u_parts.host.wait_for_peer(remote.peer_id, topic, timeout_s=60)
    return Site(un, desk, parties, agents, remotes)


async def holds(store_party: Party, predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(ROUND_TIMEOUT_S):
        await store_party.parts.replica.wait_until(predicate)


async def settle_round(
    site: Site,
    period: int,
    devices: list[int],
    marks: Marks,
    meter: CpuMeter | None = None,
    timed_cpu: list[CpuSample] | None = None,
) -> list[dict[str, float]]:
    """One period: ``devices`` meter, the utility invoices, they settle. The phases
    of each invoice (ms). With a ``meter``, appends to ``timed_cpu`` the CPU of the
    timed part (from the period's invoicing until every payment entry is in every
    replica: issue and end to end, not the readings before it)."""
    utility = site.parties[0]
    for i in devices:
        agent = site.agents[i]
        start = T0_MS + period * 4 * QUARTER_MS
        await agent.writer.append(
            MeterReading(start, 900, ENERGY_WH, ENERGY_WH * 250),
            period=period,
            timestamp_ms=int(time.time() * 1000),
        )
        await agent.announce_new()
    for i in devices:  # the utility's replica has every reading (not timed)
        author, seq = Author.device(i), site.agents[i].store.heads()[Author.device(i)].seq
        store = utility.parts.store

        def has(author: Author = author, seq: int = seq, store: LogStore = store) -> bool:
            head = store.heads().get(author)
            return head is not None and head.seq >= seq

        await holds(utility, has)
    for i in devices:
        agent = site.agents[i]
        agent.periods[period] = BillingPeriod(period, owner=agent.name)
        await agent.close_period(period)
    timed0 = meter.sample() if meter is not None else None
    async with asyncio.timeout(ROUND_TIMEOUT_S), asyncio.TaskGroup() as tasks:
        settling = [tasks.create_task(site.agents[i].settle_when_invoiced(period)) for i in devices]
        began = time.time()
        issued = await site.utility.issue(site.desk, period)
    for task in settling:
        outcomes = [r.outcome.value for r in task.result()]
        if outcomes != ["paid"]:
            raise RuntimeError(f"a device did not pay its invoice: {outcomes}")
    hashes = [e.body.payment_hash for e in issued if isinstance(e.body, Invoice)]
    names = [p.name for p in site.parties] + [r.name for r in site.remotes]

    def has_all(name: str) -> Callable[[], bool]:
        return lambda: all(name in marks.payment_at.get(h, {}) for h in hashes)

    for party in site.parties:  # every payment entry in every replica
        await holds(party, has_all(party.name))
    for remote in site.remotes:
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            await remote.wait_until(has_all(remote.name))
    if meter is not None and timed0 is not None and timed_cpu is not None:
        timed_cpu.append(ms(meter.sample() - timed0))
    rows = []
    for entry in issued:
        body = entry.body
        assert isinstance(body, Invoice)
        h = body.payment_hash
        device = site.parties[1 + body.device].name
        logged = marks.invoice_at[h]["utility"]
        at_device = marks.invoice_at[h][device]
        checked = marks.checked_at[h.hex()]
        paid = marks.paid_at[h.hex()]
        payment_logged = marks.payment_at[h][device]
        everywhere = max(marks.payment_at[h][n] for n in names)
        rows.append(
            {
                "issue": logged - began,
                "to device": at_device - logged,
                "check": checked - at_device,
                "pay (lnd)": paid - checked,
                "log": payment_logged - paid,
                "spread": everywhere - payment_logged,
                "end to end": everywhere - logged,
            }
        )
    return [{k: v * 1000 for k, v in row.items()} for row in rows]


#: What :func:`traffic` sums: the gossipsub RPCs sent (queued), of which the
#: message copies and the IHAVEs, the relays skipped (the author had sent the
#: message to the peer: its first-hop record), and the sync requests served.
TRAFFIC = ("rpcs", "copies", "ihave", "skipped", "served")


async def traffic(site: Site) -> tuple[int, ...]:
    """:data:`TRAFFIC` so far, summed over the parties (those in child processes too)."""
    totals = [0] * len(TRAFFIC)
    for party in site.parties:
        net, served = party.parts.host.stats(), party.parts.replica.stats().requests_served
        counts = (
            net.rpcs_queued,
            net.messages_sent,
            net.ihave_sent,
            net.relays_skipped,
            served,
        )
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
    for remote in site.remotes:
        totals = [t + c for t, c in zip(totals, await remote.traffic(), strict=True)]
    return tuple(totals)


def children_cpu_s(site: Site) -> float:
    return sum(r.cpu_s() for r in site.remotes)


@dataclasses.dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by this process, the members' processes and the daemons,
    and the wall clock (``time.perf_counter()``) when they were read."""

    bench: float
    members: float
    daemons: float
    wall: float = 0.0

    def __sub__(self, other: CpuSample) -> CpuSample:
        return CpuSample(
            self.bench - other.bench,
            self.members - other.members,
            self.daemons - other.daemons,
            self.wall - other.wall,
        )

    @property
    def total(self) -> float:
        return self.bench + self.members + self.daemons


class CpuMeter:
    """Reads the CPU of every process a round runs on: this one, the members' (``--processes``)
    and the stack's daemons (btcd and every lnd, found by the stack's directory in their
    command lines; ``/proc/PID/stat``, in ticks of 10 ms)."""

    def __init__(self, site: Site, stack: Stack) -> None:
        self.site = site
        found = regtest_process.find(stack.config.dir)
        self.daemons = [d.pid for d in found]
        self.lnds = sum("--lnddir" in d.cmdline for d in found)

    def sample(self) -> CpuSample:
        return CpuSample(
            time.process_time(),
            children_cpu_s(self.site),
            sum(cpu_seconds(pid) for pid in self.daemons),
            time.perf_counter(),
        )

    async def idle_per_s(self, seconds: float) -> CpuSample:
        """CPU per second of every process while nothing is settled: the part of a round's
        CPU that is paid by the second (heartbeats, anti-entropy, pollers), not per entry."""
        cpu0 = self.sample()
        await asyncio.sleep(seconds)  # a measuring window, not a synchronisation
        cpu = self.sample() - cpu0
        return CpuSample(cpu.bench / cpu.wall, cpu.members / cpu.wall, cpu.daemons / cpu.wall)


def ms(sample: CpuSample) -> CpuSample:
    return CpuSample(
        sample.bench * 1000, sample.members * 1000, sample.daemons * 1000, sample.wall * 1000
    )


def cpu_floor_lines(label: str, cpu_ms: list[CpuSample], target_ms: float) -> list[str]:
    """The CPU of a round by process, and its floor on this machine's cores against
    ``target_ms``: a round that needs C ms of CPU cannot take less than C / cores of wall time."""
    bench = p50([c.bench for c in cpu_ms])
    members = p50([c.members for c in cpu_ms])
    daemons = p50([c.daemons for c in cpu_ms])
    total = p50([c.total for c in cpu_ms])
    wall = p50([c.wall for c in cpu_ms])
    cores = os.cpu_count() or 1
    floor = total / cores
    verdict = "ABOVE the target" if floor > target_ms else "below the target"
    return [
        f"{'CPU of ' + label:<26}{total:>9.1f} ms per round: bench {bench:.1f} + members "
        f"{members:.1f} + daemons {daemons:.1f}, in {wall:.1f} ms of wall time",
        f"{'CPU floor':<26}{floor:>9.1f} ms per round on {cores} cores, target "
        f"{target_ms:.1f} ms (1.5 x raw p50): floor {verdict}",
    ]


def keeps_connections(setting: str, n: int) -> bool:
    """Whether round ``n`` runs with the lnd clients' connections kept (``--keep-connections``)."""
    return setting == "on" or (setting == "alternate" and n % 2 == 1)


def p50(values: list[float] | list[int]) -> float:
    return statistics.median(values)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=3, help="devices that pay (1..10)")
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="more devices of the site that use nothing: replicas only (no lnd)",
    )
    parser.add_argument("--rounds", type=int, default=10, help="rounds of each mode")
    parser.add_argument("--stack", default=None, help="use this running stack")
    parser.add_argument(
        "--flood-publish",
        choices=("on", "off", "alternate"),
        default="on",
        help="hosts send their own messages to every subscriber (on), to the mesh (off), "
        "or off and on in alternate rounds, each setting reported apart",
    )
    parser.add_argument(
        "--first-hop",
        choices=("on", "off", "alternate"),
        default="on",
        help="hosts tag in each envelope they publish the peers they send it to, and relay "
        "nothing to the peers its author tagged (on, the product's default), or neither "
        "(off), or off and on in alternate rounds, each setting reported apart",
    )
    parser.add_argument(
        "--anti-entropy-interval",
        type=float,
        default=ReplicaConfig.anti_entropy_interval_s,
        help="mean seconds between a replica's periodic anti-entropy rounds "
        "(default: the product's, %(default)s)",
    )
    parser.add_argument(
        "--mesh-degree",
        type=int,
        default=None,
        help="gossipsub mesh degree D of every host (default: the product's NetConfig)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write a cProfile of this process's settlement rounds, one file per mode "
        "(<path>.sequential.prof, <path>.<N>-at-once.prof): its one thread runs every party's "
        "asyncio and trio code; SQLite's own threads are not in it",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="run each of the --replicas members in its own OS process "
        "(bench/settlement_replica.py), as deployed; the utility and the paying devices "
        "stay in this process",
    )
    parser.add_argument(
        "--keep-connections",
        choices=("on", "off", "alternate"),
        default="on",
        help="the lnd clients of this process read a payment stream to its end so its "
        "connection is reused (on, the product's), or close it at the final update as "
        "before 2026-12-02 (off: the next call opens a new TLS connection), or off and on "
        "in alternate rounds, each setting reported apart: a round under the connections "
        "it begins with, which the previous round's payments left (the raw payer keeps "
        "its connection either way)",
    )
    parser.add_argument(
        "--idle-window",
        type=float,
        default=5.0,
        help="seconds over which the CPU per second of every process is measured before the "
        "rounds, nothing being settled (the part of a round's CPU paid by the second)",
    )
    args = parser.parse_args()
    if args.processes and args.flood_publish == "alternate":
        parser.error("--flood-publish alternate switches the hosts of this process only")
    if args.processes and args.first_hop == "alternate":
        parser.error("--first-hop alternate switches the hosts of this process only")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # its noise as hosts stop
    names = device_names(args.devices)
    own = args.stack is None
    config = StackConfig(name=args.stack or f"bench-settle-{os.getpid()}",
                         topology=utility_star(names))  # fmt: skip
    stack = Stack(config, await ensure_daemons())
    if own:
        await stack.up()
    marks = Marks()
    try:
        async with contextlib.AsyncExitStack() as exits:
            tmp = Path(exits.enter_context(tempfile.TemporaryDirectory()))
            utility_lnd = await exits.enter_async_context(stack.client("utility"))
            raw: list[Callable[[str], Awaitable[None]]] = []
            for name in names:
                http, pay = raw_payer(stack.endpoint(name))
                exits.push_async_callback(http.aclose)
                raw.append(pay)
            site = await open_site(
                exits,
                stack,
                names,
                tmp,
                marks,
                replicas=args.replicas,
                flood_publish=args.flood_publish != "off",
                anti_entropy_interval_s=args.anti_entropy_interval,
                mesh_degree=args.mesh_degree,
                processes=args.processes,
            )
            print(
                f"machine: {platform.machine()}, {os.cpu_count()} cores, "
                f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}"
            )
            print(
                f"{args.devices} paying devices, {args.replicas} more replicas, "
                f"{args.rounds} rounds per mode, 1,000 sat invoices, anti-entropy every "
                f"{args.anti_entropy_interval:g} s, mesh degree "
                f"{args.mesh_degree or NetConfig.mesh_degree}; the {args.replicas} replicas "
                + ("each in its own process" if args.processes else "in this process")
            )
            meter = CpuMeter(site, stack)
            period = 1
            for mode, devices in (
                ("sequential", [0]),
                (f"{args.devices} at once", list(range(args.devices))),
            ):
                raw_ms: list[float] = []
                raw_cpu: list[CpuSample] = []
                rows: dict[str, list[dict[str, float]]] = {}  # by flood publishing setting
                cpu_ms: dict[str, list[float]] = {}
                children_ms: dict[str, list[float]] = {}
                round_cpu: dict[str, list[CpuSample]] = {}
                timed: dict[str, list[CpuSample]] = {}  # from the invoicing to the end
                counts: dict[str, dict[str, list[int]]] = {}  # setting -> TRAFFIC key -> rounds
                profile = cProfile.Profile() if args.profile else None
                for n in range(args.rounds):  # alternate: both see the same load
                    raw0 = meter.sample()
                    raw_ms += [
                        s * 1000 for s in await raw_round(utility_lnd, [raw[i] for i in devices])
                    ]
                    raw_cpu.append(ms(meter.sample() - raw0))
                    await stack.wait_settled()
                    flood = args.flood_publish == "on" or (
                        args.flood_publish == "alternate" and n % 2 == 1
                    )
                    if args.flood_publish == "alternate":
                        for party in site.parties:  # the bench's switch, not an API
                            party.parts.host._node.gossipsub.flood_publish = flood  # type: ignore[union-attr]
                    tag = args.first_hop == "on" or (args.first_hop == "alternate" and n % 2 == 1)
                    for party in site.parties:  # the bench's switch, not an API
                        party.parts.host._node.gossipsub.first_hop_claims = tag  # type: ignore[union-attr]
                    # A round is reported under the connections it begins with, which the
                    # previous round's payments left: its own payments are made with the
                    # setting of the next round.
                    keep = keeps_connections(args.keep_connections, n)
                    end_s = STREAM_END_S if keeps_connections(args.keep_connections, n + 1) else 0.0
                    lnd_module.STREAM_END_S = end_s  # the bench's switch, not an API
                    setting = f"flood publish {'on' if flood else 'off'}"
                    if args.keep_connections != "on":
                        setting += f", lnd connections {'kept' if keep else 'closed'}"
                    if args.first_hop != "on":
                        setting += f", first hop {'on' if tag else 'off'}"
                    traffic0 = await traffic(site)
                    cpu0, children0 = time.process_time(), children_cpu_s(site)
                    round0 = meter.sample()
                    if profile is not None:
                        profile.enable()
                    rows.setdefault(setting, []).extend(
                        await settle_round(
                            site, period, devices, marks, meter, timed.setdefault(setting, [])
                        )
                    )
                    if profile is not None:
                        profile.disable()
                    round_cpu.setdefault(setting, []).append(ms(meter.sample() - round0))
                    cpu_ms.setdefault(setting, []).append((time.process_time() - cpu0) * 1000)
                    children_ms.setdefault(setting, []).append(
                        (children_cpu_s(site) - children0) * 1000
                    )
                    traffic1 = await traffic(site)
                    per_key = counts.setdefault(setting, {key: [] for key in TRAFFIC})
                    for key, after, before in zip(TRAFFIC, traffic1, traffic0, strict=True):
                        per_key[key].append(after - before)
                    period += 1
                    await stack.wait_settled()
                if profile is not None:
                    profile.dump_stats(f"{args.profile}.{mode.replace(' ', '-')}.prof")
                print(f"\n{mode}: {args.rounds} rounds, {len(raw_ms)} raw payments")
                print(
                    f"  {'raw lnd payment':<28}{p50(raw_ms):>9.1f} ms p50  (max {max(raw_ms):.1f})"
                )
                target_ms = 1.5 * p50(raw_ms)
                for line in cpu_floor_lines("raw payments", raw_cpu, target_ms):
                    print(f"  {line}")
                for setting, of_setting in sorted(rows.items()):
                    print(f"  {setting}: {len(of_setting)} invoices")
                    for phase in PHASES:
                        values = [r[phase] for r in of_setting]
                        print(f"    {phase:<26}{p50(values):>9.1f} ms p50  (max {max(values):.1f})")
                    e2e = p50([r["end to end"] for r in of_setting])
                    print(
                        f"    {'CPU of this process':<26}{p50(cpu_ms[setting]):>9.1f} ms per round"
                    )
                    if site.remotes:
                        print(
                            f"    {'CPU of the members':<26}{p50(children_ms[setting]):>9.1f} "
                            f"ms per round, {len(site.remotes)} processes together"
                        )
                    c = {key: p50(values) for key, values in counts[setting].items()}
                    print(
                        f"    {'gossipsub RPCs sent':<26}{c['rpcs']:>9.0f} per round "
                        f"({c['copies']:.0f} message copies, {c['ihave']:.0f} IHAVEs; "
                        f"{c['skipped']:.0f} relays skipped), "
                        f"sync requests served {c['served']:.0f} (all parties)"
                    )
                    ratio = e2e / p50(raw_ms)
                    print(f"    ratio end to end / raw lnd payment: {ratio:.2f} (target 1.5)")
                    for line in cpu_floor_lines("a round", round_cpu[setting], target_ms):
                        print(f"    {line}")
                    for line in cpu_floor_lines("the timed part", timed[setting], target_ms):
                        print(f"    {line}")
            idle = await meter.idle_per_s(args.idle_window)
            print(
                f"\nidle, after the rounds ({args.idle_window:g} s, nothing settled), CPU per "
                f"second: bench {idle.bench * 1000:.1f} ms, members {idle.members * 1000:.1f} ms "
                f"({len(site.remotes)} processes), daemons {idle.daemons * 1000:.1f} ms (btcd and "
                f"{meter.lnds} lnd)"
            )
    finally:
        if own:
            await stack.down()


if __name__ == "__main__":
    asyncio.run(main())
