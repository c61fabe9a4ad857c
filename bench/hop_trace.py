"""Trace one log entry's hop from its author's store to another member's store.

A site of ``--members`` members (the utility, the author device and idle
devices: a libp2p host, an SQLite store and a :class:`NetReplica` each), all in
this process on one trio bridge, as ``bench/settlement.py`` runs its parties.
Each round the author device logs a meter reading and announces it
(``LogWriter.append`` then ``NetReplica.publish``, as the settler logs a
payment entry); the round ends when every other member's store holds it.

Every step on the way is wrapped to note the first time it happens in the
round (``time.perf_counter``; the second and third time as ``step #2``, ``#3``:
the other receivers' copies; steps of heartbeats or anti-entropy between two
rounds are not counted, and the rounds are spaced so that the entry is the only
message in flight): the author's commit, the publish, the pacer, the seal, the
trio side's publish, the gossipsub RPC queued and written to the socket, the
first receiver's read of the RPC, its validator, the hop back to asyncio,
its replica's ingest and its commit. It prints, per step, the p50 over the
rounds of the time since the author's commit and since the step before, and of
the asyncio loop's turns since the commit (each pass of the loop: a step that
waits for another turn waits behind whatever else is ready then); the CPU of
the round (the loop's thread, the whole process) against its wall time; and the
time spent in py-libp2p's ``push_msg``, the relay's ``Gossip.publish`` and the
envelope validator. ``--processes N`` adds N idle members in processes of their
own (``bench/settlement_replica.py``, as ``bench/settlement.py --processes``),
``--steps`` prints the last round's trio task steps turn by turn, ``--busy-ms``
adds a task that keeps the loop busy (each of its turns takes that long: what a
turn costs in a busy process), ``--switch-interval`` sets the GIL's, and
``--profile PATH`` writes a cProfile of the rounds.

    PYTHONPATH=.:bench .venv/bin/python bench/hop_trace.py --members 2 --rounds 50
    PYTHONPATH=.:bench .venv/bin/python bench/hop_trace.py --members 5 --processes 6 --rounds 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import hashlib
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from libp2p.pubsub import pubsub as lp_pubsub
from libp2p.pubsub.pb import rpc_pb2
from settlement import Marks, RemoteMember, owner_chain
from settlement_replica import MemberSpec, net_config

from p2pgrid.identity import UTILITY_NET_INDEX, Role, Signer, SiteIdentity
from p2pgrid.ledger import (
    Author,
    Enrol,
    LogChange,
    LogStore,
    LogWriter,
    MeterReading,
)
from p2pgrid.ledger.sync import Replicator
from p2pgrid.net import DeviceKey, TrioBridge
from p2pgrid.net.bridge import TrioBridge as Bridge
from p2pgrid.net.gossip import Gossip
from p2pgrid.net.host import PeerHost, Subscription
from p2pgrid.net.hub import HostHub
from p2pgrid.net.node import TrioNode
from p2pgrid.net.pacing import TopicPacer
from p2pgrid.net.validator import EnvelopeValidator
from p2pgrid.replication import NodeParts, NodeSpec, ReplicaConfig, open_node_parts
from p2pgrid.replication.replica import NetReplica

T0_MS = 1_700_000_000_000


class Trace:
    """The first time each step happened in the current round."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.turns: dict[str, int] = {}
        self.on = False
        #: Turns of the asyncio loop so far (every ``_run_once``).
        self.turn = 0

    def mark(self, step: str) -> None:
        """The first time ``step`` happens is ``step``, the second ``step #2``, ..."""
        if not self.on:
            return
        n = 1
        name = step
        while name in self.marks:
            n += 1
            name = f"{step} #{n}"
        if n <= 3:
            self.marks[name] = time.perf_counter()
            self.turns[name] = self.turn


TRACE = Trace()


def at_start(cls: Any, name: str, step: str, when: Callable[..., bool] | None = None) -> None:
    """Mark ``step`` when ``cls.name`` is called (and ``when(*args)`` holds)."""
    original = getattr(cls, name)
    if asyncio.iscoroutinefunction(original):

        @functools.wraps(original)
        async def awrapped(*args: Any, **kwargs: Any) -> Any:
            if when is None or when(*args, **kwargs):
                TRACE.mark(step)
            return await original(*args, **kwargs)

        setattr(cls, name, awrapped)
    else:

        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if when is None or when(*args, **kwargs):
                TRACE.mark(step)
            return original(*args, **kwargs)

        setattr(cls, name, wrapped)


