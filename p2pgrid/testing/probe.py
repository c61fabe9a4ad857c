"""A stand-alone agent process for multi-process tests and the latency benchmark.

``python -m p2pgrid.testing.probe --seed S --index I [--bootstrap ADDR ...]
[--host IP] [--mdns]`` starts
one host (device ``I`` of the site whose owner seed is ``S``), publishes a
:class:`ProbeMsg` every ``--interval`` seconds on the site topic and prints JSON
lines on stdout (the line protocol of :mod:`p2pgrid.jsonlines`):

- ``{"event": "listening", "peer_id", "addrs"}`` once it serves;
- ``{"event": "heard", "from": index}`` the first time it hears a device (per run
  of that device: a restarted sender is heard again);
- ``{"event": "report", ...}`` at the end of a measured phase (see below);
- ``{"event": "stopped"}`` when it exits.

It reads commands, one JSON object per line, on stdin: ``{"cmd": "measure",
"rate": R, "duration": D, "drain": T, "devices": K}`` publishes R times a second
for D seconds one message for each of K devices (default 1: the traffic of K
agents from one process, as a gateway of K devices sends it), waits T seconds
and reports latency samples and counts; ``{"cmd": "stop"}`` or
end of input stops it. ``--raw`` runs the same workload on plain py-libp2p
gossipsub in ``trio.run`` (no bridge, no envelope, no signatures, no pacing),
as the benchmark's baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from p2pgrid.jsonlines import commands, emit, parse_command

PROBE_KIND = 0x01F0
_PROBE = struct.Struct(">IIBQq")  # sender, epoch, phase, seq, sent_ns
PHASE_WARMUP = 0
PHASE_MEASURE = 1
RAW_TOPIC = "/p2pgrid-bench/raw"
#: Probes 0..MAX_PROBES-1 are members of the test site.
MAX_PROBES = 256
#: Gossipsub settings shared by both modes so the comparison is like for like
#: (the degrees are NetConfig's defaults).
RAW_GOSSIP: dict[str, Any] = {
    "degree": 6,
    "degree_low": 4,
    "degree_high": 8,
    "heartbeat_interval": 1,
    "adaptive_gossip_enabled": False,
    "spam_protection_enabled": False,
    "eclipse_protection_enabled": False,
}


@dataclass(frozen=True)
class ProbeMsg:
    KIND: ClassVar[int] = PROBE_KIND
    sender: int
    epoch: int
    phase: int
    seq: int
    sent_ns: int

    def encode(self) -> bytes:
        return _PROBE.pack(self.sender, self.epoch, self.phase, self.seq, self.sent_ns)

    @classmethod
    def decode(cls, data: bytes) -> Self:
        return cls(*_PROBE.unpack(data))


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Tally:
    """What one probe heard: first contact per (sender, epoch) and measured latencies."""

    me: int
    heard: set[tuple[int, int]] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    received: dict[int, int] = field(default_factory=dict)

    def add(self, msg: ProbeMsg) -> None:
        if msg.sender == self.me:
            return
        if (msg.sender, msg.epoch) not in self.heard:
            self.heard.add((msg.sender, msg.epoch))
            emit("heard", **{"from": msg.sender})
        if msg.phase == PHASE_MEASURE:
            self.latencies_ms.append((time.time_ns() - msg.sent_ns) / 1e6)
            self.received[msg.sender] = self.received.get(msg.sender, 0) + 1


def report(tally: Tally, sent: int, extra: dict[str, Any]) -> None:
    emit(
        "report",
        sent=sent,
        received=sum(tally.received.values()),
        senders=len(tally.received),
        latencies_ms=[round(x, 3) for x in tally.latencies_ms],
        rss_mb=round(rss_mb(), 1),
        **extra,
    )


async def _measure(
    publish: Callable[[ProbeMsg], Any],
    *,
    me: int,
    epoch: int,
    rate: float,
    duration: float,
    devices: int,
    sleep: Callable[[float], Any],
) -> int:
    """Publish for ``devices`` devices, ``rate`` ticks/s for ``duration`` s on a fixed
    schedule: at each tick one message per device, one after the other (as the
    devices of a gateway do at the start of an interval); returns the count."""
    ticks = int(rate * duration)
    start = time.monotonic()
    for tick in range(ticks):
        delay = start + tick / rate - time.monotonic()
        if delay > 0:
            await sleep(delay)
        for device in range(devices):
            seq = tick * devices + device
            await publish(ProbeMsg(me, epoch, PHASE_MEASURE, seq, time.time_ns()))
    return ticks * devices


# -- p2pgrid mode (asyncio) -------------------------------------------------------


async def run_p2pgrid(args: argparse.Namespace) -> None:
    import hashlib

    from p2pgrid.identity import Role, Roster, Signer, SiteIdentity
    from p2pgrid.net import DeviceKey, NetConfig, PeerHost, site_topic

    def key(*labels: object) -> Signer:  # test keys: one independent hash each
        return Signer.from_secret(hashlib.sha256(repr((args.seed, *labels)).encode()).digest())

    # A test site without a log: its roster enrols probes 0..MAX_PROBES-1 directly.
    roster = Roster(SiteIdentity(key("owner").pubkey))
    for index in range(MAX_PROBES):
        roster.enrol(Role.DEVICE, index, key("device", index).pubkey, 0)
    topic = site_topic(roster)
    config = NetConfig(
        listen_host=args.host,
        listen_port=args.port,
        bootstrap=tuple(args.bootstrap),
        mdns=args.mdns,
        muxer=args.muxer,
    )
    if args.untuned_gossip:  # as p2pgrid ran before it tuned py-libp2p's gossipsub
        config = dataclasses.replace(
            config, mesh_degree_high=12, idontwant_min_bytes=0, sender_record_once=False
        )
    if args.hello_once:  # as p2pgrid tried its hellos before NetConfig.hello_tries
        config = dataclasses.replace(config, hello_tries=1)
    if args.no_first_hop:  # relays to the whole mesh, as before first-hop records
        config = dataclasses.replace(config, first_hop_claims=False)
    host = PeerHost(
        config,
        DeviceKey(roster.site, args.index, key("device", args.index)),
        [topic],
        name=f"probe-{args.index}",
    )
    epoch = int.from_bytes(os.urandom(4), "big")
    tally = Tally(args.index)
    await host.start()
    emit("listening", peer_id=host.peer_id, addrs=list(host.addrs))

    async def listen() -> None:
        async for delivery in host.subscribe(topic):
            tally.add(delivery.decode(ProbeMsg))

    async def warmup() -> None:
        seq = 0
        while True:
            await host.publish(
                topic, ProbeMsg(args.index, epoch, PHASE_WARMUP, seq, time.time_ns())
            )
            seq += 1
            await asyncio.sleep(args.interval)  # the probe's publishing schedule

    async def publish(msg: ProbeMsg) -> None:
        await host.publish(topic, msg)

    try:
        async with asyncio.TaskGroup() as tasks, contextlib.aclosing(commands()) as commands_in:
            listener = tasks.create_task(listen())
            warm = tasks.create_task(warmup())
            async for command in commands_in:
                if command["cmd"] == "stop":
                    break
                if command["cmd"] == "measure":
                    warm.cancel()
                    before = host.stats()
                    sent = await _measure(
                        publish,
                        me=args.index,
                        epoch=epoch,
                        rate=command["rate"],
                        duration=command["duration"],
                        devices=command.get("devices", 1),
                        sleep=asyncio.sleep,
                    )
                    await host.flush()
                    await asyncio.sleep(command["drain"])  # let the last messages arrive
                    stats = host.stats()
                    report(
                        tally,
                        sent,
                        {
                            "envelopes": stats.published_envelopes - before.published_envelopes,
                            "gaps": stats.sequence_gaps,
                            "drops": stats.subscriber_drops,
                            "peers": stats.peers,
                            "mesh": stats.mesh_peers,
                            "rpcs": stats.rpcs_queued - before.rpcs_queued,
                            "rpc_drops": stats.rpcs_dropped - before.rpcs_dropped,
                            "idontwant": stats.idontwant_sent - before.idontwant_sent,
                            "dials": stats.dials - before.dials,
                            "conns": stats.connections_opened - before.connections_opened,
                            "start_dials": before.dials,
                            "start_conns": before.connections_opened,
                            "connected": stats.connected,
                            "hello_failures": stats.hello_failures,
                            "stream_retries": stats.stream_open_retries,
                        },
                    )
            warm.cancel()
            listener.cancel()
    finally:
        await host.stop()
        emit("stopped")


# -- raw py-libp2p mode (trio) ------------------------------------------------------


def _counting(gossipsub_class: Any) -> Any:
    """``gossipsub_class`` with counters of what it sends, and nothing else changed
    (p2pgrid.net.gossip counts the same in p2pgrid mode; importing it here would
    load p2pgrid.net into the baseline's memory)."""

    class Counting(gossipsub_class):  # type: ignore[misc]
        sent_counts: Counter[str]

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.sent_counts = Counter()

        def send_rpc(self, peer_id: Any, rpc: Any, priority: bool = False) -> None:
            self.sent_counts["rpcs"] += 1
            super().send_rpc(peer_id, rpc, priority)

        def _handle_dropped_rpc(self, peer_id: Any, rpc: Any, reason: str) -> None:
            self.sent_counts["rpc_drops"] += 1
            super()._handle_dropped_rpc(peer_id, rpc, reason)

        async def emit_idontwant(self, msg_ids: Any, to_peer: Any) -> None:
            self.sent_counts["idontwant"] += 1
            await super().emit_idontwant(msg_ids, to_peer)

    return Counting


async def run_raw(args: argparse.Namespace) -> None:
    import hashlib

    import multiaddr
    import trio
    from libp2p import create_mplex_muxer_option, create_yamux_muxer_option, new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    seed = hashlib.sha256(f"raw/{args.seed}/{args.index}".encode()).digest()
    muxer = create_mplex_muxer_option() if args.muxer == "mplex" else create_yamux_muxer_option()
    host = new_host(key_pair=create_new_key_pair(seed), muxer_opt=muxer)
    router: Any = GossipSub
    if args.tuned_gossip:  # the same tuning as p2pgrid's hosts (and their imports)
        from p2pgrid.net.gossip import Gossip

        router = Gossip
    gossipsub = _counting(router)(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID], **RAW_GOSSIP
    )
    pubsub = Pubsub(host, gossipsub, strict_signing=True)
    epoch = int.from_bytes(os.urandom(4), "big")
    tally = Tally(args.index)
    listen = multiaddr.Multiaddr(f"/ip4/{args.host}/tcp/{args.port}")
    async with (
        host.run([listen]),
        background_trio_service(pubsub),
        background_trio_service(gossipsub),
    ):
        await pubsub.wait_until_ready()
        sub = await pubsub.subscribe(RAW_TOPIC)
        addrs = [str(a) for a in host.get_addrs()]
        emit("listening", peer_id=str(host.get_id()), addrs=addrs)

        async def connect(addr: str) -> None:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            while True:
                with contextlib.suppress(Exception):
                    await host.connect(info)
                    return
                await trio.sleep(0.25)  # retry a bootstrap peer that is not up yet

        async def listen_loop() -> None:
            while True:
                msg = await sub.get()
                tally.add(ProbeMsg.decode(msg.data))

        async def publish(msg: ProbeMsg) -> None:
            await pubsub.publish(RAW_TOPIC, msg.encode())

        async def warmup(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                seq = 0
                while True:
                    await publish(ProbeMsg(args.index, epoch, PHASE_WARMUP, seq, time.time_ns()))
                    seq += 1
                    await trio.sleep(args.interval)

        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        async with trio.open_nursery() as nursery:
            for addr in args.bootstrap:
                nursery.start_soon(connect, addr)
            nursery.start_soon(listen_loop)
            warm = await nursery.start(warmup)
            buffer = b""
            running = True
            while running:
                chunk = await stdin.receive_some(4096)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    command = parse_command(line)
                    if command is None:
                        continue
                    if command["cmd"] == "stop":
                        running = False
                        break
                    if command["cmd"] == "measure":
                        warm.cancel()
                        before = Counter(gossipsub.sent_counts)
                        sent = await _measure(
                            publish,
                            me=args.index,
                            epoch=epoch,
                            rate=command["rate"],
                            duration=command["duration"],
                            devices=command.get("devices", 1),
                            sleep=trio.sleep,
                        )
                        await trio.sleep(command["drain"])
                        report(
                            tally,
                            sent,
                            {
                                "peers": len(host.get_connected_peers()),
                                "mesh": len(gossipsub.mesh.get(RAW_TOPIC, ())),
                                **(gossipsub.sent_counts - before),
                            },
                        )
            nursery.cancel_scope.cancel()
    emit("stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m p2pgrid.testing.probe")
    parser.add_argument("--seed", required=True, help="site owner seed (test sites only)")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mdns", action="store_true", help="also find peers by mDNS")
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--muxer", choices=["mplex", "yamux"], default="mplex")
    parser.add_argument("--raw", action="store_true", help="plain py-libp2p baseline")
    parser.add_argument(
        "--tuned-gossip",
        action="store_true",
        help="with --raw: p2pgrid's gossipsub tuning (p2pgrid.net.gossip) on plain py-libp2p",
    )
    parser.add_argument(
        "--untuned-gossip",
        action="store_true",
        help="p2pgrid with py-libp2p's gossipsub behaviour (mesh up to 12, an IDONTWANT "
        "per message, a signed peer record in every RPC), as before p2pgrid.net.gossip",
    )
    parser.add_argument(
        "--hello-once",
        action="store_true",
        help="p2pgrid trying each hello exchange once, as before NetConfig.hello_tries",
    )
    parser.add_argument(
        "--no-first-hop",
        action="store_true",
        help="p2pgrid without first-hop records (relays go to the whole mesh)",
    )
    args = parser.parse_args(argv)
    if args.raw:
        import trio

        trio.run(run_raw, args)
    else:
        asyncio.run(run_p2pgrid(args))


if __name__ == "__main__":
    main()
