"""Benchmark of the net layer: delivery latency and loss with one OS process per agent.

For each agent count, in one run on one machine, fleets of probe processes
(``python -m p2pgrid.testing.probe``) are started one after the other, one per
mode (``--modes``):

1. ``raw``: plain py-libp2p 0.8.1 gossipsub in ``trio.run`` (the baseline: no
   bridge, no envelope, no signatures, no membership checks, no pacing), with the
   same gossipsub degrees and heartbeat as the p2pgrid host, and otherwise
   py-libp2p's own gossipsub behaviour;
2. ``p2pgrid``: :class:`p2pgrid.net.PeerHost` (trio guest run in asyncio, signed
   envelopes, validators, hellos and peer exchange, paced publishing, the
   gossipsub tuning of :mod:`p2pgrid.net.gossip`);
3. optional: ``p2pgrid-untuned`` (p2pgrid with py-libp2p's gossipsub behaviour,
   as before :mod:`p2pgrid.net.gossip`), ``raw-tuned`` (plain py-libp2p with
   that tuning: what is left is the layer's own cost), ``p2pgrid-hello-once``
   (p2pgrid trying each hello exchange once, as before ``NetConfig.hello_tries``)
   and ``p2pgrid-no-first-hop`` (p2pgrid whose relays go to the whole mesh, as
   before ``NetConfig.first_hop_claims``).

Every router counts what it sends (RPCs, RPCs dropped by full outbound queues,
IDONTWANTs) and its mesh size, and a p2pgrid host the dials it started and the
connections it opened before the measured phase (``start_dials``,
``start_conns``: a connection counts at both ends, so a full mesh of N agents is
N x (N - 1), more is duplicates) and in it (``dials``, ``conns``: the start's
dialling still going on), its hello exchanges that failed (``hello_failures``),
its pubsub stream opens that failed in negotiation and were tried again
(``stream_retries``) and, after it, its connected peers (``connected/agent``,
against ``peers/agent`` whose hello it accepted); the notes column shows them,
summed over the agents.

Both fleets get the same bootstrap lists: agent ``i`` dials agent 0 and up to
``--fanout - 1`` random earlier agents (py-libp2p alone has no peer exchange that
spreads peers; p2pgrid also dials the peers it learns from hellos).

A fleet is measured once every agent has heard every other (warm-up messages at
``--rate``) and then ``--settle`` seconds more (default 0) in which it keeps
publishing its warm-up messages: p2pgrid's peer exchange may still be dialling
the peers it learned (each agent up to ``NetConfig.target_peers``) after everyone
was heard (the ``dials`` and ``conns`` notes show how much of it fell in the
measured phase); a settle time measures both modes in their steady state. Then every
agent publishes ``--rate`` messages/s for ``--duration`` seconds (with
``--devices K``: K messages at each tick, one per device of a gateway of K
devices, so ten processes carry 10 x K agents' traffic) and, ``--drain``
seconds later, reports the latency of each message it received (sender's wall
clock to receiver's, same machine) and the counts. Loss
is 1 - received / (sent x (agents - 1)). RSS is each agent's ``VmRSS`` read from
``/proc/PID/status`` after the measured phase.

On a machine shared with other work the load changes from one fleet to the next
and decides more than the layer does: ``--repeat N`` runs N rounds of every mode
in turn and prints each round's ratios (and their median); each row shows the
1-minute load average.

Usage: .venv/bin/python bench/net_latency.py [--agents 10 50] [--rate 1]
       [--devices 1] [--duration 20] [--drain 3] [--settle 0] [--fanout 4]
       [--modes raw p2pgrid] [--repeat 1]
       (modes: raw raw-tuned p2pgrid p2pgrid-untuned p2pgrid-hello-once
        p2pgrid-no-first-hop)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from p2pgrid.testing.probe_driver import (
    ProbeExited,
    ProbeFleet,
    ProbeProcess,
    ProbeSpec,
    Report,
    wait_all,
)

SEED = "p2pgrid-bench-net-latency"
#: Per agent: starting an interpreter that imports libp2p costs ~1 s of CPU
#: (p2pgrid's ~3 s), and ten agents may share one session's CPU share on a busy
#: machine (at load ~15-19, 60 s were not enough for ten p2pgrid agents).
START_S_PER_AGENT = 10.0
#: Per agent: dialling, hellos, mesh grafting, one warm-up message heard.
MESH_S_PER_AGENT = 1.5
#: Reports may come this long after duration + drain.
REPORT_SLACK_S = 15.0


@dataclass(frozen=True)
class Result:
    agents: int
    mode: str
    sent: int
    received: int
    expected: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    rss_mb_median: float
    rss_mb_max: float
    mesh_s: float
    #: Mean CPU of one agent over the measured phase (and drain), % of one core.
    cpu_pct: float
    #: The machine's 1-minute load average when the measured phase ended.
    load: float
    notes: str
    #: Which of ``--repeat`` rounds (modes run in turn within a round).
    round: int = 1

    @property
    def loss(self) -> float:
        return 1.0 - self.received / self.expected if self.expected else 0.0


def waves(agents: int) -> list[range]:
    """Start order: agent 0, then doubling waves (at most 16 at once)."""
    out, start, size = [range(1)], 1, 1
    while start < agents:
        out.append(range(start, min(agents, start + size)))
        start += size
        size = min(size * 2, 16)
    return out


def bootstrap_lists(agents: int, fanout: int, rng: random.Random) -> list[list[int]]:
    """Whom agent ``i`` dials: agent 0, plus random agents of earlier waves."""
    lists: list[list[int]] = [[] for _ in range(agents)]
    for wave in waves(agents)[1:]:
        earlier = list(range(1, wave.start))
        for i in wave:
            lists[i] = [0, *rng.sample(earlier, min(fanout - 1, len(earlier)))]
    return lists


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``nan`` if none)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values)) - 1))
    return sorted_values[rank]


async def measure_fleet(
    mode: str, agents: int, args: argparse.Namespace, log_dir: Path, plan: list[list[int]]
) -> Result | None:
    """Start a fleet, measure it, kill it; ``None`` (and why, on stderr) if it failed."""
    async with ProbeFleet(log_dir) as fleet:
        try:
            return await measure(fleet, mode, agents, args, plan)
        except (TimeoutError, ProbeExited) as exc:
            explain_failure(fleet, exc)
            return None


async def measure(
    fleet: ProbeFleet, mode: str, agents: int, args: argparse.Namespace, plan: list[list[int]]
) -> Result:
    raw = mode in ("raw", "raw-tuned")
    interval = 1.0 / args.rate
    async with asyncio.timeout(START_S_PER_AGENT * agents + 20):
        addrs: dict[int, str] = {}
        probes: list[ProbeProcess] = []
        for wave in waves(agents):  # each agent's bootstrap peers already listen
            specs = [
                ProbeSpec(
                    SEED,
                    i,
                    bootstrap=tuple(addrs[j] for j in plan[i]),
                    raw=raw,
                    interval_s=interval,
                    muxer=args.muxer,
                    untuned_gossip=mode == "p2pgrid-untuned",
                    tuned_gossip=mode == "raw-tuned",
                    hello_once=mode == "p2pgrid-hello-once",
                    no_first_hop=mode == "p2pgrid-no-first-hop",
                )
                for i in wave
            ]
            started = await fleet.start(specs)
            probes += started
            addrs.update((probe.spec.index, probe.addrs[0]) for probe in started)
    started_at = time.monotonic()
    everyone = set(range(agents))

    def heard_all(probe: ProbeProcess) -> bool:
        return set(probe.heard) >= everyone - {probe.spec.index}

    try:
        async with asyncio.timeout(MESH_S_PER_AGENT * agents + 20):
            await wait_all(probes, heard_all)
    except TimeoutError:
        deaf = sum(not heard_all(p) for p in probes)
        print(
            f"{mode} x{agents}: {deaf} agents did not hear everyone; measuring anyway",
            file=sys.stderr,
        )
    mesh_s = time.monotonic() - started_at
    await asyncio.sleep(args.settle)  # a workload phase: the formed fleet runs unmeasured
    cpu_before = [probe.cpu_seconds() for probe in probes]
    measure_started = time.monotonic()
    for probe in probes:
        await probe.send(
            "measure",
            rate=args.rate,
            duration=args.duration,
            drain=args.drain,
            devices=args.devices,
        )
    try:
        async with asyncio.timeout(args.duration + args.drain + REPORT_SLACK_S):
            await wait_all(probes, lambda probe: probe.report is not None)
    except TimeoutError:
        late = [p.spec.index for p in probes if p.report is None]
        print(f"{mode} x{agents}: no report from {late}: counted as lost", file=sys.stderr)
    elapsed = time.monotonic() - measure_started
    cpu = [p.cpu_seconds() - before for p, before in zip(probes, cpu_before, strict=True)]
    cpu_pct = 100 * statistics.mean(cpu) / elapsed
    load = os.getloadavg()[0]
    rss_mb = sorted(probe.rss_kb() / 1024 for probe in probes)
    reports = [probe.report for probe in probes if probe.report is not None]
    unreported = (agents - len(reports)) * int(args.rate * args.duration) * args.devices
    return summarise(mode, agents, reports, rss_mb, mesh_s, unreported, cpu_pct, load)


def explain_failure(fleet: ProbeFleet, exc: BaseException) -> None:
    """Which probes were not listening or reporting, and the end of their stderr."""
    print(f"  failed: {exc!r}", file=sys.stderr)
    for probe in fleet.spawned:
        if probe.listening is None or probe.report is None:
            print(
                f"  probe {probe.spec.index} pid {probe.pid} rc {probe.returncode} "
                f"listening {probe.listening is not None}; stderr ({probe.log_path}):\n"
                f"{probe.stderr_tail(5)}",
                file=sys.stderr,
            )


def summarise(
    mode: str,
    agents: int,
    reports: list[Report],
    rss_mb: list[float],
    mesh_s: float,
    unreported: int,
    cpu_pct: float,
    load: float,
) -> Result:
    """``unreported``: messages the agents that did not report were due to send."""
    latencies = sorted(x for report in reports for x in report.latencies_ms)
    sent = sum(report.sent for report in reports) + unreported
    counters: dict[str, int] = {}
    for report in reports:
        for key, value in report.counters.items():
            counters[key] = counters.get(key, 0) + value
    peers = counters.pop("peers", 0)
    mesh = counters.pop("mesh", 0)
    notes = [f"peers/agent {peers / len(reports):.1f}", f"mesh/agent {mesh / len(reports):.1f}"]
    if "connected" in counters:  # peers joined (a hello accepted) of those connected
        notes.append(f"connected/agent {counters.pop('connected') / len(reports):.1f}")
    if "rpcs" in counters and sent:
        notes.append(f"RPCs/message {counters['rpcs'] / sent:.1f}")
    notes += [f"{key} {value}" for key, value in sorted(counters.items())]  # summed over agents
    return Result(
        agents=agents,
        mode=mode,
        sent=sent,
        received=sum(report.received for report in reports),
        expected=sent * (agents - 1),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=latencies[-1] if latencies else float("nan"),
        rss_mb_median=statistics.median(rss_mb),
        rss_mb_max=rss_mb[-1],
        mesh_s=mesh_s,
        cpu_pct=cpu_pct,
        load=load,
        notes=", ".join(notes),
    )


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print()
    print(
        f"rate {args.rate} msg/s per device, {args.devices} device(s) per agent process, "
        f"{args.duration} s measured, settle {args.settle} s, drain {args.drain} s, "
        f"fanout {args.fanout}, muxer {args.muxer}"
    )
    print(
        "| agents | round | mode | sent | received/expected | loss | p50 ms | p99 ms | max ms "
        "| RSS MB/agent (median, max) | CPU %/agent | mesh s | load | notes |"
    )
    print(
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- |"
    )
    for r in results:
        print(
            f"| {r.agents} | {r.round} | {r.mode} | {r.sent} | {r.received}/{r.expected} "
            f"| {r.loss:.2%} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} "
            f"| {r.rss_mb_median:.0f}, {r.rss_mb_max:.0f} | {r.cpu_pct:.1f} | {r.mesh_s:.1f} "
            f"| {r.load:.1f} | {r.notes} |"
        )
    print()
    by_key = {(r.agents, r.round, r.mode): r for r in results}
    pairs = [(mode, "raw") for mode in args.modes if mode != "raw"]
    for base in ("raw-tuned", "p2pgrid-hello-once", "p2pgrid-no-first-hop"):
        pairs += [("p2pgrid", base)] if {"p2pgrid", base} <= set(args.modes) else []
    for agents in args.agents:
        for layer_mode, base_mode in pairs:
            p99_ratios = []
            for round_ in range(1, args.repeat + 1):
                layer = by_key.get((agents, round_, layer_mode))
                raw = by_key.get((agents, round_, base_mode))
                if layer is None or raw is None:
                    continue
                p99_ratios.append(layer.p99_ms / raw.p99_ms)
                print(
                    f"ratio {layer_mode}/{base_mode} at {agents} agents, round {round_}: "
                    f"p50 {layer.p50_ms / raw.p50_ms:.2f}, p99 {layer.p99_ms / raw.p99_ms:.2f}, "
                    f"RSS {layer.rss_mb_median / raw.rss_mb_median:.2f}, "
                    f"CPU {layer.cpu_pct / raw.cpu_pct:.2f}, "
                    f"loss {layer.loss:.2%} vs {raw.loss:.2%}"
                )
            if len(p99_ratios) > 1:
                print(
                    f"median p99 ratio {layer_mode}/{base_mode} at {agents} agents over "
                    f"{len(p99_ratios)} rounds: {statistics.median(p99_ratios):.2f}"
                )


async def run(args: argparse.Namespace) -> None:
    results = []
    tmp = args.log_dir or tempfile.mkdtemp(prefix="net-latency-")
    print(f"probe stderr logs in {tmp}", file=sys.stderr)
    for agents in args.agents:
        plan = bootstrap_lists(agents, args.fanout, random.Random(agents))
        for round_ in range(1, args.repeat + 1):  # modes in turn: each round shares a load
            for mode in args.modes:
                log_dir = Path(tmp) / f"{mode}-{agents}-{round_}"
                log_dir.mkdir(parents=True, exist_ok=True)
                print(f"measuring {mode} with {agents} agents (round {round_})...", file=sys.stderr)
                result = await measure_fleet(mode, agents, args, log_dir, plan)
                if result is not None:
                    result = dataclasses.replace(result, round=round_)
                    results.append(result)
                    print(f"  {result}", file=sys.stderr)
    print_table(results, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per device")
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="devices each agent process publishes for: at each tick one message per device, "
        "one after the other (the traffic of agents x devices agents on fewer processes)",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--drain", type=float, default=3.0, help="seconds to wait after")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds the formed fleet runs (warm-up messages) before the measured phase",
    )
    parser.add_argument("--fanout", type=int, default=4, help="bootstrap peers per agent")
    parser.add_argument("--log-dir", help="where probes' stderr goes (default: a new temp dir)")
    parser.add_argument("--muxer", choices=["mplex", "yamux"], default="mplex")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every mode in turn (on a shared machine the load changes between fleets)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=[
            "raw",
            "raw-tuned",
            "p2pgrid",
            "p2pgrid-untuned",
            "p2pgrid-hello-once",
            "p2pgrid-no-first-hop",
        ],
        default=["raw", "p2pgrid"],
        help="p2pgrid-untuned: p2pgrid with py-libp2p's gossipsub behaviour, as before "
        "p2pgrid.net.gossip (mesh up to 12, an IDONTWANT per message, a signed peer "
        "record in every RPC); raw-tuned: plain py-libp2p with p2pgrid.net.gossip's "
        "tuning (and so p2pgrid.net's imports in its memory); p2pgrid-hello-once: p2pgrid "
        "trying each hello exchange once, as before NetConfig.hello_tries; "
        "p2pgrid-no-first-hop: p2pgrid without first-hop records (relays to the whole mesh)",
    )
    args = parser.parse_args()
    if min(args.agents) < 2:
        parser.error("--agents needs at least 2 agents per run")
    if args.devices < 1:
        parser.error("--devices needs at least 1 device per agent")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