def at_end(cls: Any, name: str, step: str, when: Callable[[Any], bool] | None = None) -> None:
    """Mark ``step`` when ``cls.name`` returns (and ``when(result)`` holds)."""
    original = getattr(cls, name)

    @functools.wraps(original)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        if when is None or when(result):
            TRACE.mark(step)
        return result

    setattr(cls, name, wrapped)


def has_publish(rpc: rpc_pb2.RPC) -> bool:
    return len(rpc.publish) > 0


class TaskSteps(trio.abc.Instrument):
    """Notes each trio task step and I/O wait of a round (``--steps``)."""

    def __init__(self) -> None:
        self.log: list[tuple[int, float, str]] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if TRACE.on:
            self.log.append((TRACE.turn, time.perf_counter(), f"trio {task.name}"))

    def before_io_wait(self, timeout: float) -> None:
        if TRACE.on:
            self.log.append((TRACE.turn, time.perf_counter(), f"io wait {timeout:.3f}"))

    def after_io_wait(self, timeout: float) -> None:
        if TRACE.on:
            self.log.append((TRACE.turn, time.perf_counter(), "io woke"))


SPENT: dict[str, list[float]] = {}


def timed(cls: Any, name: str, label: str) -> None:
    """Add up the time spent in ``cls.name`` during the rounds (a coroutine that
    does not wait, or a plain function)."""
    original = getattr(cls, name)
    if asyncio.iscoroutinefunction(original):

        @functools.wraps(original)
        async def awrapped(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                if TRACE.on:
                    SPENT.setdefault(label, []).append(time.perf_counter() - t)

        setattr(cls, name, awrapped)
    else:

        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if TRACE.on:
                    SPENT.setdefault(label, []).append(time.perf_counter() - t)

        setattr(cls, name, wrapped)


def count_turns(loop: asyncio.AbstractEventLoop) -> None:
    """Count the loop's turns (each pass of its ``_run_once``)."""
    run_once = loop._run_once  # type: ignore[attr-defined]

    def counted() -> None:
        TRACE.turn += 1
        run_once()

    loop._run_once = counted  # type: ignore[attr-defined]


def instrument() -> None:
    """Wrap the steps of the path (see the module)."""
    timed(Gossip, "publish", "Gossip.publish (own and relays)")
    timed(EnvelopeValidator, "check", "EnvelopeValidator.check")
    timed(lp_pubsub.Pubsub, "push_msg", "Pubsub.push_msg (incl. the two above)")
    at_start(NetReplica, "publish", "publish called")
    at_start(TopicPacer, "put", "pacer put")
    at_end(TopicPacer, "next_batch", "pacer released")
    at_start(Bridge, "run", "bridge.run called")
    at_start(TrioNode, "publish", "trio publish")
    at_start(
        Gossip,
        "send_rpc",
        "rpc queued",
        when=lambda self, peer, rpc, priority=False: has_publish(rpc),
    )
    at_start(
        lp_pubsub.Pubsub,
        "write_msg",
        "rpc write",
        when=lambda self, stream, rpc: has_publish(rpc),
    )
    original_write = lp_pubsub.Pubsub.write_msg

    async def write_msg(self: Any, stream: Any, rpc: rpc_pb2.RPC) -> bool:
        ok: bool = await original_write(self, stream, rpc)
        if has_publish(rpc):
            TRACE.mark("rpc written")
        return ok

    setattr(lp_pubsub.Pubsub, "write_msg", write_msg)  # noqa: B010 - a probe's wrapper
    original_read = getattr(lp_pubsub, "read_varint_prefixed_bytes_limited")  # noqa: B009

    async def read(stream: Any, limit: int) -> bytes:
        data: bytes = await original_read(stream, limit)
        if len(data) > 200:  # an announcement, not a heartbeat's control RPC
            TRACE.mark("rpc read")
        return data

    setattr(lp_pubsub, "read_varint_prefixed_bytes_limited", read)  # noqa: B010
    at_start(
        lp_pubsub.Pubsub,
        "push_msg",
        "push_msg (receiver)",
        when=lambda self, forwarder, msg: forwarder != self.my_id,
    )
    at_start(EnvelopeValidator, "check", "validator")
    at_start(
        Bridge,
        "to_asyncio",
        "to_asyncio",
        when=lambda self, fn, *args: getattr(fn, "__name__", "") == "on_delivery",
    )
    at_start(HostHub, "on_delivery", "on_delivery (asyncio)")
    at_start(PeerHost, "_deliver", "host _deliver")
    at_end(Subscription, "__anext__", "gossip loop got it")
    at_start(Replicator, "receive_announce", "receive_announce")
    at_start(LogStore, "ingest_many", "ingest_many")


def key(run: bytes, label: str) -> Signer:
    return Signer.from_secret(hashlib.sha256(run + label.encode()).digest())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=2, help="utility + devices (>= 2)")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="further idle members, each in its own process (bench/settlement_replica.py)",
    )
    parser.add_argument(
        "--steps", action="store_true", help="print the trio task steps of the last round"
    )
    parser.add_argument(
        "--busy-ms",
        type=float,
        default=0.0,
        help="a task of this process computes this long between yields (a busy loop)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval (s): how long a thread waits for the GIL at most",
    )
    parser.add_argument("--profile", default=None, help="write a cProfile of the rounds here")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    devices = args.members - 1 + args.processes
    run = secrets.token_bytes(16)
    owner = key(run, "owner")
    identity = SiteIdentity(owner.pubkey)
    utility_key = key(run, "utility")
    keys = [key(run, f"device {i}") for i in range(devices)]
    bodies = [Enrol(Role.UTILITY, 0, utility_key.pubkey, "utility", 0)]
    bodies += [Enrol(Role.DEVICE, i, k.pubkey, f"device-{i}", 0) for i, k in enumerate(keys)]
    genesis = owner_chain(owner, identity, bodies)
    provision = [e.raw for e in genesis]
    instrument()
    count_turns(asyncio.get_running_loop())
    ends: dict[str, float] = {}
    expected: set[str] = set()  # the stores of the members other than the author
    all_in = asyncio.Event()  # set when every one of them holds the round's entry

    def listener(name: str, author_store: bool) -> Callable[[LogChange], None]:
        def heard(change: LogChange) -> None:
            if not any(isinstance(e.body, MeterReading) for e in change.appended):
                return
            if author_store:
                TRACE.mark("author commit")
            else:
                TRACE.mark("first receiver commit")
                ends[name] = time.perf_counter()
                if set(ends) == expected:
                    all_in.set()

        return heard

    with tempfile.TemporaryDirectory() as tmp:
        async with contextlib.AsyncExitStack() as exits:
            bridge = TrioBridge()
            await bridge.start()
            exits.push_async_callback(bridge.stop)

            async def node(
                name: str, index: int, signer: Signer, boot: tuple[str, ...]
            ) -> NodeParts:
                parts = await open_node_parts(
                    exits,
                    NodeSpec(
                        name=name,
                        db_path=Path(tmp) / f"{name}.db",
                        site=identity,
                        net=net_config(boot, flood_publish=True, mesh_degree=None),
                        key=DeviceKey(identity, index, signer),
                        replica=ReplicaConfig(),
                        provision=provision,
                        bridge=bridge,
                    ),
                )
                parts.store.subscribe(listener(name, name == "device-0"))
                return parts

            utility = await node("utility", UTILITY_NET_INDEX, utility_key, ())
            members = [utility]
            for i, k in enumerate(keys[: args.members - 1]):
                members.append(await node(f"device-{i}", i, k, utility.host.addrs))
            remotes = []
            for i in range(args.members - 1, devices):
                spec = MemberSpec(
                    name=f"device-{i}",
                    index=i,
                    secret=keys[i].secret.hex(),
                    owner_pubkey=owner.pubkey.hex(),
                    provision=[raw.hex() for raw in provision],
                    bootstrap=list(utility.host.addrs),
                    utility_peer_id=utility.host.peer_id,
                    db_path=str(Path(tmp) / f"device-{i}.db"),
                    flood_publish=True,
                    mesh_degree=None,
                    anti_entropy_interval_s=ReplicaConfig.anti_entropy_interval_s,
                )
                remote = await RemoteMember.spawn(spec, Path(tmp), Marks())
                exits.push_async_callback(remote.child.kill)
                remotes.append(remote)
            for remote in remotes:
                await asyncio.wait_for(remote.ready(), 120)
                exits.push_async_callback(remote.stop)
            author = members[1]
            topic = author.replica.topic
            for other in members:
                for peer in members:
                    if peer is not other:
                        await other.host.wait_for_peer(peer.host.peer_id, topic, timeout_s=60)
            if args.busy_ms > 0:

                async def busy() -> None:
                    while True:
                        end = time.perf_counter() + args.busy_ms / 1000
                        while time.perf_counter() < end:
                            pass
                        await asyncio.sleep(0)

                exits.callback(asyncio.create_task(busy()).cancel)
            profile = cProfile.Profile() if args.profile else None
            task_steps = TaskSteps()
            if args.steps:

                async def add() -> None:
                    trio.lowlevel.add_instrument(task_steps)

                await bridge.run(add)
            for remote in remotes:
                await author.host.wait_for_peer(remote.peer_id, topic, timeout_s=60)
            writer = LogWriter(author.store, keys[0], Author.device(0))
            expected.update(m.store.name for m in members if m is not author)
            rows: list[dict[str, float]] = []
            turn_rows: list[dict[str, int]] = []
            cpu_rows: list[tuple[float, float, float]] = []
            last: list[float] = []
            for r in range(args.warmup + args.rounds):
                await asyncio.sleep(args.gap)  # a gap between rounds, not a synchronisation
                ends.clear()
                all_in.clear()
                TRACE.marks = {}
                TRACE.turns = {}
                task_steps.log = []
                TRACE.on = True
                if profile is not None and r >= args.warmup:
                    profile.enable()
                t0 = time.perf_counter()
                cpu0 = time.thread_time()
                pcpu0 = time.process_time()
                entry = await writer.append(
                    MeterReading(T0_MS + r * 60_000, 60, 10, 2_500),
                    period=1,
                    timestamp_ms=T0_MS + r * 60_000,
                )
                TRACE.mark("append returned")
                await author.replica.publish([entry])
                TRACE.mark("publish returned")
                async with asyncio.timeout(10):
                    await all_in.wait()
                if profile is not None:
                    profile.disable()
                TRACE.on = False
                cpu_rows.append(
                    (
                        time.perf_counter() - t0,
                        time.thread_time() - cpu0,
                        time.process_time() - pcpu0,
                    )
                )
                if r >= args.warmup:
                    base = TRACE.marks["author commit"]
                    rows.append({k: v - base for k, v in TRACE.marks.items()})
                    rows[-1]["append called"] = t0 - base
                    tbase = TRACE.turns["author commit"]
                    turn_rows.append({k: v - tbase for k, v in TRACE.turns.items()})
                    last.append(max(ends.values()) - base)
            if profile is not None:
                profile.dump_stats(args.profile)
            steps = sorted(
                {s for row in rows for s in row},
                key=lambda s: statistics.median(row[s] for row in rows if s in row),
            )
            print(f"{args.members} members, {args.rounds} rounds: p50 ms since the author's commit")
            prev = None
            for step in steps:
                values = [row[step] for row in rows if step in row]
                med = statistics.median(values) * 1000
                delta = "" if prev is None else f"  (+{med - prev:7.2f})"
                turns = [row[step] for row in turn_rows if step in row]
                t50 = statistics.median(turns) if turns else float("nan")
                print(
                    f"  {step:28s} {med:8.2f}{delta}  turn {t50:5.1f}"
                    f"   seen in {len(values)}/{len(rows)}"
                )
                prev = med
            print(f"  {'last member commit':28s} {statistics.median(last) * 1000:8.2f}")
            wall, main_cpu, all_cpu = (
                statistics.median(c[k] for c in cpu_rows[args.warmup :]) * 1000 for k in range(3)
            )
            print(
                f"  round (append called -> last commit): wall {wall:.2f} ms, CPU of the loop's "
                f"thread {main_cpu:.2f} ms, of the process {all_cpu:.2f} ms (p50)"
            )
            for label, spent in SPENT.items():
                n = args.rounds + args.warmup
                print(
                    f"  time in {label}: {sum(spent) / n * 1000:.2f} ms per round, "
                    f"{len(spent) / n:.1f} calls, p50 {statistics.median(spent) * 1000:.2f} ms"
                )
            if args.steps:
                events = [
                    (t, at, what) for what, at in TRACE.marks.items() for t in [TRACE.turns[what]]
                ]
                events += task_steps.log
                base_at = TRACE.marks["author commit"]
                for turn, at, what in sorted(events, key=lambda e: e[1]):
                    since = turn - TRACE.turns["author commit"]
                    print(f"    turn {since:4d} {(at - base_at) * 1000:8.2f} {what}")


if __name__ == "__main__":
    asyncio.run(main())
